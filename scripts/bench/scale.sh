#!/usr/bin/env bash
# Benchmark: a big cluster, simulated (shoal bench-scale): a real leader in one process
# (Raft on redb, the orchestrator, scheduler and dispatcher behind its gRPC service) and
# NODES simulated nodes in a second one, each a real agent with the fake executor (its
# own session, heartbeats, assignment stream and status reports), at the lowest CPU
# priority. Creates SERVICES services of REPLICAS replicas and prints the seconds until
# every task is RUNNING and the leader's peak resident memory (VmHWM; the simulated
# nodes' process's is printed too).
# Targets: 1,000 nodes, 10,000 tasks of 100 services, 2 s or less, 300 MiB or less.
# Runs it RUNS times (5) and prints the medians (memory: the largest).
# With SEALING=compare, each run is made twice, alternately with the Raft database
# sealed (as the daemon always has it) and with its records plain (--unsealed), and the
# cost of sealing is printed (target: within 5 %).
# Usage: scripts/bench/scale.sh [NODES] [SERVICES] [REPLICAS]   (no root needed)
set -euo pipefail
cd "$(dirname "$0")/../.."
nodes=${1:-1000} services=${2:-100} replicas=${3:-100}
cargo build --release --bin shoal
ulimit -n 65536 2>/dev/null || true
runs=${RUNS:-5}
modes=("")
[ "${SEALING:-}" = compare ] && modes=("" "--unsealed")
results=()
for i in $(seq "$runs"); do
    for m in "${modes[@]}"; do
        out=$(target/release/shoal bench-scale --nodes "$nodes" --services "$services" --replicas "$replicas" $m)
        label=${m:+unsealed}
        echo "run $i ${label:-sealed}: $out"
        results+=("${label:-sealed} $out")
    done
done
printf '%s\n' "${results[@]}" | python3 -c '
import json, statistics, sys
runs = {}
for l in sys.stdin:
    if l.strip():
        mode, js = l.split(" ", 1)
        runs.setdefault(mode, []).append(json.loads(js))
for mode, rs in runs.items():
    med = lambda k: statistics.median(r[k] for r in rs)
    print("%s, median of %d runs:" % (mode, len(rs)))
    print("%d nodes ready in %.2f s" % (rs[0]["nodes"], med("nodes_ready_s")))
    print("%d tasks created in %.2f s, all RUNNING after %.2f s (target 2 s; runs: %s)" % (
        rs[0]["tasks"], med("creates_s"), med("all_running_s"),
        ", ".join("%.2f" % r["all_running_s"] for r in rs)))
    print("leader peak resident memory %.0f MiB (target 300 MiB); the process of the %d simulated nodes: %.0f MiB" % (
        max(r["peak_rss_mib"] for r in rs), rs[0]["nodes"], max(r["nodes_peak_rss_mib"] for r in rs)))
if len(runs) == 2:
    m = {k: statistics.median(r["all_running_s"] for r in v) for k, v in runs.items()}
    print("sealing costs %+.1f %% (sealed %.2f s, unsealed %.2f s; target within 5 %%)" % (
        100 * (m["sealed"] / m["unsealed"] - 1), m["sealed"], m["unsealed"]))
'
