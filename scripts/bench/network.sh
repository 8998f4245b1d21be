#!/usr/bin/env bash
# Benchmark: shoal's overlay data plane, on three hosts of this machine (network
# namespaces on a private bridge, scripts/bench/hosts.sh), with real daemons and tasks.
#   - TCP throughput (iperf3, from Debian) between two tasks on different hosts over the
#     overlay, and between the same two hosts over their underlay; the ratio (target 0.8)
#   - DNS: latency of a service name's answer from inside a task (p50 and p99 of COUNT
#     queries to its resolver; target p99 under 2 ms)
#   - seconds from a task becoming RUNNING to answering through its service's VIP
# iperf3 and the probes (scripts/bench/netprobe.py) run in the tasks' own network
# namespaces (nsenter), the path their containers use.
# Usage: scripts/bench/network.sh [RUNS]   (as root; RUNS of each measure, default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
count=${COUNT:-2000}
scripts/deps.sh bc iperf3
cargo build --release --bin shoal
bin=$PWD/target/release/shoal
work=$(mktemp -d /tmp/shoal-network-XXXXXX)
tag=shn$$
. scripts/bench/hosts.sh
hosts_up 3
probe=$PWD/scripts/bench/netprobe.py

sh_ 1 swarm init --advertise-addr 10.99.0.1 >/dev/null
token=$(sh_ 1 swarm join-token -q worker)
sh_ 2 swarm join --token "$token" 10.99.0.1 >/dev/null
sh_ 3 swarm join --token "$token" 10.99.0.1 >/dev/null
sh_ 1 network create benchnet >/dev/null
sh_ 1 service create --name client --network benchnet --constraint node.hostname==node1 \
  --stop-signal KILL shoal-test/busybox sleep 3600 >/dev/null
sh_ 1 service create --name web --network benchnet --constraint node.hostname!=node1 \
  --replicas-max-per-node 1 --stop-signal KILL shoal-test/busybox \
  sh -c 'mkdir -p /tmp/www && hostname > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www' >/dev/null

task_ns() { # HOST -> the network namespace of the one task there
  local d=$work/h$1/netns/tasks
  [ "$(ls "$d" 2>/dev/null | wc -l)" = 1 ] || { echo "network.sh: host $1 should have one task" >&2; exit 1; }
  echo "$d/$(ls "$d")"
}
cli_ns=$(task_ns 1)
srv_host=2; [ -n "$(ls "$work/h2/netns/tasks" 2>/dev/null)" ] || srv_host=3
srv_ns=$(task_ns "$srv_host")
srv_ip=$(nsenter --net="$srv_ns" ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1)

listening() { "$@" ss -ltnH 'sport = :5201' | grep -q 5201; }
iperf() { # SERVER-NSENTER CLIENT-NSENTER ADDR -> Gbit/s received
  local srv=$1 cli=$2 addr=$3
  $srv iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
  until_ok listening $srv
  $cli iperf3 -c "$addr" -p 5201 -t "${SECONDS_EACH:-5}" -J |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"] / 1e9))'
  wait
}
under=() over=()
for _ in $(seq 1 "$runs"); do
  under+=("$(iperf "ip netns exec $tag-h$srv_host" "ip netns exec $tag-h1" "10.99.0.$srv_host")")
  over+=("$(iperf "nsenter --net=$srv_ns" "nsenter --net=$cli_ns" "$srv_ip")")
done

dns=$(nsenter --net="$cli_ns" python3 "$probe" dns web "$count")

vip=()
for _ in $(seq 1 "$runs"); do
  sh_ 1 service scale -d web=1 >/dev/null
  until_ok sh -c "[ \$(SHOAL_DATA_ROOT=$work/h1 SHOAL_HOST=unix://$work/h1.sock $bin service ps web --format json --filter desired-state=running | grep -c '\"CurrentState\":\"Running') = 1 ]"
  out=$(nsenter --net="$cli_ns" env SHOAL_DATA_ROOT="$work/h1" SHOAL_HOST="unix://$work/h1.sock" \
    python3 "$probe" vip web "$bin" service scale -d web=2 -- "$bin" service ps web --format json)
  vip+=("$(echo "$out" | python3 -c 'import json,sys; print("%.3f" % json.load(sys.stdin)["running_to_vip_s"])')")
done

u=$(median "${under[@]}") o=$(median "${over[@]}")
printf '%-60s %s\n' "median of $runs runs" ""
printf '%-60s %s Gbit/s (runs: %s)\n' "TCP, task to task over the overlay (VXLAN)" "$o" "${over[*]}"
printf '%-60s %s Gbit/s (runs: %s)\n' "TCP, host to host over the underlay" "$u" "${under[*]}"
printf '%-60s %.2f (target 0.8)\n' "overlay / underlay" "$(echo "scale=3; $o / $u" | bc)"
echo "$dns" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%-60s p50 %.3f ms, p99 %.3f ms, max %.3f ms (target p99 < 2 ms)" % ("DNS: a service name from inside a task, '"$count"' queries", d["p50_ms"], d["p99_ms"], d["max_ms"]))'
printf '%-60s %s s (runs: %s)\n' "a new task RUNNING until it answers through the VIP" "$(median "${vip[@]}")" "${vip[*]}"
