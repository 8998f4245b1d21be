#!/usr/bin/env bash
# Runs the VM suite (tests/vm): the cluster scenarios on QEMU guests with their own
# kernels. Installs what it needs from Debian, builds shoal (in release, the build that
# scripts/test.sh shares between its tiers) unless given a binary, and runs every
# scenario (or those named).
# Usage: scripts/vm-test.sh [SHOAL_BINARY [SCENARIO…]]   (as root)
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "vm-test.sh: run as root (network namespaces, containers)" >&2; exit 1; }
scripts/deps.sh qemu-system-x86 kmod cpio xz-utils bc python3
bin=${1:-}
if [ -z "$bin" ]; then
  cargo build --release --bin shoal
  bin=target/release/shoal
fi
[ $# -gt 0 ] && shift
exec tests/vm/run.sh "$bin" "$@"
