# Sourced by the benchmarks that need several hosts on this machine: N hosts, each a
# network namespace with its own address (10.99.0.I/24) on a private bridge in a namespace
# of its own (nothing touches the machine's interfaces), each with its own shoal daemon
# (own data root, socket and cgroup parent). Everything is torn down on exit.
#   hosts_up N          make the namespaces, start a daemon on each, import the test image
#   sh_ I ARGS…         the shoal CLI of host I
#   start_daemon I      (re)start host I's daemon
#   until_ok CMD…       wait (60 s at most) until CMD succeeds
#   now; secs T0 T1; median X…
# Needs: $bin (the shoal binary), $work (a scratch directory), $tag (a short unique name).
scripts/fixtures.sh "$work/fixtures" >/dev/null

pids=()
nhosts=0
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for i in $(seq 1 "$nhosts"); do pkill -9 -f "keeper --root $work/h$i/containers" 2>/dev/null || true; done
  for c in /sys/fs/cgroup/*/"$tag"-h*; do
    [ -d "$c" ] || continue
    find "$c" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs -r kill -9 2>/dev/null || true
  done
  sleep 0.2
  for c in /sys/fs/cgroup/*/"$tag"-h*; do [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} + 2>/dev/null; done
  { grep -o " $work[^ ]*" /proc/self/mountinfo || true; } | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  for i in $(seq 1 "$nhosts"); do ip netns del "$tag-h$i" 2>/dev/null || true; done
  ip netns del "$tag-sw" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
secs() { echo "scale=2; ($2 - $1) / 1" | bc; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# until CMD succeeds (a deadline of 60 s); prints nothing
until_ok() {
  local deadline=$(( $(date +%s) + 60 ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "$0: timed out waiting for: $*" >&2; exit 1; }
    sleep 0.05
  done
}
sh_() { local i=$1; shift; SHOAL_DATA_ROOT=$work/h$i SHOAL_HOST=unix://$work/h$i.sock "$bin" "$@"; }

start_daemon() {
  local i=$1
  mkdir -p "$work/h$i"
  SHOAL_DATA_ROOT=$work/h$i SHOAL_HOST=unix://$work/h$i.sock SHOAL_CGROUP_PARENT=/$tag-h$i \
    nsenter --net=/run/netns/"$tag-h$i" unshare --uts sh -c "hostname node$i && exec $bin daemon" \
    >>"$work/h$i.log" 2>&1 &
  pids[$i]=$!
  disown "${pids[$i]}"
  local deadline=$(( $(date +%s) + 30 ))
  until { sh_ "$i" node ls 2>&1 || true; } | grep -qE 'not a swarm manager|Leader|ID'; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "daemon $i did not start" >&2; exit 1; }
    sleep 0.05
  done
}

hosts_up() {
  nhosts=$1
  ip netns add "$tag-sw"
  ip -n "$tag-sw" link add br0 type bridge
  ip -n "$tag-sw" link set br0 up
  for i in $(seq 1 "$nhosts"); do
    ip netns add "$tag-h$i"
    ip -n "$tag-sw" link add "p$i" type veth peer name eth0 netns "$tag-h$i"
    ip -n "$tag-sw" link set "p$i" master br0 up
    ip -n "$tag-h$i" addr add "10.99.0.$i/24" dev eth0
    ip -n "$tag-h$i" link set eth0 up
    ip -n "$tag-h$i" link set lo up
  done
  for i in $(seq 1 "$nhosts"); do start_daemon "$i"; sh_ "$i" image import "$work/fixtures/busybox-oci" >/dev/null; done
}
