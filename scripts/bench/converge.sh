#!/usr/bin/env bash
# Benchmark: shoal against Docker Swarm (Debian's docker.io, installed and started by this
# script only, as the system we compare against) on this machine, in one run, with the
# same busybox image imported into both:
#   - seconds from `service create --replicas N` to N/N, for N = 1, 10, 50
#   - seconds to remove the 50 (until their containers are gone)
#   - memory resident with 50 tasks (PSS): shoal daemon + keeper; dockerd + containerd + shims
# Usage: scripts/bench/converge.sh   (as root)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/deps.sh docker.io bc
cargo build --release --bin shoal
bin=$PWD/target/release/shoal
work=$(mktemp -d /tmp/shoal-converge-XXXXXX)
export SHOAL_DATA_ROOT=$work/shoal SHOAL_HOST=unix://$work/shoal.sock SHOAL_CGROUP_PARENT=/shoal-bench-$$
dockerd_pid=""
cleanup() {
  "$bin" service rm b1 b10 b50 >/dev/null 2>&1 || true
  [ -n "${shoal_pid:-}" ] && kill "$shoal_pid" 2>/dev/null || true
  pkill -f "keeper --root $work/shoal/containers" 2>/dev/null || true
  for c in /sys/fs/cgroup/*/shoal-bench-$$; do [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null; done
  { grep -o " $work[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  if [ -n "$dockerd_pid" ]; then
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
mem_mib() { # PIDS...: total proportional set size (PSS) in MiB: shared pages are split
  # between the processes that share them, so a binary mapped twice counts once
  local kb=0
  for p in "$@"; do kb=$((kb + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0))); done
  echo "scale=1; $kb / 1024" | bc
}

# ---- shoal
"$bin" daemon >"$work/shoal.log" 2>&1 &
shoal_pid=$!
for _ in $(seq 1 100); do "$bin" node ls 2>&1 | grep -qE 'not a swarm manager|Leader' && break; sleep 0.1; done
"$bin" swarm init --listen-addr 127.0.0.1:0 >/dev/null
"$bin" image import "$work/fixtures/busybox-oci" >/dev/null
declare -A shoal_t docker_t
for n in 1 10 50; do
  t0=$(now)
  "$bin" service create --name "b$n" --replicas "$n" --stop-signal KILL shoal-test/busybox sleep 3600 >/dev/null
  t1=$(now)
  shoal_t[$n]=$(secs "$t0" "$t1")
  [ "$n" = 50 ] || "$bin" service rm "b$n" >/dev/null
done
keeper=$(pgrep -f "keeper --root $work/shoal/containers" | head -1)
shoal_mem=$(mem_mib "$shoal_pid" "$keeper")
t0=$(now)
"$bin" service rm b50 >/dev/null
while [ "$("$bin" container ls --format json | grep -c '"ID"')" -gt 0 ]; do sleep 0.05; done
shoal_rm=$(secs "$t0" "$(now)")

# ---- Docker Swarm
mkdir -p "$work/docker"
dockerd --data-root "$work/docker/data" --exec-root "$work/docker/exec" -H "unix://$work/docker/docker.sock" --pidfile "$work/docker/docker.pid" >"$work/docker.log" 2>&1 &
dockerd_pid=$!
export DOCKER_HOST=unix://$work/docker/docker.sock
for _ in $(seq 1 300); do docker info >/dev/null 2>&1 && break; sleep 0.1; done
docker swarm init --advertise-addr 127.0.0.1 >/dev/null
docker load -i "$work/fixtures/busybox-docker.tar" >/dev/null
for n in 1 10 50; do
  t0=$(now)
  docker service create --name "b$n" --replicas "$n" shoal-test/busybox:saved sleep 3600 >/dev/null 2>&1
  t1=$(now)
  docker_t[$n]=$(secs "$t0" "$t1")
  [ "$n" = 50 ] || docker service rm "b$n" >/dev/null
done
docker_mem=$(mem_mib "$dockerd_pid" $(pgrep -x containerd) $(pgrep -f containerd-shim))
t0=$(now)
docker service rm b50 >/dev/null
while [ "$(docker ps -q | wc -l)" -gt 0 ]; do sleep 0.05; done
docker_rm=$(secs "$t0" "$(now)")

printf '%-34s %10s %14s %8s\n' "" shoal "Docker Swarm" ratio
for n in 1 10 50; do
  printf '%-34s %9ss %13ss %7sx\n' "create --replicas $n to $n/$n" "${shoal_t[$n]}" "${docker_t[$n]}" "$(echo "scale=1; ${docker_t[$n]} / ${shoal_t[$n]}" | bc)"
done
printf '%-34s %9ss %13ss %7sx\n' "remove the 50" "$shoal_rm" "$docker_rm" "$(echo "scale=1; $docker_rm / $shoal_rm" | bc)"
printf '%-34s %7sMiB %11sMiB %7sx\n' "resident with 50 tasks" "$shoal_mem" "$docker_mem" "$(echo "scale=1; $docker_mem / $shoal_mem" | bc)"
