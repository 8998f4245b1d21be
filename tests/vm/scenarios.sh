# The VM suite's scenarios, sourced by tests/vm/run.sh (which gives vm, vm_kill,
# vm_start, wait_for, fail and $guests). They run in this order on one set of guests:
# each builds on the one before (the swarm that `init_and_join` makes is the one the
# others use).
scenario_order=(daemons init_and_join spread overlay published poweroff manager_killed)

# the shoal CLI in guest I
shoal_in() { local i=$1; shift; vm "$i" "/mnt/host/shoal $*" "${SHOAL_VM_CMD_TIMEOUT:-60}"; }

start_daemon() {
  vm "$1" 'SHOAL_LOG=info setsid /mnt/host/shoal daemon >> /mnt/out/$(hostname)/daemon.log 2>&1 < /dev/null &'
  wait_for "vm$1's daemon" 60 daemon_up "$1"
}

# the daemon answers (in a swarm or not)
daemon_up() { { SHOAL_VM_CMD_TIMEOUT=10 shoal_in "$1" node ls 2>&1 || true; } | grep -qE 'not a swarm manager|Leader|ID'; }

scenario_daemons() {
  local kernel cg
  for i in $(seq 1 "$guests"); do
    # each guest is a host of its own: its own kernel, and cgroup v2 only (unless the
    # run asked for hybrid)
    kernel=$(vm "$i" 'uname -r')
    echo "vm$i: kernel $kernel, $(vm "$i" 'cat /proc/cmdline')"
    [ "$kernel" != "$(uname -r)" ] && [ "${kernel#6.1.}" != "$kernel" ] ||
      fail "vm$i runs kernel $kernel, not the guest's 6.1 (this machine's is $(uname -r))"
    cg=$(vm "$i" 'grep -o " cgroup2* " /proc/mounts | sort -u | tr -d " " | tr "\n" " "')
    if [ "${SHOAL_VM_CGROUP:-v2}" = v2 ]; then
      [ "$cg" = "cgroup2 " ] || fail "vm$i should have cgroup v2 only, it mounts: $cg"
    fi
    start_daemon "$i"
    shoal_in "$i" image import /mnt/host/busybox-oci
  done
  # cgroupfs is read-only in a container on cgroup v2 too: a task cannot raise its limit
  local out
  out=$(shoal_in 1 container run --name raise --memory 64m shoal-test/busybox sh -c \
    "'echo 9999999999 2>/dev/null > /sys/fs/cgroup/memory.max && echo raised || echo refused; cat /sys/fs/cgroup/memory.max'")
  echo "a container on vm1 writing its memory.max: $(echo "$out" | tr '\n' ' ')"
  [ "$(echo "$out" | tr '\n' ' ')" = "refused 67108864 " ] || fail "a container changed its own limit: $out"
  shoal_in 1 container rm raise
}

scenario_init_and_join() {
  shoal_in 1 swarm init --advertise-addr 10.77.0.1
  # emulated guests on a loaded machine can stand still for seconds: with the default
  # 1 s period (Down after 2.5 s of silence) a live worker was taken for dead and its
  # tasks moved; a 2 s period gives 5 s
  shoal_in 1 swarm update --dispatcher-heartbeat 2s
  local mtoken wtoken
  mtoken=$(shoal_in 1 swarm join-token -q manager)
  wtoken=$(shoal_in 1 swarm join-token -q worker)
  shoal_in 2 swarm join --token "$mtoken" 10.77.0.1
  shoal_in 3 swarm join --token "$mtoken" 10.77.0.1
  shoal_in 4 swarm join --token "$wtoken" 10.77.0.1
  shoal_in 1 node ls
  # the swarm was made with vm3's clock 3 minutes behind (node certificates are
  # back-dated 5 minutes)
  local t1 t3
  t1=$(vm 1 'date +%s')
  t3=$(vm 3 'date +%s')
  echo "vm3's clock is $((t1 - t3)) s behind vm1's"
  [ $((t1 - t3)) -ge 150 ] && [ $((t1 - t3)) -le 210 ] || fail "vm3's clock is $((t1 - t3)) s behind, not about 180"
}

# SERVICE's running tasks per node, as guest I's managers see them: "vm1 2" lines
running_per_node() {
  shoal_in "$1" service ps "$2" --format json --filter desired-state=running |
    grep '"CurrentState":"Running' | grep -o '"Node":"[^"]*"' | cut -d'"' -f4 | sort | uniq -c |
    awk '{print $2, $1}'
}

# the network namespace of SERVICE's task on guest I (the first one there)
task_ns() {
  vm "$1" 'for d in /var/lib/shoal/netns/tasks/*; do [ -e "$d" ] && echo "$d"; done | head -1'
}

scenario_spread() {
  shoal_in 1 service create --name spread --replicas 8 --stop-signal KILL shoal-test/busybox sleep 3600
  local per
  per=$(running_per_node 1 spread)
  echo "$per"
  [ "$(echo "$per" | wc -l)" = 4 ] || fail "8 replicas are not on all 4 guests: $per"
  echo "$per" | awk '$2 != 2 {exit 1}' || fail "8 replicas are not 2 per guest: $per"
}

# in guest I, from the network namespace NS: the addresses NAME resolves to
resolve_in() { vm "$1" "nsenter --net=$2 nslookup $3 127.0.0.11" | awk '/^Address: / && NR > 2 {print $2}' | grep -v ':53$' || true; }

# an overlay across the guests: DNS and the VIP from a task on vm1 reach every task
scenario_overlay() {
  shoal_in 1 network create appnet
  shoal_in 1 service create --name web --network appnet --replicas 4 --replicas-max-per-node 1 \
    --stop-signal KILL shoal-test/busybox sh -c "'mkdir -p /tmp/www && hostname > /tmp/www/index.html && dd if=/dev/zero of=/tmp/www/big bs=1024 count=1024 && exec httpd -f -p 80 -h /tmp/www'"
  ns=$(task_ns 1)
  [ -n "$ns" ] || fail "no task namespace on vm1"
  four() { [ "$(resolve_in 1 "$ns" tasks.web | wc -l)" = 4 ]; }
  wait_for "tasks.web to answer 4 addresses on vm1" 30 four
  resolve_in 1 "$ns" tasks.web
  local vip hosts
  vip=$(resolve_in 1 "$ns" web | head -1)
  [ -n "$vip" ] || fail "web has no VIP"
  hosts=$(vm 1 "for i in \$(seq 40); do nsenter --net=$ns wget -q -O - http://$vip/; done" 120 | sort -u)
  echo "the VIP $vip reached: $hosts"
  [ "$(echo "$hosts" | wc -l)" = 4 ] || fail "40 requests to the VIP did not reach the 4 tasks: $hosts"
  # the overlay's MTU leaves room for VXLAN's 50 bytes on this underlay, and a large
  # transfer crosses it whole
  local under mtu size
  under=$(vm 1 'cat /sys/class/net/eth0/mtu')
  # (not /sys: it shows the namespace that mounted it)
  mtu=$(vm 1 "nsenter --net=$ns ip -o link show eth0" | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
  [ "$mtu" = $((under - 50)) ] || fail "the task's MTU is $mtu on an underlay of $under"
  size=$(vm 1 "nsenter --net=$ns wget -q -O - http://$vip/big | wc -c" 120)
  [ "$size" = 1048576 ] || fail "1 MiB through the VIP came as $size bytes"
  echo "MTU $mtu on an underlay of $under; 1 MiB through the VIP"
  # vm3 loaded none of shoal's modules at boot: the kernel loaded them when asked
  local mods
  mods=$(vm 3 "for m in overlay vxlan veth bridge nf_tables nft_nat; do grep -q \"^\$m \" /proc/modules && echo \$m; done" | tr '\n' ' ')
  [ "$mods" = "overlay vxlan veth bridge nf_tables nft_nat " ] || fail "vm3 loaded only: $mods"
  echo "vm3 loaded on demand: $mods"
}

# in guest I: the body of URL (its own network namespace: the host's)
fetch_in() { vm "$1" "timeout 5 wget -q -O - $2"; }

# a port published by a task on vm2 answers at every guest's address, asked from every
# guest (the routing mesh; that the client's address is kept where the task is, the
# namespace harness checks: tests/cluster.rs)
scenario_published() {
  shoal_in 1 service create --name pub --replicas 1 --constraint node.hostname==vm2 -p 8080:80 \
    --stop-signal KILL shoal-test/busybox sh -c "'mkdir -p /tmp/www && echo published > /tmp/www/index.html && exec httpd -f -p 80 -h /tmp/www'"
  local from to body
  for from in $(seq 1 "$guests"); do
    for to in $(seq 1 "$guests"); do
      answers() { [ "$(fetch_in "$from" "http://10.77.0.$to:8080/")" = published ]; }
      wait_for "10.77.0.$to:8080 from vm$from" 30 answers
    done
  done
  echo "8080 answers at every guest's address, from every guest"
}

# vm4 (a worker) is powered off: it is marked Down and its tasks run on the others
scenario_poweroff() {
  local before t0
  before=$(running_per_node 1 spread)
  echo "$before" | grep -q '^vm4 ' || fail "vm4 has no task of spread: $before"
  t0=$(date +%s.%N)
  vm_kill 4
  down() { shoal_in 1 node ls --format json | grep '"Hostname":"vm4"' | grep -q '"Status":"Down"'; }
  wait_for "vm4 Down" 60 down
  echo "vm4 Down after $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5) s"
  moved() {
    local now
    now=$(running_per_node 1 spread)
    ! echo "$now" | grep -q '^vm4 ' && [ "$(echo "$now" | awk '{s += $2} END {print s}')" = 8 ]
  }
  wait_for "spread's 8 tasks on vm1-vm3" 60 moved
  echo "its tasks run elsewhere after $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5) s"
  running_per_node 1 spread
}

# the leader's guest is powered off: another manager leads and takes writes
scenario_manager_killed() {
  local t0 leader others
  leader=$(shoal_in 2 node ls | awk '/Leader/ {for (i = 1; i <= NF; i++) if ($i ~ /^vm[0-9]$/) print $i}')
  case "$leader" in vm[123]) ;; *) fail "no manager leads: $leader" ;; esac
  others=$(for i in 1 2 3; do [ "vm$i" = "$leader" ] || echo "$i"; done | tr '\n' ' ')
  set -- $others
  echo "$leader leads; powering it off; asking vm$1 and vm$2"
  t0=$(date +%s.%N)
  vm_kill "${leader#vm}"
  # each try gets 10 s, so that one call caught on the way to the dead leader does not
  # use up the whole wait (seen once on a loaded machine)
  leads() { SHOAL_VM_CMD_TIMEOUT=10 shoal_in "$1" node ls | grep -E "vm($1|$2) .*Leader"; }
  wait_for "a new leader" 60 leads "$1" "$2"
  echo "a new leader after $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5) s"
  shoal_in "$1" node ls
  writes() { SHOAL_VM_CMD_TIMEOUT=10 shoal_in "$2" service scale -d spread=4; }
  wait_for "a write to commit" 60 writes "$1" "$2"
  echo "a write committed after $(echo "$(date +%s.%N) - $t0" | bc | cut -c1-5) s"
  shoal_in "$1" service create --name after --replicas 2 --stop-signal KILL shoal-test/busybox sleep 3600
  [ "$(running_per_node "$1" after | awk '{s += $2} END {print s}')" = 2 ] || fail "the new service does not run"
}
