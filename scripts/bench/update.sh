#!/usr/bin/env bash
# Benchmark: rolling updates, shoal against Docker Swarm (Debian's docker.io, installed
# and started by this script only, as the system we compare against) on this machine,
# in one run, with the same busybox image imported into both:
#   - seconds to update 50 replicas (--env-add) with --update-parallelism 10, stop-first
#     and start-first, until the update is completed (the CLI returns; --update-monitor
#     0s on both, so that the figure is the rollout's own);
#   - a web service of 4 replicas with a health check, published on port 8080 of the
#     routing mesh, updated start-first while a client loop (curl, 2 s timeout) asks it
#     through the mesh: requests made and requests failed during the update (n/a when
#     the mesh never answered: Swarm's needs IPVS).
# Usage: scripts/bench/update.sh   (as root)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/deps.sh docker.io bc curl
cargo build --release --bin shoal
bin=$PWD/target/release/shoal
work=$(mktemp -d /tmp/shoal-update-XXXXXX)
export SHOAL_DATA_ROOT=$work/shoal SHOAL_HOST=unix://$work/shoal.sock SHOAL_CGROUP_PARENT=/shoal-bench-$$
dockerd_pid=""
client_pid=""
cleanup() {
  [ -n "$client_pid" ] && kill "$client_pid" 2>/dev/null || true
  "$bin" service rm b50 web >/dev/null 2>&1 || true
  [ -n "${shoal_pid:-}" ] && kill "$shoal_pid" 2>/dev/null || true
  pkill -f "keeper --root $work/shoal/containers" 2>/dev/null || true
  for c in /sys/fs/cgroup/*/shoal-bench-$$; do [ -d "$c" ] && { find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true; }; done
  { grep -o " $work[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^shoal-bench-$$" || true); do ip netns del "$n" || true; done
  if [ -n "$dockerd_pid" ]; then
    docker service rm b50 web >/dev/null 2>&1 || true
    docker swarm leave --force >/dev/null 2>&1 || true
    kill "$dockerd_pid" 2>/dev/null || true
    wait "$dockerd_pid" 2>/dev/null || true
  fi
  rm -rf "$work" || true
}
trap cleanup EXIT
scripts/fixtures.sh "$work/fixtures" >/dev/null

now() { date +%s.%N; }
secs() { echo "scale=2; ($2 - $1) / 1" | bc; }
# the host's own address (the routing mesh answers on it)
addr=$(ip -4 -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* src \([0-9.]*\).*/\1/p')
[ -n "$addr" ] || addr=$(hostname -I | awk '{print $1}')
httpd='mkdir -p /tmp/www && echo web > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www'
health=(--health-cmd "wget -q -O /dev/null http://127.0.0.1/" --health-interval 500ms)

# client URL OUT: asks URL until killed; one line per request, its HTTP code (000: none)
client() {
  while :; do curl -s -m 2 -o /dev/null -w '%{http_code}\n' "$1" >>"$2" || true; done
}
# OUT: "made failed" of the client's lines
tally() { echo "$(wc -l <"$1") $(grep -vc '^200$' "$1" || true)"; }

# run CLI…: the rollouts of 50 replicas, stop-first then start-first, and the web
# service's start-first update under the client loop; sets the globals below
run() {
  local cli=$1 image=$2 t0
  "$cli" service create --name b50 --replicas 50 --stop-signal KILL "$image" sleep 3600 >/dev/null 2>&1
  for order in stop-first start-first; do
    t0=$(now)
    "$cli" service update --update-parallelism 10 --update-order "$order" --update-monitor 0s \
      --env-add "ORDER=$order" b50 >/dev/null 2>&1
    took[$order]=$(secs "$t0" "$(now)")
  done
  "$cli" service rm b50 >/dev/null
  "$cli" service create --name web --replicas 4 -p 8080:80 "${health[@]}" \
    --update-order start-first "$image" sh -c "$httpd" >/dev/null 2>&1
  answered=no
  for _ in $(seq 1 300); do
    [ "$(curl -s -m 1 "http://$addr:8080/" || true)" = web ] && { answered=yes; break; }
    sleep 0.1
  done
  : >"$work/client.out"
  client "http://$addr:8080/" "$work/client.out" &
  client_pid=$!
  "$cli" service update --env-add V=2 web >/dev/null 2>&1
  kill "$client_pid"; wait "$client_pid" 2>/dev/null || true; client_pid=""
  web=$(tally "$work/client.out")
  [ "$answered" = yes ] || web="n/a n/a" # its routing mesh never answered
  "$cli" service rm web >/dev/null
}

# ---- shoal
"$bin" daemon >"$work/shoal.log" 2>&1 &
shoal_pid=$!
for _ in $(seq 1 100); do "$bin" node ls 2>&1 | grep -qE 'not a swarm manager|Leader' && break; sleep 0.1; done
"$bin" swarm init --listen-addr 127.0.0.1:0 >/dev/null
"$bin" image import "$work/fixtures/busybox-oci" >/dev/null
declare -A took
run "$bin" shoal-test/busybox
shoal_stop=${took[stop-first]} shoal_start=${took[start-first]} shoal_web=$web
# (its containers gone before the daemon goes)
while [ "$("$bin" container ls --format json | grep -c '"ID"' || true)" -gt 0 ]; do sleep 0.05; done
kill "$shoal_pid"; wait "$shoal_pid" 2>/dev/null || true; shoal_pid=""

# ---- Docker Swarm
mkdir -p "$work/docker"
dockerd --data-root "$work/docker/data" --exec-root "$work/docker/exec" -H "unix://$work/docker/docker.sock" --pidfile "$work/docker/docker.pid" >"$work/docker.log" 2>&1 &
dockerd_pid=$!
export DOCKER_HOST=unix://$work/docker/docker.sock
for _ in $(seq 1 300); do docker info >/dev/null 2>&1 && break; sleep 0.1; done
docker swarm init --advertise-addr 127.0.0.1 >/dev/null
docker load -i "$work/fixtures/busybox-docker.tar" >/dev/null
run docker shoal-test/busybox:saved
docker_stop=${took[stop-first]} docker_start=${took[start-first]} docker_web=$web

ratio() { echo "scale=1; $2 / $1" | bc; }
printf '%-46s %10s %14s %8s\n' "" shoal "Docker Swarm" ratio
printf '%-46s %9ss %13ss %7sx\n' "update 50 replicas, parallelism 10, stop-first" "$shoal_stop" "$docker_stop" "$(ratio "$shoal_stop" "$docker_stop")"
printf '%-46s %9ss %13ss %7sx\n' "update 50 replicas, parallelism 10, start-first" "$shoal_start" "$docker_start" "$(ratio "$shoal_start" "$docker_start")"
read -r sm sf <<<"$shoal_web"
read -r dm df <<<"$docker_web"
printf '%-46s %10s %14s\n' "web, start-first under load: failed/requests" "$sf/$sm" "$df/$dm"
[ "$dm" != n/a ] || echo "(Docker Swarm's routing mesh did not answer on $addr:8080: it needs IPVS, which this kernel may lack)"
