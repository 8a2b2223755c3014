#!/usr/bin/env bash
# Smoke test of the one-node cluster of `scripts/stack.sh up --cluster`: the node
# is Ready, a host-network pod placed by kube-scheduler runs, and a DaemonSet
# (kube-controller-manager) gets its pod on the node. Everything lives in the
# namespace wro-cluster-smoke, deleted at the end (also on failure).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
KUBECTL="${REPO_ROOT}/.stack/bin/kubectl"
export KUBECONFIG="${REPO_ROOT}/.stack/kubeconfig"
NS=wro-cluster-smoke
NODE=wro-node
IMAGE=localhost/wro-pause:dev

log() { printf '[cluster-smoke] %s\n' "$*" >&2; }
die() {
	printf '[cluster-smoke] FAILED: %s\n' "$*" >&2
	"${KUBECTL}" -n "${NS}" get pods -o wide >&2 2>/dev/null || true
	"${KUBECTL}" -n "${NS}" get events >&2 2>/dev/null || true
	exit 1
}
cleanup() { "${KUBECTL}" delete namespace "${NS}" --ignore-not-found --wait=false >/dev/null 2>&1 || true; }

[[ -x "${KUBECTL}" ]] || die "no ${KUBECTL}: run scripts/stack.sh up --cluster first"
start=${SECONDS}
"${KUBECTL}" wait --for=condition=Ready "node/${NODE}" --timeout=60s >/dev/null || die "node ${NODE} is not Ready"
log "node ${NODE} Ready"
trap cleanup EXIT
"${KUBECTL}" create namespace "${NS}" >/dev/null
"${KUBECTL}" -n "${NS}" apply -f - >/dev/null <<-YAML
	apiVersion: v1
	kind: Pod
	metadata:
	  name: smoke
	spec:
	  hostNetwork: true
	  automountServiceAccountToken: false
	  containers:
	  - name: pause
	    image: ${IMAGE}
	    imagePullPolicy: Never
	---
	apiVersion: apps/v1
	kind: DaemonSet
	metadata:
	  name: smoke
	spec:
	  selector:
	    matchLabels: {app: smoke}
	  template:
	    metadata:
	      labels: {app: smoke}
	    spec:
	      hostNetwork: true
	      automountServiceAccountToken: false
	      containers:
	      - name: pause
	        image: ${IMAGE}
	        imagePullPolicy: Never
YAML
"${KUBECTL}" -n "${NS}" wait --for=condition=Ready pod/smoke --timeout=120s >/dev/null || die "pod smoke did not become Ready"
log "pod smoke Running on $("${KUBECTL}" -n "${NS}" get pod smoke -o jsonpath='{.spec.nodeName}') (placed by kube-scheduler)"
deadline=$((SECONDS + 120))
until [[ "$("${KUBECTL}" -n "${NS}" get ds smoke -o jsonpath='{.status.numberReady}' 2>/dev/null)" == 1 ]]; do
	((SECONDS < deadline)) || die "DaemonSet smoke has no Ready pod after 120s"
	sleep 1
done
log "DaemonSet smoke: 1 pod Ready on the node (kube-controller-manager)"
log "passed in $((SECONDS - start))s"
