#!/bin/sh
# PID 1 of a VM suite guest (busybox sh). Mounts the kernel's filesystems, loads the
# modules shoal needs, sets the name and address the command line gives
# (vm.name=, vm.ip=, vm.cgroup=v2|hybrid), mounts the host's shares (9p: /mnt/host
# read-only, /mnt/out writable), prints VM-READY and then runs the commands the host
# sends over the virtio serial port "ctl", one at a time: a line "ID SECONDS BASE64-SCRIPT"
# is answered "ID EXIT-CODE BASE64-OUTPUT"; a script still running after SECONDS is
# killed (exit code 137), so that one stuck command does not hold up the next.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
arg() { tr ' ' '\n' < /proc/cmdline | sed -n "s/^$1=//p" | tail -1; }
# Most hosts run from a disk; a host that runs from RAM keeps the initramfs as its root,
# which pivot_root cannot leave (shoal then sets containers up without it). vm.root=ramfs
# keeps this guest on the initramfs; otherwise it moves to a tmpfs first, as a distro's
# initramfs moves to the real root.
# (the initial root is "rootfs" in mountinfo; statfs calls it tmpfs, as a tmpfs is)
if [ "$(arg vm.root)" != ramfs ] && awk '$5 == "/" {t = $0} END {exit t !~ / - rootfs /}' /proc/self/mountinfo; then
  mkdir -p /newroot
  mount -t tmpfs -o mode=755 root /newroot
  for d in bin sbin etc lib lib64 usr init; do [ -e "/$d" ] && cp -a "/$d" /newroot/; done
  mkdir -p /newroot/proc /newroot/sys /newroot/dev /newroot/run /newroot/tmp /newroot/var /newroot/mnt/host /newroot/mnt/out
  umount /proc
  exec switch_root /newroot /init
fi
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /var
name=$(arg vm.name) ip=$(arg vm.ip) cg=$(arg vm.cgroup) mtu=$(arg vm.mtu)
case "$cg" in
  hybrid)
    # cgroup v1 controllers with the unified hierarchy beside them, as on this
    # project's CI hosts
    mount -t tmpfs cgroup /sys/fs/cgroup
    for c in cpu,cpuacct memory pids devices freezer blkio cpuset; do
      mkdir -p "/sys/fs/cgroup/$c"
      mount -t cgroup -o "$c" cgroup "/sys/fs/cgroup/$c"
    done
    mkdir -p /sys/fs/cgroup/unified
    mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified ;;
  *) mount -t cgroup2 cgroup2 /sys/fs/cgroup ;;
esac
# what the guest itself needs (the network card, the shares, the host's port)
boot="virtio_pci virtio_net virtio_console 9pnet_virtio 9p"
# what shoal needs: loaded here, or (vm.modules=auto) left to the kernel, which loads a
# module when it is first asked for (a VXLAN link, an nft table, an overlay mount)
shoal_mods="crc32c_generic overlay vxlan veth bridge nf_tables nft_chain_nat nf_nat nf_conntrack
  nft_ct nft_nat nft_masq nft_numgen nft_fib_ipv4 nft_reject_ipv4"
[ "$(arg vm.modules)" = auto ] && shoal_mods=""
for m in $boot $shoal_mods; do
  modprobe "$m" || echo "init: modprobe $m failed"
done
# hardened hosts filter on the reverse path strictly (vm.sysctl=strict)
if [ "$(arg vm.sysctl)" = strict ]; then
  for k in all default; do echo 1 > "/proc/sys/net/ipv4/conf/$k/rp_filter"; done
fi
hostname "${name:-vm}"
ip link set lo up
if [ -n "$ip" ]; then
  ip addr add "$ip" dev eth0
  ip link set eth0 mtu "${mtu:-1500}" up
fi
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288,ro host /mnt/host
mount -t 9p -o trans=virtio,version=9p2000.L,msize=524288 out /mnt/out
mkdir -p "/mnt/out/$name"
port=$(for p in /sys/class/virtio-ports/*; do [ "$(cat "$p/name" 2>/dev/null)" = ctl ] && basename "$p"; done)
echo "VM-READY $name $(cut -d' ' -f1 /proc/uptime)"
[ -n "$port" ] || { echo "init: no ctl port"; exec sh; }
# One command at a time, read from and answered on the port (stdin and stdout here); a
# command's own stdin, stdout and stderr are not the port, so nothing it leaves running
# holds the port open.
# Each command is acknowledged as soon as it is read: a command that arrives while the
# port is being closed is discarded by the guest's driver, and the host sends it again.
serve() {
  while read -r id secs script; do
    printf '%s ack\n' "$id"
    [ "$id" = "${last:-}" ] && continue # a second copy, sent before the first was acknowledged
    last=$id
    echo "$script" | base64 -d > /tmp/ctl.sh
    out=$(timeout -s KILL "$secs" sh /tmp/ctl.sh 2>&1 < /dev/null)
    rc=$?
    printf '%s %s %s\n' "$id" "$rc" "$(printf '%s' "$out" | base64 | tr -d '\n')"
  done
}
# the host connects for each command; with no host connected a read ends at once
while true; do
  serve <>"/dev/$port" >&0
  sleep 0.1
done
