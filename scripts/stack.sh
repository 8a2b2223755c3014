#!/usr/bin/env bash
# Local stack for tests and the demo: a real etcd + kube-apiserver (envtest
# style: no kubelet, no controller-manager unless up --cluster), a Jaeger v2, a
# Docker engine and, on demand, a systemd node (a container with systemd as PID 1).
#
#   scripts/stack.sh up        build what is missing, start what is not running, wait until ready
#   scripts/stack.sh down      stop everything this script started (add --purge to also wipe .stack/ state;
#                              --cluster stops only the cluster parts of up --cluster, --systemd only the systemd node)
#   scripts/stack.sh status    show each component, its pid/version and whether it answers (exit 1 if any does not)
#   scripts/stack.sh env       print shell exports: eval "$(scripts/stack.sh env)"
#   scripts/stack.sh up --cluster   also a one-node cluster: containerd, kubelet, scheduler, controller-manager
#   scripts/stack.sh load-image IMAGE...   copy images from the Docker engine into the cluster's containerd
#   scripts/stack.sh helm      build helm if missing (nothing else), print its path
#   scripts/stack.sh prometheus   unpack Debian's prometheus + promtool if missing, print their directory
#   scripts/stack.sh systemd   start the systemd node (container wro-systemd: systemd as PID 1) if not running, wait until ready
#
# Binaries are built from source with Go (hack/k8s, hack/etcd, hack/jaeger,
# hack/helm) on first use (in parallel) and cached outside the repo, keyed by version:
#   ${WRO_CACHE_DIR:-$HOME/.cache/worker-recovery-operator}/bin/kubernetes-vX.Y.Z/{kube-apiserver,kubectl}
#   ${WRO_CACHE_DIR:-$HOME/.cache/worker-recovery-operator}/bin/etcd-vX.Y.Z/etcd
#   ${WRO_CACHE_DIR:-$HOME/.cache/worker-recovery-operator}/bin/jaeger-vX.Y.Z/jaeger
#   ${WRO_CACHE_DIR:-$HOME/.cache/worker-recovery-operator}/bin/helm-vX.Y.Z/helm   (chart tests only)
# and symlinked into <repo>/.stack/bin/. Runtime state lives in <repo>/.stack/:
#   kubeconfig (admin, system:masters), pki/, etcd-data/, logs/*.log, *.pid
# (Jaeger keeps its traces in memory only: they are gone after 'down'.)
#
# Ports, all on 127.0.0.1:
#   etcd            12379 (client), 12380 (peer)
#   kube-apiserver  16443 (https; loopback only, with --cluster on all addresses for the pods,
#                   anonymous requests refused)
#   jaeger          4318 (OTLP/HTTP in), 16686 (query API + UI), 16685 (query gRPC), 13133 (health, /status)
#                   config: hack/jaeger/config.yaml
#   prometheus      19090 (Debian's package, unpacked; scrapes .stack/prometheus/targets/*.json,
#                   evaluates charts/worker-recovery-operator/files/alert-rules.yaml)
#   with --cluster: kubelet 10250 (API, anonymous) + 10248 (healthz), kube-scheduler 10259,
#                   kube-controller-manager 10257; containerd on .stack/containerd/containerd.sock
#
# The systemd node (on demand, `systemd`; see the systemd section below): the container
# wro-systemd of the image wro-systemd:dev (scripts/build-systemd-image.sh, built if missing),
# systemd 252 as PID 1 on the host's network, for the operator's systemd backend. Host side,
# all in .stack/systemd/:
#   dbus/system_bus_socket   its system bus (the node's /run/dbus): WRO_SYSTEMD_BUS=unix:path=...
#   units/                   unit files read by the node (its /usr/local/lib/systemd/system): drop one, Reload
#   shared/                  mounted at the same absolute path in the node (workers' SHARED_ROOTs)
#   journal/                 its persistent journal (/var/log/journal): journalctl -D .stack/systemd/journal
#   machine-id               its machine id (the journal's subdirectory), made once
#
# Environment knobs (all optional):
#   WRO_CACHE_DIR               binary cache root (see above)
#   WRO_STACK_TIMEOUT           seconds to wait for each component to become ready (default 180)
#   WRO_APISERVER_EXTRA_ARGS    extra kube-apiserver flags, space separated
#   WRO_SKIP_JAEGER=1           do not build/start Jaeger
#   WRO_SKIP_HELM=1             do not build helm on 'up' ('helm' still builds it)
#   WRO_SKIP_DOCKER=1           do not check/start a Docker engine
#   WRO_CLUSTER=1               same as up --cluster
#   WRO_SYSTEMD=1               status: report the systemd node as a required part (shown whenever it exists)
#   WRO_SYSTEMD_IMAGE           image of the systemd node (default wro-systemd:dev)
#   WRO_CNI_BIN_DIR             CNI plugin binaries for --cluster (default /usr/lib/cni, Debian's containernetworking-plugins)
#   DOCKER_HOST=unix:///path    use (or start) a private engine on that socket, state in .stack/docker/
#   GO                          go binary to use (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
STACK_DIR="${REPO_ROOT}/.stack"
STACK_BIN="${STACK_DIR}/bin"
LOG_DIR="${STACK_DIR}/logs"
PKI_DIR="${STACK_DIR}/pki"
ETCD_DATA_DIR="${STACK_DIR}/etcd-data"
KUBECONFIG_PATH="${STACK_DIR}/kubeconfig"

K8S_MOD_DIR="${REPO_ROOT}/hack/k8s"
ETCD_MOD_DIR="${REPO_ROOT}/hack/etcd"
JAEGER_MOD_DIR="${REPO_ROOT}/hack/jaeger"
JAEGER_CONFIG="${JAEGER_MOD_DIR}/config.yaml"
PAUSE_MOD_DIR="${REPO_ROOT}/hack/pause"

# Cluster mode (up --cluster / WRO_CLUSTER=1) only.
CTRD_DIR="${STACK_DIR}/containerd"
CTRD_SOCK="${CTRD_DIR}/containerd.sock"
CTRD_CONFIG="${CTRD_DIR}/config.toml"
KUBELET_DIR="${STACK_DIR}/kubelet"
CNI_CONF_DIR="${STACK_DIR}/cni/net.d"
CNI_BIN_DIR="${WRO_CNI_BIN_DIR:-/usr/lib/cni}"
NODE_NAME="wro-node"
POD_CIDR="10.244.0.0/24"
# The pod bridge's own address (the bridge plugin's gateway, the first of POD_CIDR): a pod that
# is not on the host's network reaches the API server there (KUBERNETES_SERVICE_HOST), since
# nothing routes the Service IP without kube-proxy.
POD_GATEWAY_IP="10.244.0.1"
PAUSE_IMAGE="localhost/wro-pause:dev"
K8S_NODE_BINS=(kubelet kube-scheduler kube-controller-manager)
HELM_MOD_DIR="${REPO_ROOT}/hack/helm"

CACHE_DIR="${WRO_CACHE_DIR:-${HOME}/.cache/worker-recovery-operator}"
TIMEOUT="${WRO_STACK_TIMEOUT:-180}"

ETCD_CLIENT_PORT=12379
ETCD_PEER_PORT=12380
APISERVER_PORT=16443
KUBELET_PORT=10250
KUBELET_HEALTHZ_PORT=10248
SCHEDULER_PORT=10259
CONTROLLER_MANAGER_PORT=10257
ETCD_URL="http://127.0.0.1:${ETCD_CLIENT_PORT}"
APISERVER_URL="https://127.0.0.1:${APISERVER_PORT}"
SERVICE_CIDR="10.0.0.0/24"
SERVICE_FIRST_IP="10.0.0.1"
# Jaeger's ports are set in hack/jaeger/config.yaml; keep the two in sync.
JAEGER_OTLP_HTTP_PORT=4318
JAEGER_QUERY_PORT=16686
JAEGER_QUERY_GRPC_PORT=16685
JAEGER_HEALTH_PORT=13133
JAEGER_OTLP_URL="http://127.0.0.1:${JAEGER_OTLP_HTTP_PORT}"
JAEGER_QUERY_URL="http://127.0.0.1:${JAEGER_QUERY_PORT}"
JAEGER_HEALTH_URL="http://127.0.0.1:${JAEGER_HEALTH_PORT}/status"
# Prometheus: scrapes the operators the tests start (file_sd targets written by the tests into
# PROMETHEUS_TARGETS_DIR) and evaluates the chart's alert rules, every 2 s.
PROMETHEUS_PORT=19090
PROMETHEUS_URL="http://127.0.0.1:${PROMETHEUS_PORT}"
PROMETHEUS_DIR="${STACK_DIR}/prometheus"
PROMETHEUS_TARGETS_DIR="${PROMETHEUS_DIR}/targets"
PROMETHEUS_RULES="${REPO_ROOT}/charts/worker-recovery-operator/files/alert-rules.yaml"

log() { printf '[stack] %s\n' "$*" >&2; }
die() {
	printf '[stack] ERROR: %s\n' "$*" >&2
	exit 1
}

# Print the last lines of a log file to stderr (used when something fails).
show_log_tail() {
	local file="$1" lines="${2:-40}"
	if [[ -s "${file}" ]]; then
		printf '[stack] ---- last %s lines of %s ----\n' "${lines}" "${file}" >&2
		tail -n "${lines}" "${file}" >&2 || true
		printf '[stack] ---- end of %s ----\n' "${file}" >&2
	else
		printf '[stack] (log %s is empty or missing)\n' "${file}" >&2
	fi
}

# Version pinned in a hack/*/go.mod: the version of module $2 in file $1, from
# a `require M vX` line or a `M vX [// indirect]` line inside a require block
# (hack/jaeger pins its module as an indirect requirement of a `tool` line).
mod_version() {
	local gomod="$1" module="$2" v
	v="$(awk -v m="${module}" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "${gomod}")"
	[[ -n "${v}" ]] || die "cannot find the version of ${module} in ${gomod}"
	printf '%s\n' "${v}"
}

K8S_VERSION="$(mod_version "${K8S_MOD_DIR}/go.mod" k8s.io/kubernetes)"
ETCD_VERSION="$(mod_version "${ETCD_MOD_DIR}/go.mod" go.etcd.io/etcd/server/v3)"
JAEGER_VERSION="$(mod_version "${JAEGER_MOD_DIR}/go.mod" github.com/jaegertracing/jaeger)"
K8S_BIN_DIR="${CACHE_DIR}/bin/kubernetes-${K8S_VERSION}"
ETCD_BIN_DIR="${CACHE_DIR}/bin/etcd-${ETCD_VERSION}"
JAEGER_BIN_DIR="${CACHE_DIR}/bin/jaeger-${JAEGER_VERSION}"
PAUSE_BIN_DIR="${CACHE_DIR}/bin/pause-$(cat "${PAUSE_MOD_DIR}/main.go" "${PAUSE_MOD_DIR}/go.mod" | sha256sum | cut -c1-12)"
# Prometheus and promtool: Debian's package, unpacked (not installed: no service, no user).
PROMETHEUS_DEB_VERSION="2.42.0+ds-5+deb12u1"
PROMETHEUS_BIN_DIR="${CACHE_DIR}/bin/prometheus-${PROMETHEUS_DEB_VERSION%%+*}"
HELM_VERSION="$(mod_version "${HELM_MOD_DIR}/go.mod" helm.sh/helm/v3)"
HELM_BIN_DIR="${CACHE_DIR}/bin/helm-${HELM_VERSION}"

skip_jaeger() { [[ "${WRO_SKIP_JAEGER:-0}" == 1 ]]; }
skip_helm() { [[ "${WRO_SKIP_HELM:-0}" == 1 ]]; }

# ---------------------------------------------------------------- processes

pidfile() { printf '%s/%s.pid\n' "${STACK_DIR}" "$1"; }

# Is pid $1 alive and running the executable named $2?
pid_is() {
	local pid="$1" name="$2" comm
	[[ "${pid}" =~ ^[0-9]+$ ]] || return 1
	[[ -r "/proc/${pid}/comm" ]] || return 1
	comm="$(cat "/proc/${pid}/comm" 2>/dev/null)" || return 1
	# comm is the executable name cut to 15 characters (kube-controller-manager).
	[[ "${comm}" == "${name:0:15}" ]] || return 1
	# A zombie is not running.
	! grep -q '^State:[[:space:]]*Z' "/proc/${pid}/status" 2>/dev/null
}

# Prints the pid recorded for component $1 if that process is still alive.
running_pid() {
	local name="$1" file pid
	file="$(pidfile "${name}")"
	[[ -f "${file}" ]] || return 1
	pid="$(cat "${file}" 2>/dev/null || true)"
	if pid_is "${pid}" "${name}"; then
		printf '%s\n' "${pid}"
		return 0
	fi
	return 1
}

# All descendants of pid $1 (children first-level and below), one per line.
descendants() {
	local parent="$1" child
	# /proc/<pid>/task/<tid>/children lists direct children; walk it.
	local -a queue=("${parent}")
	while ((${#queue[@]} > 0)); do
		local p="${queue[0]}"
		queue=("${queue[@]:1}")
		local f
		local -a kids
		for f in /proc/"${p}"/task/*/children; do
			[[ -r "${f}" ]] || continue
			read -r -a kids <"${f}" 2>/dev/null || true
			for child in "${kids[@]}"; do
				printf '%s\n' "${child}"
				queue+=("${child}")
			done
		done
	done
	return 0
}

pid_alive() { [[ -d "/proc/$1" ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# Stop pid $2 (component $1): SIGTERM, wait up to $3 seconds, then SIGKILL.
# Also makes sure every descendant it had is gone afterwards.
stop_pid() {
	local name="$1" pid="$2" grace="$3" kids waited=0 k
	kids="$(descendants "${pid}" | tr '\n' ' ')"
	log "stopping ${name} (pid ${pid})"
	kill -TERM "${pid}" 2>/dev/null || true
	while pid_alive "${pid}" && ((waited < grace * 10)); do
		sleep 0.1
		waited=$((waited + 1))
	done
	if pid_alive "${pid}"; then
		log "${name} did not exit after ${grace}s, sending SIGKILL"
		kill -KILL "${pid}" 2>/dev/null || true
	fi
	# Leftover children (e.g. the containerd that dockerd started).
	for k in ${kids}; do
		if pid_alive "${k}"; then
			kill -TERM "${k}" 2>/dev/null || true
		fi
	done
	waited=0
	while ((waited < 100)); do
		local any=0
		pid_alive "${pid}" && any=1
		for k in ${kids}; do pid_alive "${k}" && any=1; done
		((any == 0)) && break
		sleep 0.1
		waited=$((waited + 1))
	done
	for k in ${pid} ${kids}; do
		if pid_alive "${k}"; then
			kill -KILL "${k}" 2>/dev/null || true
		fi
	done
	sleep 0.1
	for k in ${pid} ${kids}; do
		pid_alive "${k}" && die "could not stop ${name} process ${k}"
	done
	return 0
}

# Start a daemon detached from this shell (own session, stdin from /dev/null,
# output appended to its log) and record its pid. Usage: start_daemon NAME CMD...
start_daemon() {
	local name="$1"
	shift
	local logf="${LOG_DIR}/${name}.log"
	printf '\n===== %s: starting %s =====\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"${logf}"
	# fd 9 is the stack lock (see lock_stack): the daemon must not inherit it.
	setsid "$@" </dev/null >>"${logf}" 2>&1 9>&- &
	local pid=$!
	printf '%s\n' "${pid}" >"$(pidfile "${name}")"
	STARTED_PID="${pid}"
}

# Is something listening on 127.0.0.1:$1?
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

require_port_free() {
	local port="$1" what="$2"
	if port_open "${port}"; then
		local who=""
		if command -v ss >/dev/null 2>&1; then
			who="$(ss -ltnpH "sport = :${port}" 2>/dev/null || true)"
		fi
		die "port ${port} (needed by ${what}) is already in use by a process this stack did not start${who:+: ${who}}. Stop it (or run 'scripts/stack.sh down' from the checkout that started it) and retry."
	fi
}

# ---------------------------------------------------------------- building

find_go() {
	local g="${GO:-}"
	if [[ -z "${g}" ]]; then
		g="$(command -v go 2>/dev/null || true)"
		[[ -n "${g}" ]] || g=/usr/local/go/bin/go
	fi
	[[ -x "${g}" ]] || die "Go toolchain not found (set GO=/path/to/go or put go on PATH); it is needed to build kube-apiserver/kubectl/etcd/jaeger"
	printf '%s\n' "${g}"
}

k8s_ldflags() {
	local flags="-s -w" pkg
	local major minor
	major="$(echo "${K8S_VERSION#v}" | cut -d. -f1)"
	minor="$(echo "${K8S_VERSION#v}" | cut -d. -f2)"
	for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		flags+=" -X ${pkg}.gitVersion=${K8S_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor} -X ${pkg}.gitTreeState=clean"
	done
	printf '%s\n' "${flags}"
}

# go build into a temp dir next to the cache dir, then rename into place, so an
# interrupted build never leaves a half-populated cache entry.
build_k8s() {
	local go="$1" tmp
	tmp="${K8S_BIN_DIR}.tmp.$$"
	rm -rf "${tmp}"
	mkdir -p "${tmp}"
	(
		cd "${K8S_MOD_DIR}"
		CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false" \
			"${go}" build -trimpath -ldflags "$(k8s_ldflags)" -o "${tmp}/" \
			k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
	)
	[[ -x "${tmp}/kube-apiserver" && -x "${tmp}/kubectl" ]] || die "kubernetes build produced no binaries in ${tmp}"
	rm -rf "${K8S_BIN_DIR}"
	mv "${tmp}" "${K8S_BIN_DIR}"
}

build_etcd() {
	local go="$1" tmp
	tmp="${ETCD_BIN_DIR}.tmp.$$"
	rm -rf "${tmp}"
	mkdir -p "${tmp}"
	(
		cd "${ETCD_MOD_DIR}"
		CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false" \
			"${go}" build -trimpath -ldflags "-s -w" -o "${tmp}/etcd" go.etcd.io/etcd/server/v3
	)
	[[ -x "${tmp}/etcd" ]] || die "etcd build produced no binary in ${tmp}"
	rm -rf "${ETCD_BIN_DIR}"
	mv "${tmp}" "${ETCD_BIN_DIR}"
}

build_jaeger() {
	local go="$1" tmp
	tmp="${JAEGER_BIN_DIR}.tmp.$$"
	rm -rf "${tmp}"
	mkdir -p "${tmp}"
	(
		cd "${JAEGER_MOD_DIR}"
		CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false" \
			"${go}" build -trimpath -ldflags "-s -w" -o "${tmp}/jaeger" github.com/jaegertracing/jaeger/cmd/jaeger
	)
	[[ -x "${tmp}/jaeger" ]] || die "jaeger build produced no binary in ${tmp}"
	rm -rf "${JAEGER_BIN_DIR}"
	mv "${tmp}" "${JAEGER_BIN_DIR}"
}

build_helm() {
	local go="$1" tmp
	tmp="${HELM_BIN_DIR}.tmp.$$"
	rm -rf "${tmp}"
	mkdir -p "${tmp}"
	(
		cd "${HELM_MOD_DIR}"
		CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false" \
			"${go}" build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
			-o "${tmp}/helm" helm.sh/helm/v3/cmd/helm
	)
	[[ -x "${tmp}/helm" ]] || die "helm build produced no binary in ${tmp}"
	rm -rf "${HELM_BIN_DIR}"
	mv "${tmp}" "${HELM_BIN_DIR}"
}

ensure_binaries() {
	local need_k8s=0 need_etcd=0 need_jaeger=0 need_helm=0
	[[ -x "${K8S_BIN_DIR}/kube-apiserver" && -x "${K8S_BIN_DIR}/kubectl" ]] || need_k8s=1
	[[ -x "${ETCD_BIN_DIR}/etcd" ]] || need_etcd=1
	skip_jaeger || [[ -x "${JAEGER_BIN_DIR}/jaeger" ]] || need_jaeger=1
	skip_helm || [[ -x "${HELM_BIN_DIR}/helm" ]] || need_helm=1
	if ((need_k8s || need_etcd || need_jaeger || need_helm)); then
		local go start k8s_pid="" etcd_pid="" jaeger_pid="" helm_pid="" failed=0
		go="$(find_go)"
		mkdir -p "${CACHE_DIR}/bin"
		start=${SECONDS}
		log "building missing binaries with $("${go}" version) (first run only; this takes several minutes)"
		if ((need_k8s)); then
			log "  kube-apiserver + kubectl ${K8S_VERSION} -> ${K8S_BIN_DIR} (log: ${LOG_DIR}/build-kubernetes.log)"
			build_k8s "${go}" >"${LOG_DIR}/build-kubernetes.log" 2>&1 &
			k8s_pid=$!
		fi
		if ((need_etcd)); then
			log "  etcd ${ETCD_VERSION} -> ${ETCD_BIN_DIR} (log: ${LOG_DIR}/build-etcd.log)"
			build_etcd "${go}" >"${LOG_DIR}/build-etcd.log" 2>&1 &
			etcd_pid=$!
		fi
		if ((need_jaeger)); then
			log "  jaeger ${JAEGER_VERSION} -> ${JAEGER_BIN_DIR} (log: ${LOG_DIR}/build-jaeger.log)"
			build_jaeger "${go}" >"${LOG_DIR}/build-jaeger.log" 2>&1 &
			jaeger_pid=$!
		fi
		if ((need_helm)); then
			log "  helm ${HELM_VERSION} -> ${HELM_BIN_DIR} (log: ${LOG_DIR}/build-helm.log)"
			build_helm "${go}" >"${LOG_DIR}/build-helm.log" 2>&1 &
			helm_pid=$!
		fi
		if [[ -n "${k8s_pid}" ]] && ! wait "${k8s_pid}"; then
			show_log_tail "${LOG_DIR}/build-kubernetes.log" 60
			log "building kube-apiserver/kubectl ${K8S_VERSION} FAILED (full log: ${LOG_DIR}/build-kubernetes.log)"
			failed=1
		fi
		if [[ -n "${etcd_pid}" ]] && ! wait "${etcd_pid}"; then
			show_log_tail "${LOG_DIR}/build-etcd.log" 60
			log "building etcd ${ETCD_VERSION} FAILED (full log: ${LOG_DIR}/build-etcd.log)"
			failed=1
		fi
		if [[ -n "${jaeger_pid}" ]] && ! wait "${jaeger_pid}"; then
			show_log_tail "${LOG_DIR}/build-jaeger.log" 60
			log "building jaeger ${JAEGER_VERSION} FAILED (full log: ${LOG_DIR}/build-jaeger.log)"
			failed=1
		fi
		if [[ -n "${helm_pid}" ]] && ! wait "${helm_pid}"; then
			show_log_tail "${LOG_DIR}/build-helm.log" 60
			log "building helm ${HELM_VERSION} FAILED (full log: ${LOG_DIR}/build-helm.log)"
			failed=1
		fi
		((failed == 0)) || die "binary build failed"
		log "built in $((SECONDS - start))s"
	fi
	mkdir -p "${STACK_BIN}"
	ln -sfn "${K8S_BIN_DIR}/kube-apiserver" "${STACK_BIN}/kube-apiserver"
	ln -sfn "${K8S_BIN_DIR}/kubectl" "${STACK_BIN}/kubectl"
	ln -sfn "${ETCD_BIN_DIR}/etcd" "${STACK_BIN}/etcd"
	# With WRO_SKIP_JAEGER=1 jaeger is not built, but a cached one is still linked.
	if [[ -x "${JAEGER_BIN_DIR}/jaeger" ]]; then
		ln -sfn "${JAEGER_BIN_DIR}/jaeger" "${STACK_BIN}/jaeger"
	fi
	link_helm
}

# With WRO_SKIP_HELM=1 helm is not built, but a cached one is still linked.
link_helm() {
	if [[ -x "${HELM_BIN_DIR}/helm" ]]; then
		mkdir -p "${STACK_BIN}"
		ln -sfn "${HELM_BIN_DIR}/helm" "${STACK_BIN}/helm"
	fi
}

# prometheus and promtool from Debian's package, unpacked into the binary cache once; prints
# the directory. Needs no running stack (scripts/test-alerts.sh).
cmd_prometheus() {
	if [[ ! -x "${PROMETHEUS_BIN_DIR}/prometheus" || ! -x "${PROMETHEUS_BIN_DIR}/promtool" ]]; then
		command -v apt-get >/dev/null 2>&1 || die "apt-get is needed to fetch Debian's prometheus package"
		local tmp
		tmp="$(mktemp -d)"
		mkdir -p "${LOG_DIR}"
		log "fetching Debian's prometheus ${PROMETHEUS_DEB_VERSION} -> ${PROMETHEUS_BIN_DIR} (first run only)"
		if ! (cd "${tmp}" && apt-get download "prometheus=${PROMETHEUS_DEB_VERSION}") >"${LOG_DIR}/apt-prometheus.log" 2>&1; then
			# The archive keeps only the current revision: take it, and say so.
			log "prometheus=${PROMETHEUS_DEB_VERSION} is not served any more; taking the current revision"
			(cd "${tmp}" && apt-get update && apt-get download prometheus) >>"${LOG_DIR}/apt-prometheus.log" 2>&1 ||
				die "apt-get download prometheus failed (log: ${LOG_DIR}/apt-prometheus.log)"
		fi
		dpkg-deb -x "${tmp}"/prometheus_*.deb "${tmp}/x" || die "cannot unpack the prometheus package"
		mkdir -p "${PROMETHEUS_BIN_DIR}"
		install -m 0755 "${tmp}/x/usr/bin/prometheus" "${tmp}/x/usr/bin/promtool" "${PROMETHEUS_BIN_DIR}/"
		rm -rf "${tmp}"
	fi
	printf '%s\n' "${PROMETHEUS_BIN_DIR}"
}

# helm alone, on demand (scripts/test-chart.sh): needs no running stack.
cmd_helm() {
	if [[ ! -x "${HELM_BIN_DIR}/helm" ]]; then
		local go start
		go="$(find_go)"
		mkdir -p "${CACHE_DIR}/bin" "${LOG_DIR}"
		start=${SECONDS}
		log "building helm ${HELM_VERSION} with $("${go}" version) -> ${HELM_BIN_DIR} (first run only; log: ${LOG_DIR}/build-helm.log)"
		if ! (build_helm "${go}") >"${LOG_DIR}/build-helm.log" 2>&1; then
			show_log_tail "${LOG_DIR}/build-helm.log" 60
			die "building helm ${HELM_VERSION} FAILED (full log: ${LOG_DIR}/build-helm.log)"
		fi
		log "built helm in $((SECONDS - start))s"
	fi
	link_helm
	printf '%s\n' "${HELM_BIN_DIR}/helm"
}

# ---------------------------------------------------------------- certificates

# Sign a CSR with the stack CA. Usage: sign NAME EXTFILE
sign_with_ca() {
	local name="$1" ext="$2"
	openssl x509 -req -in "${PKI_DIR}/${name}.csr" -CA "${PKI_DIR}/ca.crt" -CAkey "${PKI_DIR}/ca.key" \
		-CAcreateserial -days 3650 -sha256 -extfile "${ext}" -out "${PKI_DIR}/${name}.crt" 2>/dev/null
}

ensure_pki() {
	# v2: the serving certificate names the pod gateway too (an older one is made again).
	local marker="${PKI_DIR}/.complete-v2"
	if [[ -f "${marker}" ]]; then
		return 0
	fi
	command -v openssl >/dev/null 2>&1 || die "openssl is required to generate the stack certificates"
	log "generating certificates in ${PKI_DIR}"
	rm -rf "${PKI_DIR}"
	mkdir -p "${PKI_DIR}"
	chmod 700 "${PKI_DIR}"
	(
		set -euo pipefail
		cd "${PKI_DIR}"
		umask 077
		# CA
		openssl genrsa -out ca.key 2048 2>/dev/null
		openssl req -new -key ca.key -subj "/CN=worker-recovery-operator-local-ca" -out ca.csr
		cat >ca.ext <<-'EOF'
			basicConstraints = critical, CA:TRUE
			keyUsage = critical, keyCertSign, cRLSign, digitalSignature
			subjectKeyIdentifier = hash
		EOF
		openssl x509 -req -in ca.csr -signkey ca.key -days 3650 -sha256 -extfile ca.ext -out ca.crt 2>/dev/null
		# kube-apiserver serving certificate
		openssl genrsa -out apiserver.key 2048 2>/dev/null
		openssl req -new -key apiserver.key -subj "/CN=kube-apiserver" -out apiserver.csr
		cat >apiserver.ext <<-EOF
			basicConstraints = critical, CA:FALSE
			keyUsage = critical, digitalSignature, keyEncipherment
			extendedKeyUsage = serverAuth
			authorityKeyIdentifier = keyid
			subjectAltName = IP:127.0.0.1, DNS:localhost, IP:${SERVICE_FIRST_IP}, IP:${POD_GATEWAY_IP}, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
		EOF
		sign_with_ca apiserver apiserver.ext
		# admin client certificate (cluster-admin through system:masters)
		openssl genrsa -out admin.key 2048 2>/dev/null
		openssl req -new -key admin.key -subj "/O=system:masters/CN=admin" -out admin.csr
		cat >client.ext <<-'EOF'
			basicConstraints = critical, CA:FALSE
			keyUsage = critical, digitalSignature, keyEncipherment
			extendedKeyUsage = clientAuth
			authorityKeyIdentifier = keyid
		EOF
		sign_with_ca admin client.ext
		# service-account token signing key pair
		openssl genrsa -out sa.key 2048 2>/dev/null
		openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
		rm -f ./*.csr
		openssl verify -CAfile ca.crt apiserver.crt admin.crt >/dev/null
	) || die "certificate generation with openssl failed"
	chmod 644 "${PKI_DIR}"/*.crt "${PKI_DIR}/sa.pub"
	touch "${marker}"
	rm -f "${KUBECONFIG_PATH}"
}

b64() { base64 -w0 <"$1"; }

ensure_kubeconfig() {
	if [[ -s "${KUBECONFIG_PATH}" ]]; then
		return 0
	fi
	local tmp="${KUBECONFIG_PATH}.tmp.$$"
	(
		umask 077
		cat >"${tmp}" <<-EOF
			apiVersion: v1
			kind: Config
			clusters:
			- name: wro-local
			  cluster:
			    server: ${APISERVER_URL}
			    certificate-authority-data: $(b64 "${PKI_DIR}/ca.crt")
			users:
			- name: wro-admin
			  user:
			    client-certificate-data: $(b64 "${PKI_DIR}/admin.crt")
			    client-key-data: $(b64 "${PKI_DIR}/admin.key")
			contexts:
			- name: wro-local
			  context:
			    cluster: wro-local
			    user: wro-admin
			    namespace: default
			current-context: wro-local
			preferences: {}
		EOF
	)
	mv "${tmp}" "${KUBECONFIG_PATH}"
}

# ---------------------------------------------------------------- etcd

etcd_healthy() {
	local out
	out="$(curl -fsS --max-time 3 "${ETCD_URL}/health" 2>/dev/null)" || return 1
	[[ "${out}" == *'"health":"true"'* ]]
}

ensure_etcd() {
	local pid
	if pid="$(running_pid etcd)"; then
		if etcd_healthy; then
			return 0
		fi
		log "etcd (pid ${pid}) is running but not healthy yet; waiting"
	else
		require_port_free "${ETCD_CLIENT_PORT}" etcd
		require_port_free "${ETCD_PEER_PORT}" etcd
		mkdir -p "${ETCD_DATA_DIR}"
		chmod 700 "${ETCD_DATA_DIR}"
		log "starting etcd ${ETCD_VERSION} on ${ETCD_URL}"
		start_daemon etcd "${STACK_BIN}/etcd" \
			--name=wro-etcd \
			--data-dir="${ETCD_DATA_DIR}" \
			--listen-client-urls="${ETCD_URL}" \
			--advertise-client-urls="${ETCD_URL}" \
			--listen-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
			--initial-advertise-peer-urls="http://127.0.0.1:${ETCD_PEER_PORT}" \
			--initial-cluster="wro-etcd=http://127.0.0.1:${ETCD_PEER_PORT}" \
			--initial-cluster-state=new \
			--quota-backend-bytes=$((2 * 1024 * 1024 * 1024)) \
			--log-level=warn
		pid="${STARTED_PID}"
	fi
	wait_for_daemon etcd "${pid}" etcd_healthy "become healthy at ${ETCD_URL}/health"
	log "etcd ready (pid ${pid})"
}

# ---------------------------------------------------------------- jaeger

# Healthy per the health-check extension, and the query API answers.
# Wait until CHECK (a function) succeeds for the daemon NAME started as PID; fail with its log's
# tail when it exits first or does not WHAT (e.g. "become healthy at URL") within TIMEOUT.
wait_for_daemon() {
	local name="$1" pid="$2" check="$3" what="$4"
	local log_file="${LOG_DIR}/${name}.log"
	local deadline=$((SECONDS + TIMEOUT))
	until "${check}"; do
		if ! pid_alive "${pid}"; then
			show_log_tail "${log_file}"
			die "${name} exited during startup (log: ${log_file})"
		fi
		if ((SECONDS >= deadline)); then
			show_log_tail "${log_file}"
			die "${name} did not ${what} within ${TIMEOUT}s (log: ${log_file})"
		fi
		sleep 0.2
	done
}

prometheus_ready() { curl -fsS --max-time 3 -o /dev/null "${PROMETHEUS_URL}/-/ready" 2>/dev/null; }

write_prometheus_config() {
	mkdir -p "${PROMETHEUS_TARGETS_DIR}" "${PROMETHEUS_DIR}/data"
	cat >"${PROMETHEUS_DIR}/prometheus.yml" <<-EOF
		# Generated by scripts/stack.sh.
		global:
		  scrape_interval: 2s
		  scrape_timeout: 1s
		  evaluation_interval: 2s
		rule_files:
		  - ${PROMETHEUS_RULES}
		scrape_configs:
		  - job_name: worker-recovery-operator
		    file_sd_configs:
		      - files: ["${PROMETHEUS_TARGETS_DIR}/*.json"]
		        refresh_interval: 2s
	EOF
}

ensure_prometheus() {
	local pid bin
	if pid="$(running_pid prometheus)"; then
		prometheus_ready && return 0
		log "prometheus (pid ${pid}) is running but not ready yet; waiting"
	else
		require_port_free "${PROMETHEUS_PORT}" prometheus
		bin="$(cmd_prometheus)"
		ln -sfn "${bin}/prometheus" "${STACK_BIN}/prometheus"
		ln -sfn "${bin}/promtool" "${STACK_BIN}/promtool"
		write_prometheus_config
		log "starting prometheus (Debian ${PROMETHEUS_DEB_VERSION}) on ${PROMETHEUS_URL}"
		start_daemon prometheus "${STACK_BIN}/prometheus" \
			--config.file="${PROMETHEUS_DIR}/prometheus.yml" \
			--storage.tsdb.path="${PROMETHEUS_DIR}/data" \
			--storage.tsdb.retention.time=1d \
			--web.listen-address="127.0.0.1:${PROMETHEUS_PORT}" \
			--web.enable-lifecycle
		pid="${STARTED_PID}"
	fi
	wait_for_daemon prometheus "${pid}" prometheus_ready "become ready at ${PROMETHEUS_URL}/-/ready"
}

jaeger_healthy() {
	local out
	out="$(curl -fsS --max-time 3 "${JAEGER_HEALTH_URL}" 2>/dev/null)" || return 1
	[[ "${out}" == *'"healthy":true'* ]] || return 1
	curl -fsS --max-time 3 -o /dev/null "${JAEGER_QUERY_URL}/api/services" 2>/dev/null
}

ensure_jaeger() {
	if skip_jaeger; then
		log "jaeger: skipped (WRO_SKIP_JAEGER=1)"
		return 0
	fi
	local pid
	if pid="$(running_pid jaeger)"; then
		if jaeger_healthy; then
			return 0
		fi
		log "jaeger (pid ${pid}) is running but not healthy yet; waiting"
	else
		require_port_free "${JAEGER_OTLP_HTTP_PORT}" jaeger
		require_port_free "${JAEGER_QUERY_PORT}" jaeger
		require_port_free "${JAEGER_QUERY_GRPC_PORT}" jaeger
		require_port_free "${JAEGER_HEALTH_PORT}" jaeger
		log "starting jaeger ${JAEGER_VERSION}: OTLP/HTTP ${JAEGER_OTLP_URL}, query ${JAEGER_QUERY_URL}"
		start_daemon jaeger "${STACK_BIN}/jaeger" --config "file:${JAEGER_CONFIG}"
		pid="${STARTED_PID}"
	fi
	wait_for_daemon jaeger "${pid}" jaeger_healthy \
		"become healthy at ${JAEGER_HEALTH_URL} (and ${JAEGER_QUERY_URL}/api/services)"
	log "jaeger ready (pid ${pid})"
}

# ---------------------------------------------------------------- kube-apiserver

apiserver_get() {
	curl -fsS --max-time 5 --cacert "${PKI_DIR}/ca.crt" --cert "${PKI_DIR}/admin.crt" --key "${PKI_DIR}/admin.key" \
		"${APISERVER_URL}$1" 2>/dev/null
}

apiserver_ready() {
	local out
	out="$(apiserver_get /readyz)" || return 1
	[[ "${out}" == "ok" ]]
}

ensure_apiserver() {
	local pid
	if pid="$(running_pid kube-apiserver)"; then
		if cluster_wanted && grep -q -- '--disable-admission-plugins=ServiceAccount' "/proc/${pid}/cmdline" 2>/dev/null; then
			log "note: the running kube-apiserver was started without --cluster (ServiceAccount admission off: pods get no token; kubectl logs/exec cannot reach the kubelet); 'down' and 'up --cluster' to change that"
		fi
		if apiserver_ready; then
			return 0
		fi
		log "kube-apiserver (pid ${pid}) is running but not ready yet; waiting"
	else
		require_port_free "${APISERVER_PORT}" kube-apiserver
		log "starting kube-apiserver ${K8S_VERSION} on ${APISERVER_URL}"
		local -a extra=()
		# Without a controller-manager nothing creates the "default" service
		# accounts, so the ServiceAccount admission plugin would reject every pod;
		# a cluster (--cluster) has one, and its pods need their tokens mounted.
		local sa_admission=--disable-admission-plugins=ServiceAccount
		# Loopback only, unless pods must reach it: the pod gateway's address exists only once
		# the CNI bridge does (after the API server started), so a cluster binds all addresses.
		# Every request still needs a client certificate or a token (RBAC).
		local bind=127.0.0.1
		if cluster_wanted; then
			sa_admission=--enable-admission-plugins=ServiceAccount
			bind=0.0.0.0
			extra+=(--anonymous-auth=false)
			# kubectl logs/exec: the API server calls the kubelet at the node's
			# InternalIP (the node name does not resolve) with the admin certificate.
			extra+=(--kubelet-client-certificate="${PKI_DIR}/admin.crt" --kubelet-client-key="${PKI_DIR}/admin.key"
				--kubelet-preferred-address-types=InternalIP,Hostname)
		fi
		if [[ -n "${WRO_APISERVER_EXTRA_ARGS:-}" ]]; then
			local -a user_extra
			read -r -a user_extra <<<"${WRO_APISERVER_EXTRA_ARGS}"
			extra+=("${user_extra[@]}")
		fi
		mkdir -p "${STACK_DIR}/apiserver-certs"
		start_daemon kube-apiserver "${STACK_BIN}/kube-apiserver" \
			--etcd-servers="${ETCD_URL}" \
			--bind-address="${bind}" \
			--advertise-address=127.0.0.1 \
			--secure-port="${APISERVER_PORT}" \
			--cert-dir="${STACK_DIR}/apiserver-certs" \
			--tls-cert-file="${PKI_DIR}/apiserver.crt" \
			--tls-private-key-file="${PKI_DIR}/apiserver.key" \
			--client-ca-file="${PKI_DIR}/ca.crt" \
			--authorization-mode=RBAC \
			--service-account-issuer=https://kubernetes.default.svc.cluster.local \
			--service-account-key-file="${PKI_DIR}/sa.pub" \
			--service-account-signing-key-file="${PKI_DIR}/sa.key" \
			--service-cluster-ip-range="${SERVICE_CIDR}" \
			"${sa_admission}" \
			--allow-privileged=true \
			--profiling=false \
			--v=1 \
			"${extra[@]}"
		pid="${STARTED_PID}"
	fi
	local deadline=$((SECONDS + TIMEOUT))
	until apiserver_ready; do
		if ! pid_alive "${pid}"; then
			show_log_tail "${LOG_DIR}/kube-apiserver.log"
			die "kube-apiserver exited during startup (log: ${LOG_DIR}/kube-apiserver.log)"
		fi
		if ((SECONDS >= deadline)); then
			show_log_tail "${LOG_DIR}/kube-apiserver.log"
			log "last /readyz answer:"
			curl -sS --max-time 5 --cacert "${PKI_DIR}/ca.crt" --cert "${PKI_DIR}/admin.crt" --key "${PKI_DIR}/admin.key" \
				"${APISERVER_URL}/readyz?verbose" >&2 || true
			die "kube-apiserver did not become ready at ${APISERVER_URL}/readyz within ${TIMEOUT}s (log: ${LOG_DIR}/kube-apiserver.log)"
		fi
		sleep 0.3
	done
	log "kube-apiserver ready (pid ${pid})"
}

# ---------------------------------------------------------------- docker

docker_server_version() {
	command -v docker >/dev/null 2>&1 || return 1
	timeout 10 docker version --format '{{.Server.Version}}' 2>/dev/null
}

install_docker() {
	[[ "$(id -u)" == 0 ]] || die "dockerd is not installed and this is not root: install Debian's docker.io (apt-get install docker.io) and retry"
	command -v apt-get >/dev/null 2>&1 || die "dockerd is not installed and apt-get is not available to install docker.io"
	log "installing docker.io and busybox-static with apt (log: ${LOG_DIR}/apt.log)"
	{
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update &&
			DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
				docker.io busybox-static
	} >"${LOG_DIR}/apt.log" 2>&1 || {
		show_log_tail "${LOG_DIR}/apt.log"
		die "apt-get install docker.io busybox-static failed (log: ${LOG_DIR}/apt.log)"
	}
	command -v dockerd >/dev/null 2>&1 || die "docker.io was installed but dockerd is still not on PATH"
}

ensure_docker() {
	if [[ "${WRO_SKIP_DOCKER:-0}" == 1 ]]; then
		log "docker: skipped (WRO_SKIP_DOCKER=1)"
		return 0
	fi
	local pid v
	if v="$(docker_server_version)" && [[ -n "${v}" ]]; then
		if pid="$(running_pid dockerd)"; then
			log "docker engine ${v} ready (started by this stack, pid ${pid})"
		else
			rm -f "$(pidfile dockerd)"
			log "docker engine ${v} already running (not started by this stack; 'down' leaves it alone)"
		fi
		return 0
	fi
	if pid="$(running_pid dockerd)"; then
		log "dockerd (pid ${pid}) is running but not answering yet; waiting"
	else
		command -v dockerd >/dev/null 2>&1 || install_docker
		command -v docker >/dev/null 2>&1 || die "the docker client is not on PATH"
		[[ "$(id -u)" == 0 ]] || die "no Docker engine answers and starting dockerd needs root"
		local -a dargs=(--iptables=false --bridge=none)
		local d_pidfile=/var/run/docker.pid d_execroot=/var/run/docker
		case "${DOCKER_HOST:-}" in
		"" | unix:///var/run/docker.sock | unix:///run/docker.sock) ;;
		unix://*)
			# A private engine on a non-default socket, with its own state
			# under .stack/docker/ so it cannot clash with a system engine.
			mkdir -p "${STACK_DIR}/docker"
			d_pidfile="${STACK_DIR}/docker/dockerd.pid"
			d_execroot="${STACK_DIR}/docker/exec"
			dargs+=(--host="${DOCKER_HOST}" --data-root="${STACK_DIR}/docker/data"
				--exec-root="${d_execroot}" --pidfile="${d_pidfile}")
			;;
		*) die "no Docker engine answers at DOCKER_HOST=${DOCKER_HOST}, and the stack can only start one on a unix:// socket" ;;
		esac
		# Pid files left by an engine that was killed (e.g. at the end of a
		# previous session): dockerd refuses to start, or signals the wrong
		# process, if such a pid now belongs to something else.
		local f comm
		for f in "dockerd:${d_pidfile}" "containerd:${d_execroot}/containerd/containerd.pid"; do
			comm="${f%%:*}"
			f="${f#*:}"
			if [[ -f "${f}" ]] && ! pid_is "$(cat "${f}" 2>/dev/null || true)" "${comm}"; then
				log "removing stale ${f}"
				rm -f "${f}"
			fi
		done
		log "starting dockerd ${dargs[*]}"
		start_daemon dockerd dockerd "${dargs[@]}"
		pid="${STARTED_PID}"
	fi
	local deadline=$((SECONDS + TIMEOUT))
	until v="$(docker_server_version)" && [[ -n "${v}" ]]; do
		if ! pid_alive "${pid}"; then
			show_log_tail "${LOG_DIR}/dockerd.log"
			rm -f "$(pidfile dockerd)"
			die "dockerd exited during startup (log: ${LOG_DIR}/dockerd.log)"
		fi
		if ((SECONDS >= deadline)); then
			show_log_tail "${LOG_DIR}/dockerd.log"
			die "dockerd did not answer 'docker version' within ${TIMEOUT}s (log: ${LOG_DIR}/dockerd.log)"
		fi
		sleep 0.3
	done
	log "docker engine ${v} ready (pid ${pid})"
}

# ---------------------------------------------------------------- cluster (opt-in: up --cluster)
#
# A one-node cluster on top of etcd + kube-apiserver: a private containerd
# (its own config, socket, root and state under .stack/containerd/, separate
# from the containerd that dockerd runs), kubelet, kube-scheduler and
# kube-controller-manager. Images cannot be pulled: the pod sandbox ("pause")
# image is built locally (hack/pause) and imported, and `load-image` imports
# any other image from the Docker engine.

cluster_wanted() { [[ "${WRO_CLUSTER:-0}" == 1 ]]; }

build_k8s_node() {
	local go="$1" tmp
	tmp="${K8S_BIN_DIR}.node.tmp.$$"
	rm -rf "${tmp}"
	mkdir -p "${tmp}"
	(
		cd "${K8S_MOD_DIR}"
		CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false" \
			"${go}" build -trimpath -ldflags "$(k8s_ldflags)" -o "${tmp}/" \
			k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-controller-manager
	)
	local b
	for b in "${K8S_NODE_BINS[@]}"; do
		[[ -x "${tmp}/${b}" ]] || die "kubernetes node build produced no ${b} in ${tmp}"
	done
	# Same versioned cache dir as kube-apiserver/kubectl (built first by ensure_binaries).
	mkdir -p "${K8S_BIN_DIR}"
	for b in "${K8S_NODE_BINS[@]}"; do
		mv -f "${tmp}/${b}" "${K8S_BIN_DIR}/${b}"
	done
	rm -rf "${tmp}"
}

build_pause() {
	local go="$1" tmp
	tmp="${PAUSE_BIN_DIR}.tmp.$$"
	rm -rf "${tmp}"
	mkdir -p "${tmp}"
	(
		cd "${PAUSE_MOD_DIR}"
		CGO_ENABLED=0 GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false" \
			"${go}" build -trimpath -ldflags "-s -w" -o "${tmp}/pause" .
	)
	[[ -x "${tmp}/pause" ]] || die "pause build produced no binary in ${tmp}"
	rm -rf "${PAUSE_BIN_DIR}"
	mv "${tmp}" "${PAUSE_BIN_DIR}"
}

ensure_node_binaries() {
	local b need=0
	for b in "${K8S_NODE_BINS[@]}"; do
		[[ -x "${K8S_BIN_DIR}/${b}" ]] || need=1
	done
	if ((need)); then
		local go start
		go="$(find_go)"
		start=${SECONDS}
		log "building kubelet, kube-scheduler, kube-controller-manager ${K8S_VERSION} -> ${K8S_BIN_DIR} (first --cluster run only; log: ${LOG_DIR}/build-kubernetes-node.log)"
		if ! build_k8s_node "${go}" >"${LOG_DIR}/build-kubernetes-node.log" 2>&1; then
			show_log_tail "${LOG_DIR}/build-kubernetes-node.log" 60
			die "building the kubernetes node binaries FAILED (full log: ${LOG_DIR}/build-kubernetes-node.log)"
		fi
		log "built in $((SECONDS - start))s"
	fi
	if [[ ! -x "${PAUSE_BIN_DIR}/pause" ]]; then
		log "building the pause binary (hack/pause) -> ${PAUSE_BIN_DIR}"
		build_pause "$(find_go)" >"${LOG_DIR}/build-pause.log" 2>&1 || {
			show_log_tail "${LOG_DIR}/build-pause.log"
			die "building pause FAILED (log: ${LOG_DIR}/build-pause.log)"
		}
	fi
	for b in "${K8S_NODE_BINS[@]}"; do
		ln -sfn "${K8S_BIN_DIR}/${b}" "${STACK_BIN}/${b}"
	done
}

ctr_k8s() { ctr --address "${CTRD_SOCK}" --namespace k8s.io "$@"; }

containerd_ready() { [[ -S "${CTRD_SOCK}" ]] && timeout 10 ctr --address "${CTRD_SOCK}" version >/dev/null 2>&1; }

write_containerd_config() {
	mkdir -p "${CTRD_DIR}" "${CNI_CONF_DIR}"
	# Only host-network pods are meant to run; the CRI plugin still reports
	# NetworkReady=false (and the node stays NotReady) without a CNI config,
	# so give it a bridge + host-local one (Debian's containernetworking-plugins).
	cat >"${CNI_CONF_DIR}/10-wro-bridge.conflist" <<-EOF
		{
		  "cniVersion": "0.4.0",
		  "name": "wro-pods",
		  "plugins": [
		    {
		      "type": "bridge",
		      "bridge": "wro-cni0",
		      "isGateway": true,
		      "ipMasq": false,
		      "ipam": {"type": "host-local", "ranges": [[{"subnet": "${POD_CIDR}"}]], "dataDir": "${STACK_DIR}/cni/ipam"}
		    },
		    {"type": "portmap", "capabilities": {"portMappings": true}}
		  ]
		}
	EOF
	cat >"${CTRD_CONFIG}" <<-EOF
		# Generated by scripts/stack.sh: the cluster's containerd, not dockerd's.
		version = 2
		root = "${CTRD_DIR}/root"
		state = "${CTRD_DIR}/state"
		[grpc]
		  address = "${CTRD_SOCK}"
		[ttrpc]
		  address = ""
		[debug]
		  address = ""
		[metrics]
		  address = ""
		[plugins."io.containerd.internal.v1.opt"]
		  path = "${CTRD_DIR}/opt"
		[plugins."io.containerd.grpc.v1.cri"]
		  sandbox_image = "${PAUSE_IMAGE}"
		  stream_server_address = "127.0.0.1"
		  stream_server_port = "0"
		  enable_selinux = false
		  disable_apparmor = true
		  # Lowering oom_score_adj fails here (EIO): clamp the pods' values to containerd's own.
		  restrict_oom_score_adj = true
		  [plugins."io.containerd.grpc.v1.cri".containerd]
		    snapshotter = "overlayfs"
		    default_runtime_name = "runc"
		    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
		      runtime_type = "io.containerd.runc.v2"
		      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
		        SystemdCgroup = false
		        Root = "${CTRD_DIR}/runc"
		  [plugins."io.containerd.grpc.v1.cri".cni]
		    bin_dir = "${CNI_BIN_DIR}"
		    conf_dir = "${CNI_CONF_DIR}"
	EOF
}

ensure_cluster_packages() {
	command -v containerd >/dev/null 2>&1 && command -v ctr >/dev/null 2>&1 && command -v runc >/dev/null 2>&1 &&
		[[ -x "${CNI_BIN_DIR}/bridge" && -x "${CNI_BIN_DIR}/host-local" ]] && return 0
	[[ "$(id -u)" == 0 ]] || die "--cluster needs containerd, runc and containernetworking-plugins (Debian packages) and root"
	log "installing containerd, runc and containernetworking-plugins with apt (log: ${LOG_DIR}/apt-cluster.log)"
	{
		DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update &&
			DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y \
				containerd runc containernetworking-plugins
	} >"${LOG_DIR}/apt-cluster.log" 2>&1 || {
		show_log_tail "${LOG_DIR}/apt-cluster.log"
		die "apt-get install containerd runc containernetworking-plugins failed (log: ${LOG_DIR}/apt-cluster.log)"
	}
}

ensure_containerd() {
	local pid
	if pid="$(running_pid containerd)" && containerd_ready; then
		return 0
	fi
	if [[ -z "${pid:-}" ]]; then
		[[ "$(id -u)" == 0 ]] || die "--cluster runs containerd and kubelet as root"
		write_containerd_config
		log "starting containerd (socket ${CTRD_SOCK}, config ${CTRD_CONFIG})"
		start_daemon containerd containerd --config "${CTRD_CONFIG}"
		pid="${STARTED_PID}"
	fi
	wait_for_daemon containerd "${pid}" containerd_ready "answer on ${CTRD_SOCK}"
	log "containerd ready (pid ${pid})"
}

# docker save IMAGE | ctr import, into the cluster containerd's k8s.io namespace.
load_image() {
	local image="$1"
	containerd_ready || die "the cluster containerd does not answer on ${CTRD_SOCK}: run 'scripts/stack.sh up --cluster' first"
	docker image inspect "${image}" >/dev/null 2>&1 || die "image ${image} is not in the Docker engine"
	log "loading ${image} into the cluster containerd"
	docker save "${image}" | ctr_k8s images import - >>"${LOG_DIR}/load-image.log" 2>&1 ||
		die "importing ${image} failed (log: ${LOG_DIR}/load-image.log)"
}

ensure_pause_image() {
	if ctr_k8s images ls -q 2>/dev/null | grep -qxF "${PAUSE_IMAGE}"; then
		return 0
	fi
	if ! docker image inspect "${PAUSE_IMAGE}" >/dev/null 2>&1; then
		local ctx
		ctx="$(mktemp -d)"
		cp "${PAUSE_MOD_DIR}/Dockerfile" "${PAUSE_BIN_DIR}/pause" "${ctx}/"
		log "building the sandbox image ${PAUSE_IMAGE}"
		docker build -q -t "${PAUSE_IMAGE}" "${ctx}" >>"${LOG_DIR}/build-pause.log" 2>&1 || {
			rm -rf "${ctx}"
			die "docker build of ${PAUSE_IMAGE} failed (log: ${LOG_DIR}/build-pause.log)"
		}
		rm -rf "${ctx}"
	fi
	load_image "${PAUSE_IMAGE}"
}

write_kubelet_config() {
	mkdir -p "${KUBELET_DIR}/manifests" "${KUBELET_DIR}/pod-logs" "${KUBELET_DIR}/pki"
	cat >"${KUBELET_DIR}/config.yaml" <<-EOF
		# Generated by scripts/stack.sh.
		apiVersion: kubelet.config.k8s.io/v1beta1
		kind: KubeletConfiguration
		# The API server reaches the kubelet (logs, exec) at the node's InternalIP, which
		# cannot be loopback, so the kubelet API listens on all addresses; it accepts
		# only client certificates of the stack CA (the API server presents admin.crt)
		# and asks the API server whether they may (Webhook).
		address: 0.0.0.0
		port: ${KUBELET_PORT}
		readOnlyPort: 0
		healthzBindAddress: 127.0.0.1
		healthzPort: ${KUBELET_HEALTHZ_PORT}
		authentication:
		  anonymous:
		    enabled: false
		  webhook:
		    enabled: true
		  x509:
		    clientCAFile: ${PKI_DIR}/ca.crt
		authorization:
		  mode: Webhook
		containerRuntimeEndpoint: unix://${CTRD_SOCK}
		cgroupDriver: cgroupfs
		# 1.35 refuses cgroup v1 unless told otherwise; this host has v1 (plus a unified mount).
		failCgroupV1: false
		failSwapOn: false
		staticPodPath: ${KUBELET_DIR}/manifests
		podLogsDir: ${KUBELET_DIR}/pod-logs
		clusterDomain: cluster.local
		resolvConf: /etc/resolv.conf
		# A busy dev box must not evict pods or garbage-collect the local-only images.
		evictionHard:
		  memory.available: "50Mi"
		  nodefs.available: "1%"
		  nodefs.inodesFree: "1%"
		  imagefs.available: "1%"
		imageGCHighThresholdPercent: 100
		imageGCLowThresholdPercent: 99
		serializeImagePulls: false
		# The kubelet cannot lower its own oom_score_adj here either (default -999).
		oomScoreAdj: 0
	EOF
}

kubelet_healthy() { [[ "$(curl -fsS --max-time 3 "http://127.0.0.1:${KUBELET_HEALTHZ_PORT}/healthz" 2>/dev/null)" == ok ]]; }

node_ready() {
	local s
	s="$("${STACK_BIN}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" get node "${NODE_NAME}" --request-timeout=10s \
		-o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" || return 1
	[[ "${s}" == True ]]
}

# The kubelet sets vm.overcommit_memory=1, kernel.panic=10 and
# kernel.panic_on_oops=1 (machine-wide); remember the values it found so that
# down puts them back.
KERNEL_TUNABLES=(vm/overcommit_memory kernel/panic kernel/panic_on_oops)

save_kernel_tunables() {
	local f="${KUBELET_DIR}/sysctl.orig" t
	[[ -s "${f}" ]] && return 0
	mkdir -p "${KUBELET_DIR}"
	for t in "${KERNEL_TUNABLES[@]}"; do
		printf '%s %s\n' "${t}" "$(cat "/proc/sys/${t}")"
	done >"${f}"
}

restore_kernel_tunables() {
	local f="${KUBELET_DIR}/sysctl.orig" t v
	[[ -s "${f}" ]] || return 0
	while read -r t v; do
		[[ " ${KERNEL_TUNABLES[*]} " == *" ${t} "* ]] || continue
		printf '%s\n' "${v}" >"/proc/sys/${t}" 2>/dev/null || log "could not restore /proc/sys/${t} to ${v}"
	done <"${f}"
	rm -f "${f}"
}

ensure_kubelet() {
	local pid
	if ! pid="$(running_pid kubelet)"; then
		require_port_free "${KUBELET_PORT}" kubelet
		require_port_free "${KUBELET_HEALTHZ_PORT}" "kubelet healthz"
		write_kubelet_config
		save_kernel_tunables
		log "starting kubelet ${K8S_VERSION} as node ${NODE_NAME}"
		# The admin kubeconfig: the API server authorizes with RBAC only (no Node
		# authorizer), where the system:nodes group has no bindings.
		start_daemon kubelet "${STACK_BIN}/kubelet" \
			--config="${KUBELET_DIR}/config.yaml" \
			--kubeconfig="${KUBECONFIG_PATH}" \
			--root-dir="${KUBELET_DIR}/root" \
			--cert-dir="${KUBELET_DIR}/pki" \
			--hostname-override="${NODE_NAME}" \
			--v=1
		pid="${STARTED_PID}"
	fi
	local deadline=$((SECONDS + TIMEOUT))
	until kubelet_healthy && node_ready; do
		if ! pid_alive "${pid}"; then
			show_log_tail "${LOG_DIR}/kubelet.log" 60
			die "kubelet exited during startup (log: ${LOG_DIR}/kubelet.log)"
		fi
		if ((SECONDS >= deadline)); then
			show_log_tail "${LOG_DIR}/kubelet.log" 60
			"${STACK_BIN}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" describe node "${NODE_NAME}" >&2 || true
			die "node ${NODE_NAME} did not become Ready within ${TIMEOUT}s (log: ${LOG_DIR}/kubelet.log)"
		fi
		sleep 0.5
	done
	log "kubelet ready, node ${NODE_NAME} Ready (pid ${pid})"
}

# Usage: ensure_control_plane_component NAME PORT ARGS...
ensure_control_plane_component() {
	local name="$1" port="$2" pid
	shift 2
	if ! pid="$(running_pid "${name}")"; then
		require_port_free "${port}" "${name}"
		log "starting ${name} ${K8S_VERSION} (https://127.0.0.1:${port})"
		start_daemon "${name}" "${STACK_BIN}/${name}" \
			--kubeconfig="${KUBECONFIG_PATH}" \
			--authentication-kubeconfig="${KUBECONFIG_PATH}" \
			--authorization-kubeconfig="${KUBECONFIG_PATH}" \
			--bind-address=127.0.0.1 \
			--secure-port="${port}" \
			--cert-dir="${STACK_DIR}/${name}-certs" \
			--leader-elect=false \
			--profiling=false \
			--v=1 \
			"$@"
		pid="${STARTED_PID}"
	fi
	local deadline=$((SECONDS + TIMEOUT))
	until curl -fsSk --max-time 3 "https://127.0.0.1:${port}/healthz" >/dev/null 2>&1; do
		if ! pid_alive "${pid}"; then
			show_log_tail "${LOG_DIR}/${name}.log"
			die "${name} exited during startup (log: ${LOG_DIR}/${name}.log)"
		fi
		((SECONDS < deadline)) || die "${name} did not answer https://127.0.0.1:${port}/healthz within ${TIMEOUT}s (log: ${LOG_DIR}/${name}.log)"
		sleep 0.3
	done
	log "${name} ready (pid ${pid})"
}

ensure_cluster() {
	ensure_cluster_packages
	ensure_node_binaries
	ensure_containerd
	ensure_pause_image
	ensure_control_plane_component kube-scheduler "${SCHEDULER_PORT}"
	# The service-account key pair is the one the API server verifies/signs with.
	ensure_control_plane_component kube-controller-manager "${CONTROLLER_MANAGER_PORT}" \
		--service-account-private-key-file="${PKI_DIR}/sa.key" \
		--root-ca-file="${PKI_DIR}/ca.crt" \
		--cluster-signing-cert-file="${PKI_DIR}/ca.crt" \
		--cluster-signing-key-file="${PKI_DIR}/ca.key" \
		--service-cluster-ip-range="${SERVICE_CIDR}" \
		--allocate-node-cidrs=false \
		--controllers='*'
	ensure_kubelet
}

# Unmount whatever is still mounted under directory $1, deepest first.
unmount_under() {
	local dir="$1" m
	[[ -d "${dir}" ]] || return 0
	while read -r m; do
		umount -l "${m}" 2>/dev/null || true
	done < <(awk -v d="$(cd "${dir}" && pwd -P)/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
	return 0
}

# What the kubelet (volumes) and the killed containerd (the sandboxes' /dev/shm
# tmpfs, container root filesystems) left mounted.
unmount_kubelet_dirs() {
	unmount_under "${KUBELET_DIR}"
	unmount_under "${CTRD_DIR}"
}

# Once containerd is gone: the kubelet's volume mounts, and what the pods'
# network left (the containers were killed without a CNI DEL): their network
# namespaces (/var/run/netns/cni-*: only a CNI runtime makes these; dockerd keeps
# its own in /var/run/docker/netns), the bridge and the IP allocations.
cleanup_after_containerd() {
	local ns
	unmount_kubelet_dirs
	# Nothing to do unless this stack ran the cluster's containerd.
	[[ -d "${CTRD_DIR}" ]] || return 0
	for ns in /var/run/netns/cni-*; do
		[[ -e "${ns}" ]] || continue
		umount "${ns}" 2>/dev/null || true
		rm -f "${ns}" 2>/dev/null || true
	done
	if command -v ip >/dev/null 2>&1 && ip link show wro-cni0 >/dev/null 2>&1; then
		ip link delete wro-cni0 2>/dev/null || true
	fi
	rm -rf "${STACK_DIR}/cni/ipam"
	return 0
}

# down --cluster: stop only the cluster parts and remove the node object, so
# the API server (still up) does not keep a NotReady node.
stop_cluster() {
	local name pid
	for name in kubelet containerd kube-scheduler kube-controller-manager; do
		[[ "${name}" == containerd ]] && stop_cluster_containers
		if pid="$(running_pid "${name}")"; then
			stop_pid "${name}" "${pid}" 20
		fi
		rm -f "$(pidfile "${name}")"
		[[ "${name}" == kubelet ]] && restore_kernel_tunables
		[[ "${name}" == containerd ]] && cleanup_after_containerd
	done
	if [[ -x "${STACK_BIN}/kubectl" && -s "${KUBECONFIG_PATH}" ]] && apiserver_ready; then
		"${STACK_BIN}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" delete node "${NODE_NAME}" --ignore-not-found --request-timeout=20s >&2 || true
	fi
	return 0
}

# Stop the pods' containers through containerd before containerd itself goes.
stop_cluster_containers() {
	containerd_ready || return 0
	local t
	for t in $(ctr_k8s tasks ls -q 2>/dev/null); do
		ctr_k8s tasks kill -s SIGKILL "${t}" >/dev/null 2>&1 || true
	done
	sleep 0.5
	for t in $(ctr_k8s tasks ls -q 2>/dev/null); do
		ctr_k8s tasks delete -f "${t}" >/dev/null 2>&1 || true
	done
}

# ---------------------------------------------------------------- systemd node (on demand: systemd)
#
# A container that boots systemd as PID 1 (the way kind runs its nodes), so that the operator,
# on the host as root, manages systemd services over D-Bus: the node's system bus socket is
# bind-mounted out to .stack/systemd/dbus/. The image (scripts/build-systemd-image.sh) is
# Debian bookworm with systemd 252, dbus and the sample worker at /usr/local/bin/sample-worker.

SYSTEMD_CONTAINER=wro-systemd
SYSTEMD_IMAGE="${WRO_SYSTEMD_IMAGE:-wro-systemd:dev}"
SYSTEMD_DIR="${STACK_DIR}/systemd"
SYSTEMD_DBUS_DIR="${SYSTEMD_DIR}/dbus"
SYSTEMD_UNITS_DIR="${SYSTEMD_DIR}/units"
SYSTEMD_SHARED_DIR="${SYSTEMD_DIR}/shared"
SYSTEMD_JOURNAL_DIR="${SYSTEMD_DIR}/journal"
SYSTEMD_MACHINE_ID="${SYSTEMD_DIR}/machine-id"
SYSTEMD_BUS_SOCKET="${SYSTEMD_DBUS_DIR}/system_bus_socket"
SYSTEMD_BUS="unix:path=${SYSTEMD_BUS_SOCKET}"
# Where the units directory appears in the node: in systemd's default unit search path (below
# /etc/systemd/system and /run/systemd/system, which keep the image's own units and masks).
SYSTEMD_NODE_UNITS_DIR=/usr/local/lib/systemd/system

systemd_wanted() { [[ "${WRO_SYSTEMD:-0}" == 1 ]]; }

# "running <image id>", "exited <image id>", ... of the node's container; fails if there is none.
systemd_container_state() {
	timeout 20 docker inspect -f '{{.State.Status}} {{.Image}}' "${SYSTEMD_CONTAINER}" 2>/dev/null
}

# systemd's own view (running, degraded, starting, ...), asked inside the node.
systemd_system_state() {
	timeout 20 docker exec "${SYSTEMD_CONTAINER}" systemctl is-system-running 2>/dev/null || true
}

# The manager's SystemState, asked from the host over the bus socket (what the operator uses).
systemd_bus_state() {
	[[ -S "${SYSTEMD_BUS_SOCKET}" ]] || return 1
	local out
	out="$(timeout 20 busctl --address="${SYSTEMD_BUS}" get-property org.freedesktop.systemd1 \
		/org/freedesktop/systemd1 org.freedesktop.systemd1.Manager SystemState 2>/dev/null)" || return 1
	out="${out#s \"}"
	printf '%s\n' "${out%\"}"
}

systemd_bus_version() {
	local out
	out="$(timeout 20 busctl --address="${SYSTEMD_BUS}" get-property org.freedesktop.systemd1 \
		/org/freedesktop/systemd1 org.freedesktop.systemd1.Manager Version 2>/dev/null)" || return 1
	out="${out#s \"}"
	printf '%s\n' "${out%\"}"
}

# Booted (running, or degraded: some unit failed) and its bus socket answers from the host.
systemd_ready() {
	local s
	s="$(systemd_system_state)"
	[[ "${s}" == running || "${s}" == degraded ]] || return 1
	[[ -S "${SYSTEMD_BUS_SOCKET}" ]] || return 1
	if command -v busctl >/dev/null 2>&1; then
		s="$(systemd_bus_state)" || return 1
		[[ "${s}" == running || "${s}" == degraded ]]
	fi
}

# The node's boot output (docker logs) and, if it still runs, what systemd says went wrong.
show_systemd_diagnostics() {
	printf '[stack] ---- last 40 lines of docker logs %s ----\n' "${SYSTEMD_CONTAINER}" >&2
	timeout 20 docker logs --tail 40 "${SYSTEMD_CONTAINER}" >&2 2>&1 || true
	printf '[stack] ---- end of docker logs %s ----\n' "${SYSTEMD_CONTAINER}" >&2
	if [[ "$(systemd_container_state)" == running\ * ]]; then
		printf '[stack] ---- systemctl --failed / list-jobs / journal warnings in %s ----\n' "${SYSTEMD_CONTAINER}" >&2
		timeout 20 docker exec "${SYSTEMD_CONTAINER}" systemctl --failed --no-pager >&2 2>&1 || true
		timeout 20 docker exec "${SYSTEMD_CONTAINER}" systemctl list-jobs --no-pager >&2 2>&1 || true
		timeout 20 docker exec "${SYSTEMD_CONTAINER}" journalctl -b -p warning -n 30 --no-pager >&2 2>&1 || true
		printf '[stack] ---- end ----\n' >&2
	fi
}

ensure_systemd_image() {
	docker image inspect "${SYSTEMD_IMAGE}" >/dev/null 2>&1 && return 0
	local start=${SECONDS}
	log "building the systemd node image ${SYSTEMD_IMAGE} (first run only; log: ${LOG_DIR}/build-systemd-image.log)"
	if ! WRO_SYSTEMD_IMAGE="${SYSTEMD_IMAGE}" bash "${SCRIPT_DIR}/build-systemd-image.sh" >"${LOG_DIR}/build-systemd-image.log" 2>&1; then
		show_log_tail "${LOG_DIR}/build-systemd-image.log" 60
		die "building ${SYSTEMD_IMAGE} FAILED (log: ${LOG_DIR}/build-systemd-image.log)"
	fi
	log "built ${SYSTEMD_IMAGE} in $((SECONDS - start))s"
}

# The docker run flags of the node, and why (systemd 252 as PID 1, Docker 20.10 with the
# cgroupfs driver on a cgroup v1 host). See the comments for each.
systemd_run_flags() {
	SYSTEMD_RUN_FLAGS=(
		# --tty: systemd writes its boot status to the console: `docker logs wro-systemd` shows it.
		--tty
		--hostname "${SYSTEMD_CONTAINER}"
		# Its own cgroup namespace: every cgroup mount in the node is rooted at the container's
		# cgroup (/docker/<id>), so systemd finds itself at / and manages its subtree only (and
		# the image's entrypoint may make those mounts writable without exposing the host's tree).
		--cgroupns=private
		# systemd as PID 1 mounts (the unified cgroup hierarchy, /dev/shm, ...) and sets up
		# namespaces for sandboxed units; the entrypoint remounts the read-only cgroup mounts
		# read-write (without: "Failed to create /init.scope control group: Read-only file
		# system", PID 1 exits; without the remount MemoryMax= etc. are not enforced). Nothing
		# more: --privileged cannot start at all on this host (runc: "unable to apply caps:
		# operation not permitted": the host's bounding set lacks CAP_SYS_RESOURCE, a privileged
		# container asks for every capability, and Docker 20.10 ignores --cap-drop with it).
		# (The engine has no seccomp or AppArmor profile to lift; where Docker applies AppArmor,
		# --security-opt apparmor=unconfined would be needed for the mounts.)
		--cap-add SYS_ADMIN
		# The host's network, as the tests' worker containers: a worker's METRICS_ADDR
		# 127.0.0.1:<port> answers on the host (and the engine has no bridge network anyway).
		--network host
		# systemd expects tmpfs at /run and /run/lock (as kind runs its nodes).
		--tmpfs /run --tmpfs /run/lock
		# docker stop: SIGRTMIN+3 (the image's STOPSIGNAL), a clean shutdown of every unit.
		--stop-timeout 30
		--label wro.stack=systemd-node
		# The system bus socket appears on the host as .stack/systemd/dbus/system_bus_socket.
		-v "${SYSTEMD_DBUS_DIR}:/run/dbus"
		# Unit files from the host, in systemd's unit search path (read-only: runtime changes go
		# to /run/systemd/system.control, enable/disable to /etc/systemd/system, in the node).
		-v "${SYSTEMD_UNITS_DIR}:${SYSTEMD_NODE_UNITS_DIR}:ro"
		# The workers' shared directories, at the same absolute path on both sides (not the
		# host's /tmp: systemd-tmpfiles and PrivateTmp= would act on it).
		-v "${SYSTEMD_SHARED_DIR}:${SYSTEMD_SHARED_DIR}"
		# The persistent journal, readable on the host: journalctl -D .stack/systemd/journal
		-v "${SYSTEMD_JOURNAL_DIR}:/var/log/journal"
		# One machine id across restarts (the journal's directory name).
		-v "${SYSTEMD_MACHINE_ID}:/etc/machine-id:ro"
	)
}

start_systemd_node() {
	mkdir -p "${SYSTEMD_DBUS_DIR}" "${SYSTEMD_UNITS_DIR}" "${SYSTEMD_SHARED_DIR}" "${SYSTEMD_JOURNAL_DIR}"
	# A socket left by a node that was killed: dbus-daemon would replace it, but the wait below
	# must not take it for the new one.
	rm -f "${SYSTEMD_BUS_SOCKET}"
	if [[ ! -s "${SYSTEMD_MACHINE_ID}" ]]; then
		# One machine id for every boot of the node: the journal stays in one directory.
		od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"${SYSTEMD_MACHINE_ID}.tmp"
		printf '\n' >>"${SYSTEMD_MACHINE_ID}.tmp"
		mv "${SYSTEMD_MACHINE_ID}.tmp" "${SYSTEMD_MACHINE_ID}"
	fi
	systemd_run_flags
	log "starting the systemd node ${SYSTEMD_CONTAINER} (${SYSTEMD_IMAGE}): docker run ${SYSTEMD_RUN_FLAGS[*]}"
	local out
	if ! out="$(timeout 120 docker run -d --name "${SYSTEMD_CONTAINER}" "${SYSTEMD_RUN_FLAGS[@]}" "${SYSTEMD_IMAGE}" 2>&1)"; then
		printf '%s\n' "${out}" >&2
		timeout 60 docker rm -f "${SYSTEMD_CONTAINER}" >/dev/null 2>&1 || true
		die "docker run of the systemd node failed"
	fi
}

ensure_systemd() {
	[[ "${WRO_SKIP_DOCKER:-0}" != 1 ]] || die "the systemd node needs the Docker engine: unset WRO_SKIP_DOCKER"
	[[ "$(id -u)" == 0 ]] || die "the systemd node runs a container with host mounts and is managed over its bus as root: run as root"
	local start=${SECONDS} state image_id
	mkdir -p "${STACK_DIR}" "${LOG_DIR}"
	ensure_docker
	ensure_systemd_image
	image_id="$(docker image inspect -f '{{.Id}}' "${SYSTEMD_IMAGE}")"
	if state="$(systemd_container_state)"; then
		if [[ "${state}" == "running ${image_id}" ]]; then
			if systemd_ready; then
				log "systemd node ${SYSTEMD_CONTAINER} ready (bus ${SYSTEMD_BUS})"
				return 0
			fi
			log "systemd node ${SYSTEMD_CONTAINER} is running but not ready yet; waiting"
		else
			# Stopped, or made from an older build of the image: made anew.
			log "replacing the systemd node ${SYSTEMD_CONTAINER} (${state%% *}$([[ "${state#* }" == "${image_id}" ]] || echo ', older image'))"
			timeout 60 docker stop -t 20 "${SYSTEMD_CONTAINER}" >/dev/null 2>&1 || true
			timeout 60 docker rm -f "${SYSTEMD_CONTAINER}" >/dev/null 2>&1 || true
			start_systemd_node
		fi
	else
		start_systemd_node
	fi
	local deadline=$((SECONDS + TIMEOUT))
	until systemd_ready; do
		state="$(systemd_container_state || true)"
		if [[ "${state}" != running\ * ]]; then
			show_systemd_diagnostics
			die "the systemd node ${SYSTEMD_CONTAINER} exited during startup (${state%% *}; docker logs ${SYSTEMD_CONTAINER})"
		fi
		if ((SECONDS >= deadline)); then
			show_systemd_diagnostics
			die "the systemd node did not reach running/degraded with its bus at ${SYSTEMD_BUS_SOCKET} within ${TIMEOUT}s (is-system-running: $(systemd_system_state))"
		fi
		sleep 0.3
	done
	local s
	s="$(systemd_system_state)"
	if [[ "${s}" == degraded ]]; then
		log "note: the systemd node is degraded (a unit failed):"
		timeout 20 docker exec "${SYSTEMD_CONTAINER}" systemctl --failed --no-pager --plain >&2 2>&1 || true
	fi
	log "systemd node ${SYSTEMD_CONTAINER} ${s} in $((SECONDS - start))s: bus ${SYSTEMD_BUS}, units ${SYSTEMD_UNITS_DIR} (${SYSTEMD_NODE_UNITS_DIR} in the node), shared ${SYSTEMD_SHARED_DIR}, journal ${SYSTEMD_JOURNAL_DIR}"
}

# Halt the node (docker stop sends the image's STOPSIGNAL, SIGRTMIN+3: a clean shutdown that
# stops every unit) and remove its container. Only when an engine answers.
stop_systemd() {
	docker_server_version >/dev/null 2>&1 || return 0
	if systemd_container_state >/dev/null; then
		log "stopping the systemd node ${SYSTEMD_CONTAINER}"
		timeout 60 docker stop -t 30 "${SYSTEMD_CONTAINER}" >/dev/null 2>&1 || log "docker stop ${SYSTEMD_CONTAINER} failed (removing it anyway)"
		timeout 60 docker rm -f "${SYSTEMD_CONTAINER}" >/dev/null 2>&1 || log "docker rm -f ${SYSTEMD_CONTAINER} failed"
	fi
	rm -f "${SYSTEMD_BUS_SOCKET}"
	return 0
}

# ---------------------------------------------------------------- commands

print_versions() {
	local apiserver_v kubectl_v etcd_v docker_v
	# Capture whole outputs and keep the first line (no `| head`: with pipefail
	# an early-closing reader turns the writer's SIGPIPE into a failure).
	apiserver_v="$("${STACK_BIN}/kube-apiserver" --version 2>&1)" || die "kube-apiserver --version failed: ${apiserver_v}"
	kubectl_v="$("${STACK_BIN}/kubectl" version --client 2>&1)" || die "kubectl version --client failed: ${kubectl_v}"
	etcd_v="$("${STACK_BIN}/etcd" --version 2>&1)" || die "etcd --version failed: ${etcd_v}"
	apiserver_v="${apiserver_v%%$'\n'*}"
	kubectl_v="${kubectl_v%%$'\n'*}"
	etcd_v="${etcd_v%%$'\n'*}"
	log "versions:"
	log "  kube-apiserver: ${apiserver_v}"
	log "  kubectl:        ${kubectl_v}"
	log "  etcd:           ${etcd_v}"
	if ! skip_jaeger; then
		# The binary carries no version stamp (plain -ldflags "-s -w"): run it as a
		# sanity check and report the version pinned in hack/jaeger/go.mod.
		local jaeger_out
		jaeger_out="$("${STACK_BIN}/jaeger" version 2>&1)" || die "jaeger version failed: ${jaeger_out}"
		log "  jaeger:         ${JAEGER_VERSION} (pinned in hack/jaeger/go.mod)"
	fi
	if [[ -x "${STACK_BIN}/helm" ]]; then
		local helm_v
		helm_v="$("${STACK_BIN}/helm" version --short 2>&1)" || die "helm version failed: ${helm_v}"
		log "  helm:           ${helm_v}"
	fi
	if [[ "${WRO_SKIP_DOCKER:-0}" != 1 ]]; then
		docker_v="$(timeout 10 docker version --format 'client {{.Client.Version}}, server {{.Server.Version}} (API {{.Server.APIVersion}})' 2>&1 || true)"
		log "  docker:         ${docker_v}"
	fi
}

lock_stack() {
	mkdir -p "${STACK_DIR}"
	if command -v flock >/dev/null 2>&1; then
		exec 9>"${STACK_DIR}/.lock"
		if ! flock -n 9; then
			log "another scripts/stack.sh is running; waiting for it (up to 30 min)"
			flock -w 1800 9 || die "timed out waiting for the stack lock ${STACK_DIR}/.lock"
		fi
	fi
}

cmd_up() {
	local start=${SECONDS} arg
	for arg in "$@"; do
		case "${arg}" in
		--cluster) WRO_CLUSTER=1 ;;
		*) die "unknown option for up: ${arg}" ;;
		esac
	done
	command -v curl >/dev/null 2>&1 || die "curl is required"
	lock_stack
	mkdir -p "${STACK_DIR}" "${LOG_DIR}" "${STACK_BIN}"
	ensure_binaries
	# Jaeger needs neither etcd nor the API server.
	ensure_jaeger
	ensure_prometheus
	ensure_pki
	ensure_kubeconfig
	ensure_etcd
	ensure_apiserver
	ensure_docker
	if cluster_wanted; then
		[[ "${WRO_SKIP_DOCKER:-0}" != 1 ]] || die "--cluster needs the Docker engine (it builds the pause image): unset WRO_SKIP_DOCKER"
		ensure_cluster
	fi
	# The smoke check everything else relies on.
	local out
	if ! out="$("${STACK_BIN}/kubectl" --kubeconfig "${KUBECONFIG_PATH}" get ns --request-timeout=20s 2>&1)"; then
		printf '%s\n' "${out}" >&2
		show_log_tail "${LOG_DIR}/kube-apiserver.log"
		die "'kubectl --kubeconfig ${KUBECONFIG_PATH} get ns' failed"
	fi
	print_versions
	log "stack is up in $((SECONDS - start))s: KUBECONFIG=${KUBECONFIG_PATH}, apiserver ${APISERVER_URL}, etcd ${ETCD_URL}"
	skip_jaeger || log "jaeger: OTLP/HTTP ${JAEGER_OTLP_URL}, query API/UI ${JAEGER_QUERY_URL}"
	cluster_wanted && log "cluster: node ${NODE_NAME} Ready, containerd ${CTRD_SOCK}; load images with: scripts/stack.sh load-image IMAGE"
	log "use: eval \"\$(scripts/stack.sh env)\""
}

cmd_down() {
	local purge=0 only_cluster=0 only_systemd=0 arg
	for arg in "$@"; do
		case "${arg}" in
		--purge) purge=1 ;;
		--cluster) only_cluster=1 ;;
		--systemd) only_systemd=1 ;;
		*) die "unknown option for down: ${arg}" ;;
		esac
	done
	((purge && only_cluster)) && die "down: --purge and --cluster do not go together"
	((only_systemd && (purge || only_cluster))) && die "down: --systemd goes with neither --purge nor --cluster"
	lock_stack
	local name pid grace
	if ((only_cluster)); then
		stop_cluster
		log "cluster parts are down (etcd, kube-apiserver, jaeger and docker left running)"
		return 0
	fi
	if ((only_systemd)); then
		stop_systemd
		log "the systemd node is down (its journal stays in ${SYSTEMD_JOURNAL_DIR})"
		return 0
	fi
	# The demo's operator and containers go first, while the API server still answers.
	if [[ -d "${STACK_DIR}/demo" ]]; then
		bash "${SCRIPT_DIR}/demo.sh" clean || log "demo clean-up failed (continuing)"
	fi
	# The systemd node is a container of the engine: halted while the engine still answers.
	stop_systemd
	# Reverse start order: the cluster parts (kubelet first, then the pods'
	# containers, containerd, scheduler, controller-manager), dockerd,
	# kube-apiserver, etcd, jaeger.
	for name in kubelet containerd kube-scheduler kube-controller-manager dockerd kube-apiserver etcd jaeger prometheus; do
		[[ "${name}" == containerd ]] && stop_cluster_containers
		if pid="$(running_pid "${name}")"; then
			grace=20
			[[ "${name}" == dockerd ]] && grace=40
			stop_pid "${name}" "${pid}" "${grace}"
		else
			[[ -f "$(pidfile "${name}")" ]] && log "${name}: not running (stale pid file removed)"
		fi
		rm -f "$(pidfile "${name}")"
		[[ "${name}" == kubelet ]] && restore_kernel_tunables
		[[ "${name}" == containerd ]] && cleanup_after_containerd
	done
	if ((purge)); then
		log "purging runtime state: etcd data, certificates, kubeconfig, logs"
		rm -rf "${ETCD_DATA_DIR}" "${PKI_DIR}" "${STACK_DIR}/apiserver-certs" "${KUBECONFIG_PATH}" "${LOG_DIR}" "${PROMETHEUS_DIR}"
		# Cluster mode: containerd's images and containers, kubelet state, CNI config.
		unmount_kubelet_dirs
		rm -rf "${CTRD_DIR}" "${KUBELET_DIR}" "${STACK_DIR}/cni" \
			"${STACK_DIR}/kube-scheduler-certs" "${STACK_DIR}/kube-controller-manager-certs"
		# The systemd node's journal, units, shared directories and machine id.
		rm -rf "${SYSTEMD_DIR}"
		# State of a private engine (DOCKER_HOST=unix://...) that we just stopped.
		if [[ -d "${STACK_DIR}/docker" ]] && ! pid_is "$(cat "${STACK_DIR}/docker/dockerd.pid" 2>/dev/null || true)" dockerd; then
			rm -rf "${STACK_DIR}/docker"
		fi
	fi
	log "stack is down"
}

cmd_status() {
	local all_ok=0 pid v ans
	printf '%-15s %-9s %-8s %-40s %s\n' COMPONENT STATE PID VERSION ANSWERS
	# etcd
	v="${ETCD_VERSION}"
	if pid="$(running_pid etcd)"; then
		if etcd_healthy; then ans="yes (${ETCD_URL}/health)"; else ans="NO"; all_ok=1; fi
		printf '%-15s %-9s %-8s %-40s %s\n' etcd running "${pid}" "${v}" "${ans}"
	else
		printf '%-15s %-9s %-8s %-40s %s\n' etcd stopped - "${v}" no
		all_ok=1
	fi
	# kube-apiserver
	v="${K8S_VERSION}"
	if pid="$(running_pid kube-apiserver)"; then
		if [[ -f "${PKI_DIR}/ca.crt" ]] && apiserver_ready; then
			ans="yes (${APISERVER_URL}/readyz)"
			local gv
			gv="$(apiserver_get /version | sed -n 's/.*"gitVersion": *"\([^"]*\)".*/\1/p')" || true
			[[ -n "${gv}" ]] && v="${gv}"
		else
			ans="NO"
			all_ok=1
		fi
		printf '%-15s %-9s %-8s %-40s %s\n' kube-apiserver running "${pid}" "${v}" "${ans}"
	else
		printf '%-15s %-9s %-8s %-40s %s\n' kube-apiserver stopped - "${v}" no
		all_ok=1
	fi
	# jaeger
	v="${JAEGER_VERSION}"
	if pid="$(running_pid jaeger)"; then
		if jaeger_healthy; then ans="yes (${JAEGER_HEALTH_URL}, ${JAEGER_QUERY_URL}/api/services)"; else
			ans="NO"
			skip_jaeger || all_ok=1
		fi
		printf '%-15s %-9s %-8s %-40s %s\n' jaeger running "${pid}" "${v}" "${ans}"
	elif skip_jaeger; then
		printf '%-15s %-9s %-8s %-40s %s\n' jaeger skipped - - -
	else
		printf '%-15s %-9s %-8s %-40s %s\n' jaeger stopped - "${v}" no
		all_ok=1
	fi
	# prometheus
	v="${PROMETHEUS_DEB_VERSION}"
	if pid="$(running_pid prometheus)"; then
		if prometheus_ready; then ans="yes (${PROMETHEUS_URL}/-/ready)"; else ans="NO"; all_ok=1; fi
		printf '%-15s %-9s %-8s %-40s %s\n' prometheus running "${pid}" "${v}" "${ans}"
	else
		printf '%-15s %-9s %-8s %-40s %s\n' prometheus stopped - "${v}" no
		all_ok=1
	fi
	# docker
	if [[ "${WRO_SKIP_DOCKER:-0}" == 1 ]]; then
		printf '%-15s %-9s %-8s %-40s %s\n' dockerd skipped - - -
	elif v="$(docker_server_version)" && [[ -n "${v}" ]]; then
		if pid="$(running_pid dockerd)"; then
			printf '%-15s %-9s %-8s %-40s %s\n' dockerd running "${pid}" "${v}" "yes (started by stack)"
		else
			printf '%-15s %-9s %-8s %-40s %s\n' dockerd running external "${v}" "yes (not started by stack)"
		fi
	else
		if pid="$(running_pid dockerd)"; then
			printf '%-15s %-9s %-8s %-40s %s\n' dockerd running "${pid}" - NO
		else
			printf '%-15s %-9s %-8s %-40s %s\n' dockerd stopped - - no
		fi
		all_ok=1
	fi
	# cluster parts: shown when running or asked for (WRO_CLUSTER=1)
	local name
	for name in containerd kube-scheduler kube-controller-manager kubelet; do
		if pid="$(running_pid "${name}")"; then
			case "${name}" in
			containerd) if containerd_ready; then ans="yes (${CTRD_SOCK})"; else ans=NO; all_ok=1; fi ;;
			kube-scheduler) if curl -fsSk --max-time 3 "https://127.0.0.1:${SCHEDULER_PORT}/healthz" >/dev/null 2>&1; then ans="yes (:${SCHEDULER_PORT}/healthz)"; else ans=NO; all_ok=1; fi ;;
			kube-controller-manager) if curl -fsSk --max-time 3 "https://127.0.0.1:${CONTROLLER_MANAGER_PORT}/healthz" >/dev/null 2>&1; then ans="yes (:${CONTROLLER_MANAGER_PORT}/healthz)"; else ans=NO; all_ok=1; fi ;;
			kubelet) if kubelet_healthy && node_ready; then ans="yes (node ${NODE_NAME} Ready)"; else ans=NO; all_ok=1; fi ;;
			esac
			v="${K8S_VERSION}"
			[[ "${name}" == containerd ]] && v="$(containerd --version 2>/dev/null | awk '{print $3}')"
			printf '%-15s %-9s %-8s %-40s %s\n' "${name}" running "${pid}" "${v}" "${ans}"
		elif cluster_wanted; then
			printf '%-15s %-9s %-8s %-40s %s\n' "${name}" stopped - - no
			all_ok=1
		fi
	done
	# the systemd node: shown when its container exists or asked for (WRO_SYSTEMD=1)
	if [[ "${WRO_SKIP_DOCKER:-0}" != 1 ]] && docker_server_version >/dev/null 2>&1 && v="$(systemd_container_state)"; then
		local node_state="${v%% *}" node_pid
		if [[ "${node_state}" == running ]]; then
			node_pid="$(timeout 20 docker inspect -f '{{.State.Pid}}' "${SYSTEMD_CONTAINER}" 2>/dev/null || echo -)"
			local bus_state="" sd_version="-"
			if command -v busctl >/dev/null 2>&1 && bus_state="$(systemd_bus_state)"; then
				sd_version="systemd $(systemd_bus_version || echo '?')"
			fi
			if [[ "${bus_state}" == running || "${bus_state}" == degraded ]]; then
				ans="yes (${bus_state}, bus ${SYSTEMD_BUS_SOCKET})"
			else
				ans="NO (system state: ${bus_state:-$(systemd_system_state)})"
				all_ok=1
			fi
			printf '%-15s %-9s %-8s %-40s %s\n' systemd-node running "${node_pid}" "${sd_version}" "${ans}"
		else
			printf '%-15s %-9s %-8s %-40s %s\n' systemd-node "${node_state}" - - "no (container ${SYSTEMD_CONTAINER}; start: scripts/stack.sh systemd)"
			systemd_wanted && all_ok=1
		fi
	elif systemd_wanted; then
		printf '%-15s %-9s %-8s %-40s %s\n' systemd-node stopped - - no
		all_ok=1
	fi
	printf 'kubeconfig: %s%s\n' "${KUBECONFIG_PATH}" "$([[ -s "${KUBECONFIG_PATH}" ]] || echo ' (missing)')"
	printf 'binaries:   %s -> %s, %s, %s, %s\n' "${STACK_BIN}" "${K8S_BIN_DIR}" "${ETCD_BIN_DIR}" "${JAEGER_BIN_DIR}" "${HELM_BIN_DIR}"
	skip_jaeger || printf 'jaeger:     OTLP/HTTP %s, query API/UI %s\n' "${JAEGER_OTLP_URL}" "${JAEGER_QUERY_URL}"
	return "${all_ok}"
}

cmd_env() {
	printf 'export KUBECONFIG=%q\n' "${KUBECONFIG_PATH}"
	# shellcheck disable=SC2016 # $PATH is meant to expand where the output is eval'ed
	printf 'export PATH=%q:"$PATH"\n' "${STACK_BIN}"
	printf 'export WRO_JAEGER_OTLP_ENDPOINT=%q\n' "${JAEGER_OTLP_URL}"
	printf 'export WRO_JAEGER_QUERY_URL=%q\n' "${JAEGER_QUERY_URL}"
	printf 'export WRO_PROMETHEUS_URL=%q\n' "${PROMETHEUS_URL}"
	# The systemd node, while it runs (scripts/stack.sh systemd): its bus answers (the socket file
	# outlives a node stopped with docker stop).
	if [[ -S "${SYSTEMD_BUS_SOCKET}" ]] && { ! command -v busctl >/dev/null 2>&1 || systemd_bus_state >/dev/null; }; then
		printf 'export WRO_SYSTEMD_BUS=%q\n' "${SYSTEMD_BUS}"
		printf 'export WRO_SYSTEMD_UNITS_DIR=%q\n' "${SYSTEMD_UNITS_DIR}"
		printf 'export WRO_SYSTEMD_SHARED_DIR=%q\n' "${SYSTEMD_SHARED_DIR}"
		printf 'export WRO_SYSTEMD_JOURNAL_DIR=%q\n' "${SYSTEMD_JOURNAL_DIR}"
		printf 'export WRO_SYSTEMD_CONTAINER=%q\n' "${SYSTEMD_CONTAINER}"
	fi
}

usage() {
	sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
}

main() {
	local cmd="${1:-}"
	[[ $# -gt 0 ]] && shift
	case "${cmd}" in
	up) cmd_up "$@" ;;
	down) cmd_down "$@" ;;
	status) cmd_status "$@" ;;
	env) cmd_env "$@" ;;
	load-image)
		[[ $# -ge 1 ]] || die "usage: scripts/stack.sh load-image IMAGE..."
		local image
		mkdir -p "${LOG_DIR}"
		for image in "$@"; do load_image "${image}"; done
		;;
	helm) cmd_helm "$@" ;;
	prometheus) cmd_prometheus "$@" ;;
	systemd)
		[[ $# -eq 0 ]] || die "usage: scripts/stack.sh systemd (stop it with: scripts/stack.sh down --systemd)"
		lock_stack
		ensure_systemd
		;;
	-h | --help | help) usage ;;
	*)
		usage >&2
		exit 2
		;;
	esac
}

main "$@"; exit
