#!/usr/bin/env bash
# Benchmark of per-node agents (issue 15), on the local stack, reported, never pass/fail:
# NODES agents (release build, `--node-name node-<i>`, POD_NAME agent-node-<i>) as processes,
# PER_NODE file-only healthy Workers with spec.nodeName=node-<i> each (heartbeats rewritten by
# the script every BEAT_EVERY s, heartbeatTimeoutSeconds HEARTBEAT_TIMEOUT). Reports per-agent RSS
# and idle CPU, API requests per minute when idle, the time for all agents to look at all their
# Workers after a restart of all, and each agent's reconcile counter (PER_NODE exactly: its node's
# Workers only).
#
#   scripts/bench-agents.sh      NODES=10 PER_NODE=1000 IDLE_SECONDS=120 HEARTBEAT_TIMEOUT=120
#                                BEAT_EVERY=30 CHUNK=500 STALE=1 OPERATOR=path
# STALE: the first STALE Workers of each node get no heartbeat, so that their agent writes Events
# about them (reportingInstance = the agent's POD_NAME: which agent looked at which Worker).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/stack.sh up >/dev/null
eval "$(bash scripts/stack.sh env)"
if [[ -z "${OPERATOR:-}" ]]; then
	cargo build --release --locked --quiet --bin worker-recovery-operator
	export OPERATOR="${CARGO_TARGET_DIR:-$(pwd)/target}/release/worker-recovery-operator"
fi
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null
exec python3 scripts/bench_agents.py
