#!/usr/bin/env bash
# Benchmark: a big cluster, simulated in one process (shoal bench-scale): a real manager
# (Raft on redb, the orchestrator, scheduler and dispatcher behind its gRPC service) and
# NODES simulated nodes, each a real agent with the fake executor (its own session,
# heartbeats, assignment stream and status reports). Creates SERVICES services of
# REPLICAS replicas and prints the seconds until every task is RUNNING and the process's
# peak resident memory (VmHWM: the manager and all the simulated agents together).
# Targets: 1,000 nodes, 10,000 tasks of 100 services, 2 s or less, 300 MiB or less.
# Usage: scripts/bench/scale.sh [NODES] [SERVICES] [REPLICAS]   (no root needed)
set -euo pipefail
cd "$(dirname "$0")/../.."
nodes=${1:-1000} services=${2:-100} replicas=${3:-100}
cargo build --release --bin shoal
ulimit -n 65536 2>/dev/null || true
out=$(target/release/shoal bench-scale --nodes "$nodes" --services "$services" --replicas "$replicas")
echo "$out"
echo "$out" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
print(f"{r[\"nodes\"]} nodes ready in {r[\"nodes_ready_s\"]:.2f} s")
print(f"{r[\"tasks\"]} tasks created in {r[\"creates_s\"]:.2f} s, all RUNNING after {r[\"all_running_s\"]:.2f} s (target 2 s)")
print(f"peak resident memory {r[\"peak_rss_mib\"]:.0f} MiB (target 300 MiB)")
'
