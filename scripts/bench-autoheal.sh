#!/usr/bin/env bash
# Benchmarks of auto-healing (issue: auto-healing), on the local stack, reported, never pass/fail:
#
#   restart   crash to container running again, p50/p95 over CRASHES crashes per method, side by
#             side in one run: the operator (Docker events, a Worker per container), Docker's own
#             `--restart on-failure`, and a restarter polling every 5 s as docker-autoheal does.
#             Latency = the engine's `start` event time minus its `die` event time. Each container
#             runs 11 s between crashes, so Docker's own backoff (reset after 10 s) stays at 100 ms;
#             the operator's policy is set alike (no cooldown, reset after 10 s).
#   deadline  heartbeat deadline to HeartbeatFresh=False: a worker hung with the `hang` fault, its
#             last heartbeat time + heartbeatTimeoutSeconds against when status says stale.
#   scale     1,000 Workers on one operator (REAL of them with real containers): RSS, idle CPU,
#             API requests per minute when idle, time to look at all of them after a restart.
#
#   scripts/bench-autoheal.sh [restart|deadline|scale|all]     default: all
#   CRASHES=50 CONTAINERS=5 WORKERS=1000 REAL=20 IDLE_SECONDS=60
#   FILE_ONLY=1                  scale: every Worker file-only and healthy (heartbeats kept fresh
#                                by the script), instead of REAL containers and absent ones
#   WRO_STATUS_REFRESH_SECONDS   passed to the operator (0: status written at every look)
#   OPERATOR=path                operator binary (default: a release build of this tree)
#
# Starts the stack and builds the images when needed; leaves the stack running.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
MODE="${1:-all}"
bash scripts/stack.sh up >/dev/null
eval "$(bash scripts/stack.sh env)"
bash scripts/build-worker-image.sh >/dev/null
if [[ -z "${OPERATOR:-}" ]]; then
	cargo build --release --locked --quiet --bin worker-recovery-operator
	export OPERATOR="${CARGO_TARGET_DIR:-$(pwd)/target}/release/worker-recovery-operator"
fi
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
exec python3 scripts/bench_autoheal.py "${MODE}"
