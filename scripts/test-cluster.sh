#!/usr/bin/env bash
# The operator as a pod: the Helm chart installed into the one-node cluster heals a worker
# (tests/e2e_cluster.rs). Brings the stack up with --cluster (an API server started by a plain
# 'up' lacks the --cluster flags: 'scripts/stack.sh down' first), checks the cluster
# (scripts/cluster-smoke.sh), builds the operator image (scripts/build-operator-image.sh: a
# static release binary, FROM scratch) and runs the test, which loads the image into the
# cluster's containerd, helm-installs the chart (ci/local-cluster-values.yaml, and
# ci/local-cluster-single-host-values.yaml for the Deployment) and uninstalls
# it at the end. The last part of scripts/test.sh, after a 'stack.sh down'.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
start=${SECONDS}
bash scripts/stack.sh up --cluster
bash scripts/cluster-smoke.sh
t=${SECONDS}
bash scripts/build-operator-image.sh
echo "[test-cluster] operator image built in $((SECONDS - t))s" >&2
cargo test --locked --features cluster-e2e --test e2e_cluster -- --nocapture
echo "[test-cluster] passed in $((SECONDS - start))s" >&2
