#!/usr/bin/env bash
# Benchmark: shoal against Docker Swarm (Debian's docker.io, installed and started by this
# script only, as the system we compare against) on this machine, in one run, with the
# same busybox image imported into both:
#   - seconds from `service create --replicas N` to N/N, for N = 1, 10, 50
#   - seconds to remove the 50 (until their containers are gone)
#   - memory resident with 50 tasks (PSS): shoal daemon + keeper; dockerd + containerd + shims
# With SHOAL_BASELINE=PATH, shoal's part runs also with that binary (say, one built
# before the Raft database was sealed, 5c2002a), alternately, and the difference is
# printed: what sealing costs. SHOAL_ONLY=1 leaves Swarm out. RUNS (1) runs each.
# Usage: scripts/bench/converge.sh   (as root)
set -euo pipefail
cd "$(dirname "$0")/../.."
scripts/deps.sh docker.io bc
cargo build --release --bin shoal
bin=$PWD/target/release/shoal
work=$(mktemp -d /tmp/shoal-converge-XXXXXX)
export SHOAL_CGROUP_PARENT=/shoal-bench-$$
dockerd_pid=""
cleanup() {
  [ -n "${shoal_pid:-}" ] && kill "$shoal_pid" 2>/dev/null || true
  pkill -f "keeper --root $work/" 2>/dev/null || true
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
declare -A shoal_t docker_t
run_shoal() { # BIN TAG: create 1, 10, 50 and remove the 50 with shoal built as BIN
  local b=$1 tag=$2
  export SHOAL_DATA_ROOT=$work/$tag SHOAL_HOST=unix://$work/$tag.sock
  "$b" daemon >"$work/$tag.log" 2>&1 &
  shoal_pid=$!
  for _ in $(seq 1 100); do "$b" node ls 2>&1 | grep -qE 'not a swarm manager|Leader' && break; sleep 0.1; done
  "$b" swarm init --listen-addr 127.0.0.1:0 >/dev/null
  "$b" image import "$work/fixtures/busybox-oci" >/dev/null
  for n in 1 10 50; do
    t0=$(now)
    "$b" service create --name "b$n" --replicas "$n" --stop-signal KILL shoal-test/busybox sleep 3600 >/dev/null
    t1=$(now)
    shoal_t[$tag,$n]=$(secs "$t0" "$t1")
    [ "$n" = 50 ] || "$b" service rm "b$n" >/dev/null
  done
  keeper=$(pgrep -f "keeper --root $work/$tag/containers" | head -1)
  shoal_t[$tag,mem]=$(mem_mib "$shoal_pid" "$keeper")
  t0=$(now)
  "$b" service rm b50 >/dev/null
  while [ "$("$b" container ls --format json | grep -c '"ID"')" -gt 0 ]; do sleep 0.05; done
  shoal_t[$tag,rm]=$(secs "$t0" "$(now)")
  kill "$shoal_pid"; wait "$shoal_pid" 2>/dev/null || true
  pkill -f "keeper --root $work/$tag/containers" 2>/dev/null || true
  shoal_pid=""
  unset SHOAL_DATA_ROOT SHOAL_HOST
}
runs=${RUNS:-1}
for r in $(seq "$runs"); do
  run_shoal "$bin" "shoal$r"
  [ -n "${SHOAL_BASELINE:-}" ] && run_shoal "$SHOAL_BASELINE" "base$r"
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
pick() { # PREFIX KEY: the median over the runs
  local v=() r
  for r in $(seq "$runs"); do v+=("${shoal_t[$1$r,$2]}"); done
  median "${v[@]}"
}
if [ -n "${SHOAL_BASELINE:-}" ]; then
  printf '%-34s %10s %10s %8s\n' "(median of $runs)" sealed baseline cost
  for k in 1 10 50 rm mem; do
    s_=$(pick shoal "$k") b_=$(pick base "$k")
    printf '%-34s %10s %10s %7s%%\n' "$k" "$s_" "$b_" "$(echo "scale=1; 100 * ($s_ - $b_) / $b_" | bc)"
  done
fi
for k in 1 10 50 rm mem; do shoal_t[$k]=$(pick shoal "$k"); done
shoal_rm=${shoal_t[rm]} shoal_mem=${shoal_t[mem]}
if [ -n "${SHOAL_ONLY:-}" ]; then
  for n in 1 10 50; do printf '%-34s %9ss\n' "create --replicas $n to $n/$n" "${shoal_t[$n]}"; done
  printf '%-34s %9ss\n%-34s %7sMiB\n' "remove the 50" "$shoal_rm" "resident with 50 tasks" "$shoal_mem"
  exit 0
fi

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
