#!/usr/bin/env bash
# Runs every shoal test, as root, from a clean checkout: installs what is missing, builds
# the test images, starts the loopback registries, builds once, and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (containers, cgroups and mounts need it)" >&2; exit 1; }
scripts/deps.sh libfaketime
# network namespaces a killed test run could not delete (cluster tests name theirs sht*)
ip netns list | awk '/^sht[0-9]+x[0-9]+-/ {print $1}' | xargs -r -n1 ip netns del
work=$top/target/test-env
mkdir -p "$work"
scripts/fixtures.sh "$work/fixtures"
cleanup() { scripts/registry.sh stop "$work/registry" || true; }
trap cleanup EXIT
scripts/registry.sh start "$work/registry" "$work/fixtures"
export SHOAL_TEST_FIXTURES=$work/fixtures
export SHOAL_TEST_REGISTRY=127.0.0.1:${SHOAL_TEST_REGISTRY_PORT:-5055}
export SHOAL_TEST_AUTH_REGISTRY=127.0.0.1:${SHOAL_TEST_AUTH_REGISTRY_PORT:-5056}
# One build, in release, for every tier: the VM suite's guests run under emulation, where
# a debug build is too slow to keep Raft's heartbeats (leaders come and go), and
# the benchmarks and the quickstart use release too.
cargo build --release --workspace --all-targets
cargo test --release --workspace -- --test-threads="${SHOAL_TEST_THREADS:-2}"
# the VM suite, on the same build: QEMU guests with kernels of their own
vm_skip=""
if [ -n "${SHOAL_SKIP_VM:-}" ]; then
  vm_skip="SHOAL_SKIP_VM is set"
elif [ "$(uname -m)" != x86_64 ]; then
  vm_skip="its guests are x86_64 and this machine is $(uname -m)"
elif ! scripts/deps.sh qemu-system-x86 kmod cpio xz-utils bc python3; then
  vm_skip="QEMU and the tools that make its guests could not be installed"
elif ! command -v qemu-system-x86_64 >/dev/null || [ ! -f /usr/share/qemu/qboot.rom ]; then
  vm_skip="qemu-system-x86_64 or its qboot.rom is missing"
fi
if [ -n "$vm_skip" ]; then
  echo "test.sh: SKIPPING the VM suite (tests/vm): $vm_skip"
else
  scripts/vm-test.sh target/release/shoal
fi
# the last lines say which tiers ran; CI (and SHOAL_REQUIRE_VM=1) never passes without
# the VM suite
if [ -n "$vm_skip" ]; then
  echo "test.sh: unit and integration tests passed; the VM suite did NOT run ($vm_skip)"
  if [ -n "${CI:-}" ] || [ -n "${SHOAL_REQUIRE_VM:-}" ]; then
    echo "test.sh: FAILED: CI must run every tier, the VM suite included" >&2
    exit 1
  fi
else
  echo "test.sh: every tier passed: unit, integration and the VM suite"
fi
