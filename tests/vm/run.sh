#!/usr/bin/env bash
# The VM suite: the cluster scenarios on QEMU guests with kernels of their own (Debian's,
# under TCG: this machine's KVM cannot run a stock kernel). Boots GUESTS guests on a
# private L2 network (QEMU's socket multicast, inside a network namespace this script
# makes: never on the machine's interfaces), shares the given shoal binary with them
# read-only over 9p, runs each scenario of tests/vm/scenarios.sh in order with a timeout
# of its own, collects every guest's serial console and daemon log under LOGS, and always
# tears everything down (QEMUs by PID, the namespace).
# Usage: tests/vm/run.sh SHOAL_BINARY [SCENARIO…]   (as root; default: every scenario)
# Environment: SHOAL_VM_GUESTS (4), SHOAL_VM_MEM (MiB, 512), SHOAL_VM_TIMEOUT (s per
# scenario, 300), SHOAL_VM_DIR (target/vm).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
bin=$(realpath "${1:?usage: run.sh SHOAL_BINARY [SCENARIO…]}")
shift
[ "$(id -u)" = 0 ] || { echo "vm: run as root (network namespaces)" >&2; exit 1; }
guests=${SHOAL_VM_GUESTS:-4}
mem=${SHOAL_VM_MEM:-512}
limit=${SHOAL_VM_TIMEOUT:-300}
dir=${SHOAL_VM_DIR:-$top/target/vm}
mkdir -p "$dir"
read -r vmlinux initrd < <("$here/build.sh" "$dir/image" "$bin" | tail -1)

run=$dir/run
logs=$dir/logs
ns=shvm$$
qpids=()
cleanup() {
  # (a guest a scenario powered off is gone already: its PID may be another process's)
  for p in "${qpids[@]}"; do
    grep -q qemu-system "/proc/$p/cmdline" 2>/dev/null && kill -9 "$p" 2>/dev/null || true
  done
  for p in "${qpids[@]}"; do while grep -q qemu-system "/proc/$p/cmdline" 2>/dev/null; do sleep 0.05; done; done
  ip netns del "$ns" 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM
rm -rf "$run" "$logs"
mkdir -p "$run/share" "$run/out" "$logs"
# the share: the binary (a hard link where it can be), the test image, the guest helpers
ln "$bin" "$run/share/shoal" 2>/dev/null || cp "$bin" "$run/share/shoal"
"$top/scripts/fixtures.sh" "$run/fixtures" >/dev/null
cp -r "$run/fixtures/busybox-oci" "$run/share/busybox-oci"

ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" route add 224.0.0.0/4 dev lo
mcast=230.0.0.1:$((20000 + $$ % 20000))

# The guests differ as real hosts do (what a namespace of one kernel cannot show):
# every guest has cgroup v2 only (SHOAL_VM_CGROUP=hybrid for v1 beside it) and an
# underlay MTU of SHOAL_VM_MTU (1400, as under a tunnel); vm2 filters on the reverse
# path strictly (a hardened host); vm3's clock is 3 minutes behind the others' and its
# kernel loads shoal's modules on demand (none loaded at boot); the last guest runs from
# its initramfs, as a host booted from RAM does (the others from a tmpfs root, as from
# a disk).
root_of() { if [ "$1" = "$guests" ]; then echo ramfs; else echo tmpfs; fi; }
quirks_of() {
  case $1 in
    2) echo "vm.sysctl=strict" ;;
    3) echo "vm.modules=auto" ;;
  esac
}
clock_of() {
  if [ "$1" = 3 ]; then date -u -d '-3 min' +%Y-%m-%dT%H:%M:%S; else echo utc; fi
}

# vm_start I: boots guest I (10.77.0.I/24, named vmI)
vm_start() {
  local i=$1
  local mac
  mac=$(printf '52:54:00:12:34:%02x' "$i")
  ip netns exec "$ns" qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m "$mem" -M pc \
    -nodefaults -no-user-config -display none -no-reboot \
    -bios /usr/share/qemu/qboot.rom -kernel "$vmlinux" -initrd "$initrd" \
    -append "console=ttyS0 panic=-1 quiet loglevel=3 vm.name=vm$i vm.ip=10.77.0.$i/24 vm.cgroup=${SHOAL_VM_CGROUP:-v2} vm.root=$(root_of "$i") vm.mtu=${SHOAL_VM_MTU:-1400} $(quirks_of "$i")" \
    -rtc "base=$(clock_of "$i")" \
    -netdev "socket,id=n0,mcast=$mcast,localaddr=127.0.0.1" -device "virtio-net-pci,netdev=n0,mac=$mac" \
    -virtfs "local,path=$run/share,mount_tag=host,security_model=none,id=fs0,readonly=on" \
    -virtfs "local,path=$run/out,mount_tag=out,security_model=none,id=fs1" \
    -device virtio-serial-pci -chardev "socket,id=c0,path=$run/ctl$i.sock,server=on,wait=off" \
    -device virtserialport,chardev=c0,name=ctl \
    -serial "file:$logs/vm$i.console.log" >"$logs/vm$i.qemu.log" 2>&1 &
  qpids[$i]=$!
  disown "${qpids[$i]}"
}

# vm_kill I: powers guest I off at once (QEMU killed)
vm_kill() { kill -9 "${qpids[$1]}"; while kill -0 "${qpids[$1]}" 2>/dev/null; do sleep 0.05; done; }

# vm I SCRIPT [TIMEOUT]: runs SCRIPT in guest I, prints its output, returns its code
vm() { python3 "$here/ctl.py" "$run/ctl$1.sock" "${3:-60}" "$2"; }

# wait_for WHAT SECONDS CMD…: until CMD succeeds
wait_for() {
  local what=$1 secs=$2
  shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "vm: timed out after ${secs}s waiting for $what" >&2; return 1; }
    sleep 0.2
  done
}

fail() { echo "vm: $*" >&2; return 1; }

t0=$(date +%s.%N)
for i in $(seq 1 "$guests"); do vm_start "$i"; done
for i in $(seq 1 "$guests"); do
  wait_for "guest $i to boot" 180 vm "$i" true 5 || { tail -20 "$logs/vm$i.console.log" >&2; exit 1; }
done
echo "vm: $guests guests up in $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5) s"

. "$here/scenarios.sh"
all=$(declare -F | awk '{print $3}' | grep '^scenario_' | sed 's/^scenario_//')
wanted=${*:-$(printf '%s\n' "${scenario_order[@]}")}
status=0
for s in $wanted; do
  declare -F "scenario_$s" >/dev/null || { echo "vm: no scenario $s (there are: $all)" >&2; exit 2; }
  start=$(date +%s.%N)
  ( "scenario_$s" ) > "$logs/$s.log" 2>&1 &
  sp=$!
  deadline=$(( $(date +%s) + limit ))
  while kill -0 "$sp" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "vm: scenario $s timed out after ${limit}s" >> "$logs/$s.log"
      pkill -TERM -P "$sp" 2>/dev/null || true
      kill -TERM "$sp" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  rc=0
  wait "$sp" || rc=$?
  took=$(echo "$(date +%s.%N) - $start" | bc | cut -c1-5)
  if [ "$rc" = 0 ]; then
    echo "vm: PASS $s (${took} s)"
  else
    echo "vm: FAIL $s (${took} s): its log follows; the guests' logs are in $logs" >&2
    cat "$logs/$s.log" >&2
    for i in $(seq 1 "$guests"); do
      echo "--- vm$i daemon.log (last 30 lines)" >&2
      tail -30 "$run/out/vm$i/daemon.log" >&2 2>/dev/null || true
      # what each guest was doing (a stalled CPU, a stuck connection), kept beside its log
      vm "$i" 'cat /proc/loadavg; cat /proc/pressure/cpu 2>/dev/null; top -b -n1 | head -15; ss -tnoi; ip -s link show eth0' 20 \
        > "$logs/vm$i.state.log" 2>&1 || true
    done
    status=1
    break
  fi
done
for i in $(seq 1 "$guests"); do cp "$run/out/vm$i/daemon.log" "$logs/vm$i.daemon.log" 2>/dev/null || true; done
# a later run overwrites $logs: keep a failure's
if [ "$status" != 0 ]; then
  kept="$logs-failed-$(date +%Y%m%d-%H%M%S)"
  cp -r "$logs" "$kept" 2>/dev/null && echo "vm: this failure's logs are kept in $kept" >&2
fi
if [ -n "${SHOAL_VM_HOLD:-}" ]; then
  # for a look inside: tests/vm/ctl.py $run/ctlI.sock 30 'command'
  echo "vm: holding the guests until $run/hold is removed"
  touch "$run/hold"
  while [ -f "$run/hold" ]; do sleep 1; done
fi
echo "vm: total $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5) s"
exit $status
