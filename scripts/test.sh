#!/usr/bin/env bash
# Runs every shoal test, as root, from a clean checkout: installs what is missing, builds
# the test images, starts the loopback registries, builds once, and runs the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$PWD
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (containers, cgroups and mounts need it)" >&2; exit 1; }
scripts/deps.sh
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
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads="${SHOAL_TEST_THREADS:-2}"
