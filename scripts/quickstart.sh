#!/usr/bin/env bash
# The main job, from a fresh Debian machine as root: install what is missing, build
# shoal, build a demo image locally from Debian's busybox-static, and run it through
# shoal's own runtime (no Docker, containerd or runc anywhere).
#
# Until the cluster commands land (issue 3: `shoal swarm init`, `shoal service create`),
# the demo runs as a single container on this host; it stays up after the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "quickstart: run as root" >&2; exit 1; }
scripts/deps.sh
cargo build --release --bin shoal
bin=$PWD/target/release/shoal
scripts/fixtures.sh target/demo-image >/dev/null
"$bin" image import target/demo-image/busybox-oci
"$bin" image ls
"$bin" container rm -f demo >/dev/null 2>&1 || true
"$bin" container run -d --name demo --memory 32m \
  shoal-test/busybox sh -c 'i=0; while true; do echo "hello from shoal ($i)"; i=$((i+1)); sleep 1; done'
"$bin" container ls
# the first line shows the container is up and its output is being kept
"$bin" container logs -f demo | head -n 1
cat <<MSG

The demo container runs under shoal's keeper (no per-container helper process).
  $bin container logs -f demo     follow its output
  $bin container inspect demo     its state, pid, health
  $bin container rm -f demo       stop and remove it
MSG
