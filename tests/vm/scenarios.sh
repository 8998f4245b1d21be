# The VM suite's scenarios, sourced by tests/vm/run.sh (which gives vm, vm_kill,
# vm_start, wait_for, fail and $guests). They run in this order on one set of guests:
# each builds on the one before (the swarm that `init_and_join` makes is the one the
# others use).
scenario_order=(daemons init_and_join)

# the shoal CLI in guest I
shoal_in() { local i=$1; shift; vm "$i" "/mnt/host/shoal $*" "${SHOAL_VM_CMD_TIMEOUT:-60}"; }

start_daemon() {
  vm "$1" 'SHOAL_LOG=info setsid /mnt/host/shoal daemon >> /mnt/out/$(hostname)/daemon.log 2>&1 < /dev/null &'
  wait_for "vm$1's daemon" 60 daemon_up "$1"
}

# the daemon answers (in a swarm or not)
daemon_up() { { shoal_in "$1" node ls 2>&1 || true; } | grep -qE 'not a swarm manager|Leader|ID'; }

scenario_daemons() {
  for i in $(seq 1 "$guests"); do
    vm "$i" 'uname -r; cat /proc/cmdline; ls /sys/fs/cgroup | head -3'
    start_daemon "$i"
    shoal_in "$i" image import /mnt/host/busybox-oci
  done
}

scenario_init_and_join() {
  shoal_in 1 swarm init --advertise-addr 10.77.0.1
  local mtoken wtoken
  mtoken=$(shoal_in 1 swarm join-token -q manager)
  wtoken=$(shoal_in 1 swarm join-token -q worker)
  shoal_in 2 swarm join --token "$mtoken" 10.77.0.1
  shoal_in 3 swarm join --token "$mtoken" 10.77.0.1
  shoal_in 4 swarm join --token "$wtoken" 10.77.0.1
  shoal_in 1 node ls
}
