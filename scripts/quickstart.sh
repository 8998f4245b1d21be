#!/usr/bin/env bash
# The main job, from a fresh Debian machine as root: install what is missing, build
# shoal, start its daemon, make this host a single-node swarm, and deploy a demo service
# from an image built locally from Debian's busybox-static. No Docker, containerd or
# runc anywhere: shoal runs the containers itself.
#
# The daemon keeps running afterwards (log: /var/log/shoal-daemon.log), with the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "quickstart: run as root" >&2; exit 1; }
scripts/deps.sh
cargo build --release --bin shoal
bin=$PWD/target/release/shoal

if ! "$bin" swarm init >/dev/null 2>&1 && ! "$bin" node ls >/dev/null 2>&1; then
  # no daemon answering yet: start one
  nohup "$bin" daemon >>/var/log/shoal-daemon.log 2>&1 &
  for _ in $(seq 1 100); do
    out=$("$bin" node ls 2>&1) && break
    case "$out" in *"not a swarm manager"*) break ;; esac
    sleep 0.1
  done
  "$bin" swarm init
fi

scripts/fixtures.sh target/demo-image >/dev/null
"$bin" image import target/demo-image/busybox-oci
"$bin" service rm demo >/dev/null 2>&1 || true
"$bin" service create --name demo --replicas 3 --limit-memory 32m --stop-signal KILL \
  shoal-test/busybox sh -c 'while true; do echo "hello from $(hostname)"; sleep 2; done'
"$bin" service ls
"$bin" service ps demo
"$bin" service logs --tail 1 demo
cat <<MSG

The demo service runs 3 replicas under shoal's daemon and its keeper:
  $bin service logs -f demo       follow their output
  $bin service scale demo=10      scale it
  $bin service rm demo            remove it
  $bin swarm leave --force        leave the swarm (the daemon keeps running)
MSG
