#!/usr/bin/env bash
# One-command demo: local stack, CRDs, the operator, two demo workers in Docker and one run by
# systemd (the stack's systemd node); crash one of each, watch them heal.
# Builds the images wro-sample-worker:dev, wro-core-analyzer:dev (gdb) and wro-systemd:dev on
# the way.
#
#   scripts/demo.sh          run the demo (leaves everything running so you can explore)
#   scripts/demo.sh clean    stop the operator and remove the demo workers (the stack stays up;
#                            stop it with scripts/stack.sh down)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT="$(pwd)"
DEMO_DIR="${REPO_ROOT}/.stack/demo"
SHARED="${DEMO_DIR}/shared"
OPERATOR_PID="${DEMO_DIR}/operator.pid"
OPERATOR_LOG="${REPO_ROOT}/.stack/logs/operator.log"
WORKERS=(marie anga)
# The worker run by systemd: its unit in the node, its files in the node's shared directory.
UNIT_WORKER=rose
UNIT="agent-worker-${UNIT_WORKER}.service"
SYSTEMD_DIR="${REPO_ROOT}/.stack/systemd"
UNIT_SHARED="${SYSTEMD_DIR}/shared/demo"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
kc() { KUBECONFIG="${REPO_ROOT}/.stack/kubeconfig" "${REPO_ROOT}/.stack/bin/kubectl" "$@"; }

stop_operator() {
	if [[ -f "${OPERATOR_PID}" ]] && kill -0 "$(cat "${OPERATOR_PID}")" 2>/dev/null; then
		kill "$(cat "${OPERATOR_PID}")"
		for _ in $(seq 50); do kill -0 "$(cat "${OPERATOR_PID}")" 2>/dev/null || break; sleep 0.1; done
	fi
	rm -f "${OPERATOR_PID}"
}

clean() {
	stop_operator
	for w in "${WORKERS[@]}"; do docker rm -f "demo-${w}" >/dev/null 2>&1 || true; done
	if docker inspect wro-systemd >/dev/null 2>&1; then
		docker exec wro-systemd systemctl stop "${UNIT}" >/dev/null 2>&1 || true
	fi
	rm -rf "${UNIT_SHARED}" "${SYSTEMD_DIR}/units/${UNIT}"
	if [[ -f .stack/kubeconfig ]]; then
		kc delete workerrecoveries,workers --all -n default --ignore-not-found >/dev/null 2>&1 || true
	fi
	rm -rf "${DEMO_DIR}"
}

wait_phase() { # worker phase timeout
	local deadline=$((SECONDS + $3))
	until [[ "$(kc get worker "$1" -o jsonpath='{.status.phase}' 2>/dev/null)" == "$2" ]]; do
		((SECONDS < deadline)) || { echo "timed out waiting for $1 to be $2" >&2; tail -20 "${OPERATOR_LOG}" >&2; exit 1; }
		sleep 1
	done
}

if [[ "${1:-}" == "clean" ]]; then
	clean
	exit 0
fi

say "Local stack: kube-apiserver + etcd + Docker (first run builds them from source)"
bash scripts/stack.sh up
say "Sample worker image"
bash scripts/build-worker-image.sh >/dev/null
say "Core analyzer image (gdb, for the backtraces of core dumps)"
bash scripts/build-analyzer-image.sh >/dev/null
say "CRDs"
kc apply --server-side --force-conflicts -f crds/
kc wait --for=condition=Established --timeout=60s crd/workers.workerrecovery.io >/dev/null

clean
mkdir -p "${SHARED}"
say "Two demo workers in Docker: ${WORKERS[*]}"
port=19091
for w in "${WORKERS[@]}"; do
	mkdir -p "${SHARED}/tasks/${w}/pending"
	for i in 1 2 3; do printf '{"id":"%s-%d","type":"demo"}\n' "$w" "$i" >"${SHARED}/tasks/${w}/pending/${w}-${i}.json"; done
	# The label is the container's consent: it lets the Worker default/${w}, and no other, manage it.
	docker run -d --name "demo-${w}" --network host -v "${SHARED}:/shared" \
		--label "workerrecovery.io/worker=default/${w}" \
		-e WORKER_NAME="${w}" -e METRICS_ADDR="127.0.0.1:${port}" -e HEARTBEAT_INTERVAL_SECS=2 \
		wro-sample-worker:dev >/dev/null
	port=$((port + 1))
	kc apply -f - <<YAML
apiVersion: workerrecovery.io/v1alpha1
kind: Worker
metadata:
  name: ${w}
  namespace: default
spec:
  container: demo-${w}
  sharedRoot: ${SHARED}
  heartbeatTimeoutSeconds: 15
  autoRecovery:
    enabled: true
YAML
done

say "One demo worker run by systemd: ${UNIT} in the stack's systemd node"
bash scripts/build-systemd-image.sh >/dev/null
bash scripts/stack.sh systemd
mkdir -p "${UNIT_SHARED}/tasks/${UNIT_WORKER}/pending"
# WORKERRECOVERY_WORKER is the unit's consent, as the label is a container's.
cat >"${SYSTEMD_DIR}/units/${UNIT}" <<UNITFILE
[Unit]
Description=agent worker ${UNIT_WORKER} (demo)
[Service]
ExecStart=/usr/local/bin/sample-worker
Restart=no
Environment=WORKER_NAME=${UNIT_WORKER} SHARED_ROOT=${UNIT_SHARED} METRICS_ADDR=127.0.0.1:19099 HEARTBEAT_INTERVAL_SECS=2
Environment=WORKERRECOVERY_WORKER=default/${UNIT_WORKER}
UNITFILE
# Setting the demo up uses systemctl in the node; the operator itself only talks D-Bus.
docker exec wro-systemd systemctl daemon-reload
docker exec wro-systemd systemctl start "${UNIT}"
kc apply -f - <<YAML
apiVersion: workerrecovery.io/v1alpha1
kind: Worker
metadata:
  name: ${UNIT_WORKER}
  namespace: default
spec:
  runtime:
    systemd:
      unit: ${UNIT}
  sharedRoot: ${UNIT_SHARED}
  heartbeatTimeoutSeconds: 15
  autoRecovery:
    enabled: true
YAML

say "Operator (log: ${OPERATOR_LOG})"
cargo build --quiet --locked
bin="${CARGO_TARGET_DIR:-target}/debug/worker-recovery-operator"
KUBECONFIG="${REPO_ROOT}/.stack/kubeconfig" nohup "${bin}" run --listen 127.0.0.1:18080 --namespace default --allowed-root "${DEMO_DIR}" --allowed-root "${UNIT_SHARED}" \
	--core-analyzer-image wro-core-analyzer:dev \
	--systemd-bus "unix:path=${SYSTEMD_DIR}/dbus/system_bus_socket" --systemd-journal-dir "${SYSTEMD_DIR}/journal" \
	>"${OPERATOR_LOG}" 2>&1 &
echo $! >"${OPERATOR_PID}"
for w in "${WORKERS[@]}" "${UNIT_WORKER}"; do wait_phase "${w}" Healthy 60; done
kc get workers

say "Crash marie (fault mode crash: exits with code 3 in the middle of a task)"
echo crash >"${SHARED}/workers/marie/fault"
deadline=$((SECONDS + 60))
until [[ "$(kc get worker marie -o jsonpath='{.status.restartCount}')" -ge 1 ]]; do
	((SECONDS < deadline)) || { echo "marie was not restarted" >&2; tail -20 "${OPERATOR_LOG}" >&2; exit 1; }
	sleep 1
done
wait_phase marie Healthy 60
kc get workers
say "What the operator told a human"
kc get events --field-selector involvedObject.name=marie

say "Crash rose, the worker run by systemd: the operator restarts its unit over D-Bus"
echo crash >"${UNIT_SHARED}/workers/${UNIT_WORKER}/fault"
deadline=$((SECONDS + 60))
until [[ "$(kc get worker "${UNIT_WORKER}" -o jsonpath='{.status.restartCount}')" -ge 1 ]]; do
	((SECONDS < deadline)) || { echo "${UNIT_WORKER} was not restarted" >&2; tail -20 "${OPERATOR_LOG}" >&2; exit 1; }
	sleep 1
done
wait_phase "${UNIT_WORKER}" Healthy 60
kc get workers

say "Ask why: a WorkerRecovery runs the runbook's diagnosis against marie"
kc apply -f - <<YAML
apiVersion: workerrecovery.io/v1alpha1
kind: WorkerRecovery
metadata:
  name: marie-crash
  namespace: default
spec:
  mode: Diagnose
  workerRef:
    name: marie
YAML
deadline=$((SECONDS + 60))
until [[ "$(kc get wrec marie-crash -o jsonpath='{.status.phase}')" == Succeeded ]]; do
	((SECONDS < deadline)) || { echo "diagnosis did not finish" >&2; tail -20 "${OPERATOR_LOG}" >&2; exit 1; }
	sleep 1
done
kc get wrec
say "The same report from the command line (no operator needed): worker-recovery-operator diagnose marie"
KUBECONFIG="${REPO_ROOT}/.stack/kubeconfig" "${bin}" diagnose marie -n default --allowed-root "${DEMO_DIR}" | head -n 25
say "Done. Explore with: eval \"\$(scripts/stack.sh env)\"; kubectl get workers -o yaml. Clean up: scripts/demo.sh clean; scripts/stack.sh down"
