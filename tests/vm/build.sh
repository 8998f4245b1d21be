#!/usr/bin/env bash
# Builds the VM suite's guest from Debian packages only: a pinned Debian kernel (booted
# as an ELF vmlinux through PVH), and an initramfs with busybox-static, the kernel
# modules shoal needs (overlay, vxlan, veth, bridge, nf_tables and its NAT, 9p, virtio),
# iproute2, nftables and util-linux's nsenter with their libraries, and the libraries the
# shoal binary links (the binary itself comes over 9p at run time, fresh).
# Cached in OUT: rebuilt only when an input changes (this script, the guest's init, the
# kernel package, the versions of the packages the guest is made of, the libraries).
# Usage: tests/vm/build.sh OUT SHOAL_BINARY      (prints OUT/vmlinux and OUT/initramfs.gz)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT SHOAL_BINARY}
shoal=${2:?usage: build.sh OUT SHOAL_BINARY}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# The kernel: one pinned ABI of Debian 12's 6.1 kernel. If Debian's mirror no longer has
# it, set the package to what `apt-cache depends linux-image-amd64` names.
kernel_pkg=${SHOAL_VM_KERNEL:-linux-image-6.1.0-57-amd64}
kver=${kernel_pkg#linux-image-}
modules=(crc32c_generic virtio_pci virtio_net virtio_console 9pnet_virtio 9p overlay vxlan veth bridge
  nf_tables nft_chain_nat nf_nat nf_conntrack nft_ct nft_nat nft_masq nft_numgen
  nft_fib_ipv4 nft_reject_ipv4 nf_reject_ipv4)
programs=(/usr/sbin/ip /usr/sbin/nft /usr/bin/nsenter)
guest_pkgs=(busybox-static iproute2 nftables util-linux libc6 libseccomp2 libgcc-s1)

libs_of() { ldd "$@" 2>/dev/null | grep -o '/[^ ]*\.so[^ ]*' | sort -u; }
versions=$(dpkg-query -W -f='${Package}=${Version}\n' "${guest_pkgs[@]}")
key=$( { cat "$0" "$here/init.sh"; echo "$kernel_pkg"; echo "$versions"; libs_of "$shoal" "${programs[@]}"; } | sha256sum | cut -c1-16)
if [ -f "$out/key" ] && [ "$(cat "$out/key")" = "$key" ] && [ -f "$out/vmlinux" ] && [ -f "$out/initramfs.gz" ]; then
  echo "$out/vmlinux $out/initramfs.gz"
  exit 0
fi
echo "vm build: making the guest (key $key)" >&2

# the kernel package, unpacked (not installed)
kdir=$out/kernel-$kver
if [ ! -f "$kdir/boot/vmlinuz-$kver" ]; then
  rm -rf "$kdir" && mkdir -p "$kdir"
  (cd "$out" && rm -f "${kernel_pkg}"_*.deb && apt-get download "$kernel_pkg" >/dev/null) || {
    echo "vm build: apt-get download $kernel_pkg failed; is it still on Debian's mirror? (SHOAL_VM_KERNEL picks another)" >&2
    exit 1
  }
  dpkg -x "$out/${kernel_pkg}"_*.deb "$kdir"
  rm -f "$out/${kernel_pkg}"_*.deb
  depmod -b "$kdir" "$kver"
fi
# bzImage's XZ payload is an ELF vmlinux: booted directly (PVH) it skips decompressing
# under emulation, about 3 s a boot
img=$kdir/boot/vmlinuz-$kver
off=$(grep -abo $'\xfd7zXZ\x00' "$img" | head -1 | cut -d: -f1)
tail -c +$((off + 1)) "$img" | xz -dc > "$out/vmlinux.new" 2>/dev/null || true
[ "$(head -c 4 "$out/vmlinux.new" | od -An -c | tr -d ' ')" = "177ELF" ] || { echo "vm build: no ELF vmlinux in $img" >&2; exit 1; }

root=$out/rootfs
rm -rf "$root" && mkdir -p "$root"/{bin,sbin,etc,proc,sys,dev,run,tmp,var,mnt/host,mnt/out,lib/modules}
cp /bin/busybox "$root/bin/busybox"
# where the kernel runs modprobe from to load a module on demand
ln -s ../bin/busybox "$root/sbin/modprobe"
for a in $(/bin/busybox --list); do
  # (busybox's own name is in the list: a link would replace the binary)
  [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
done
# the kernel modules and what they need
for m in $(modprobe -d "$kdir" -S "$kver" --show-depends -a "${modules[@]}" | awk '$1 == "insmod" {print $2}' | sort -u); do
  rel=${m#"$kdir"/}
  mkdir -p "$root/$(dirname "$rel")"
  cp "$m" "$root/$rel"
done
cp "$kdir/lib/modules/$kver/modules.order" "$kdir/lib/modules/$kver/modules.builtin"* "$root/lib/modules/$kver/"
depmod -b "$root" "$kver"
# glibc programs and the shoal binary's libraries, from this machine's Debian packages
mkdir -p "$root/usr/sbin" "$root/usr/bin"
for p in "${programs[@]}"; do cp "$p" "$root$p"; done
for l in $(libs_of "$shoal" "${programs[@]}"); do
  mkdir -p "$root$(dirname "$l")"
  cp -L "$l" "$root$l"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\n' > "$root/etc/group"
: > "$root/etc/resolv.conf"
cp "$here/init.sh" "$root/init"
chmod +x "$root/init"
(cd "$root" && find . -print0 | cpio --null -o -H newc --quiet | gzip -1 > "$out/initramfs.gz.new")
mv "$out/vmlinux.new" "$out/vmlinux"
mv "$out/initramfs.gz.new" "$out/initramfs.gz"
rm -rf "$root"
echo "$key" > "$out/key"
echo "$out/vmlinux $out/initramfs.gz"
