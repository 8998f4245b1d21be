#!/usr/bin/env bash
# Benchmark: create+start+stop+delete of N containers (default 50) from one image, through
# shoal's runtime (the keeper running libcontainer) and through Debian's runc on the same
# bundle, in one run. Prints both medians and the ratio, and how many shoal processes run
# with N containers up (one keeper and the bench itself: no helper per container).
# Usage: scripts/bench/runtime.sh [N]   (as root)
set -euo pipefail
cd "$(dirname "$0")/../.."
n=${1:-50}
scripts/deps.sh runc bc
cargo build --release --bin shoal
bin=$PWD/target/release/shoal
work=$(mktemp -d /tmp/shoal-bench-XXXXXX)
export SHOAL_DATA_ROOT=$work/data SHOAL_CGROUP_PARENT=/shoal-bench-$$
cleanup() {
  for id in $(runc --root "$work/runc" list -q 2>/dev/null); do runc --root "$work/runc" delete -f "$id" >/dev/null 2>&1 || true; done
  "$bin" container rm -f keep >/dev/null 2>&1 || true
  pkill -f "keeper --root $work/data/containers" 2>/dev/null || true
  for _ in $(seq 1 100); do pgrep -f "keeper --root $work/data/containers" >/dev/null || break; sleep 0.05; done
  for c in /sys/fs/cgroup/*/shoal-bench-$$; do [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null; done
  { grep -o " $work[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  rm -rf "$work" || true
}
trap cleanup EXIT
scripts/fixtures.sh "$work/fixtures" >/dev/null
"$bin" image import "$work/fixtures/busybox-oci" >/dev/null
image=shoal-test/busybox

median() { sort -n | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }

"$bin" bench-runtime --count "$n" --image $image --resident "$n" --keep-bundle keep > "$work/shoal.jsonl"
shoal_med=$(grep '"ms"' "$work/shoal.jsonl" | sed 's/.*"ms":\([0-9.]*\).*/\1/' | median)
resident=$(grep shoal_processes "$work/shoal.jsonl")
bundle=$(grep '"bundle"' "$work/shoal.jsonl" | sed 's/.*"bundle":"\([^"]*\)".*/\1/')

# runc: the same prepared rootfs and config, a fresh cgroup per container
mkdir -p "$work/runc"
: > "$work/runc.ms"
for i in $(seq 0 $((n - 1))); do
  b=$work/runc-bundle-$i; mkdir -p "$b"
  sed "s#\"cgroupsPath\":\"[^\"]*\"#\"cgroupsPath\":\"/shoal-bench-$$/runc-$i\"#" "$bundle/config.json" > "$b/config.json"
  t0=$(date +%s%N)
  runc --root "$work/runc" create --bundle "$b" "runc-$i" </dev/null >/dev/null 2>&1
  runc --root "$work/runc" start "runc-$i"
  runc --root "$work/runc" kill "runc-$i" KILL
  while [ "$(runc --root "$work/runc" state "runc-$i" 2>/dev/null | grep -o '"status": "[a-z]*"' | cut -d'"' -f4)" = running ]; do :; done
  runc --root "$work/runc" delete "runc-$i"
  t1=$(date +%s%N)
  echo "scale=3; ($t1 - $t0) / 1000000" | bc >> "$work/runc.ms"
done
runc_med=$(median < "$work/runc.ms")
echo "containers: $n (create+start+stop+delete, busybox sleep, SIGKILL stop)"
echo "shoal runtime median: ${shoal_med} ms"
echo "runc median:          ${runc_med} ms"
echo "ratio runc/shoal:     $(echo "scale=2; $runc_med / $shoal_med" | bc)x"
echo "with $n containers up: $resident (the bench and one keeper)"
