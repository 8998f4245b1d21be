#!/usr/bin/env bash
# Benchmark: how fast a shoal cluster reacts to failures, with its default settings.
# Three hosts on this machine (a network namespace each, on a private bridge in a
# namespace of its own; nothing touches the machine's interfaces), three managers,
# a 6-replica service. Measures, over RUNS runs (default 3):
#   - a host crashed (every process killed): seconds until it is Down, and until its
#     tasks run elsewhere
#   - the leader's daemon killed: seconds until another manager leads and a write commits
# Swarm's defaults are quoted for comparison (not measured here: a multi-host Swarm
# needs one dockerd per host): a node is Down after 3 missed heartbeats of 5 s
# (about 15 s), and a new Raft leader takes an election timeout of 10 ticks of 1 s
# (about 10 s).
# Usage: scripts/bench/failover.sh [RUNS]   (as root)
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${1:-3}
scripts/deps.sh bc
cargo build --release --bin shoal
bin=$PWD/target/release/shoal
work=$(mktemp -d /tmp/shoal-failover-XXXXXX)
tag=shf$$
. scripts/bench/hosts.sh
hosts_up 3
sh_ 1 swarm init --advertise-addr 10.99.0.1 >/dev/null
token=$(sh_ 1 swarm join-token -q manager)
sh_ 2 swarm join --token "$token" 10.99.0.1 >/dev/null
sh_ 3 swarm join --token "$token" 10.99.0.1 >/dev/null
sh_ 1 service create --name web --replicas 6 --stop-signal KILL shoal-test/busybox sleep 3600 >/dev/null

status_of() { # HOST NODE -> Ready/Down as HOST's manager sees NODE
  { sh_ "$1" node ls --format json || true; } | grep "\"Hostname\":\"$2\"" | grep -o '"Status":"[A-Za-z]*"' | cut -d'"' -f4 || true
}
leader_of() { { sh_ "$1" node ls --format json || true; } | grep '"ManagerStatus":"Leader"' | grep -o '"Hostname":"[a-z0-9]*"' | cut -d'"' -f4 || true; }
running_on() { # HOST NODE -> running tasks of web on NODE
  { sh_ "$1" service ps web --format json --filter desired-state=running || true; } | grep "\"Node\":\"$2\"" | grep -c '"CurrentState":"Running' || true
}
running_all() { { sh_ "$1" service ps web --format json --filter desired-state=running || true; } | grep -c '"CurrentState":"Running' || true; }
is_down() { [ "$(status_of "$1" "$2")" = Down ]; }
is_ready() { [ "$(status_of "$1" "$2")" = Ready ]; }
moved() { [ "$(running_on "$1" "$2")" = 0 ] && [ "$(running_all "$1")" = 6 ]; }

crash() { # every process of host $1 dies at once: its daemon, keeper and containers
  kill -9 "${pids[$1]}"
  pkill -9 -f "keeper --root $work/h$1/containers" || true
  for c in /sys/fs/cgroup/*/"$tag-h$1"; do
    [ -d "$c" ] && { find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true; }
  done
}

down=() moved_t=() elect=() write=()
for r in $(seq 1 "$runs"); do
  # a host that is not the leader's crashes
  leader=$(leader_of 1)
  l=${leader#node}
  victim=3; [ "$l" = 3 ] && victim=2
  until_ok is_ready "$l" "node$victim"
  t0=$(now)
  crash "$victim"
  until_ok is_down "$l" "node$victim"; t1=$(now)
  until_ok moved "$l" "node$victim"; t2=$(now)
  down+=("$(secs "$t0" "$t1")"); moved_t+=("$(secs "$t0" "$t2")")
  start_daemon "$victim"
  until_ok is_ready "$l" "node$victim"

  # the leader's daemon killed
  other=1; [ "$l" = 1 ] && other=2
  t0=$(now)
  kill -9 "${pids[$l]}"
  until_ok sh -c "SHOAL_DATA_ROOT=$work/h$other SHOAL_HOST=unix://$work/h$other.sock $bin node ls --format json | grep -q '\"ManagerStatus\":\"Leader\"'"
  t1=$(now)
  until_ok sh_ "$other" service scale -d "web=$((6 + r))"
  t2=$(now)
  sh_ "$other" service scale -d web=6 >/dev/null
  elect+=("$(secs "$t0" "$t1")"); write+=("$(secs "$t0" "$t2")")
  start_daemon "$l"
  until_ok is_ready "$other" "node$l"
done

printf '%-52s %8s %14s\n' "median of $runs runs, default settings" shoal "Swarm defaults"
printf '%-52s %7ss %13ss\n' "a host crashed until it is Down" "$(median "${down[@]}")" "~15"
printf '%-52s %7ss %14s\n' "... until its tasks run on other nodes" "$(median "${moved_t[@]}")" "-"
printf '%-52s %7ss %13ss\n' "leader killed until another manager leads" "$(median "${elect[@]}")" "~10"
printf '%-52s %7ss %14s\n' "... until a write commits" "$(median "${write[@]}")" "-"
