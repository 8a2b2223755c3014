#!/usr/bin/env bash
# Host-side smoke test of the stack's systemd node (scripts/stack.sh systemd): everything goes
# over the node's system bus socket from the host (busctl), as the operator will do it; no
# docker exec except for one optional look at journalctl inside the node.
#
#   scripts/systemd-smoke.sh            (as root; the node must be running)
#
# What it checks, with the unit agent-worker-demo.service (the sample worker, MemoryMax=64M)
# written into the host's unit directory (.stack/systemd/units, the node's
# /usr/local/lib/systemd/system):
#   1. the bus answers: Manager Version, SystemState (running or degraded)
#   2. Reload after dropping the unit file, StartUnit: active/running, its properties
#      (ActiveState, SubState, Result, ExecMainPID, ExecMainStatus, NRestarts, Environment,
#      MemoryMax), the heartbeat file appears in the shared directory on the host
#   3. a crash (the worker's fault file "crash", written from the host): failed, Result=exit-code,
#      ExecMainStatus=3
#   4. RestartUnit: a new ExecMainPID; KillUnit SIGKILL: failed, Result=signal, ExecMainStatus=9
#   5. the oom fault under MemoryMax=64M: killed by SIGKILL; Result is oom-kill only where systemd
#      sees the kernel's OOM kills (cgroup v2 memory.events): on a cgroup v1 memory controller it
#      stays "signal" (reported, not a failure)
#   6. SetUnitProperties(runtime=true, MemoryMax=128M): the property and the unit's memory cgroup
#      limit (read on the host) follow
#   7. the journal: the unit's lines read on the host with journalctl -D (.stack/systemd/journal)
#      and, if docker answers, with journalctl -u inside the node
# It cleans up after itself (unit stopped, runtime drop-ins reverted, unit file and shared
# directory removed). Exit status 1 if a check fails.
#
# Environment:
#   WRO_SYSTEMD_BUS          bus address (default unix:path=<repo>/.stack/systemd/dbus/system_bus_socket)
#   WRO_SYSTEMD_UNITS_DIR    host unit directory (default <repo>/.stack/systemd/units)
#   WRO_SYSTEMD_SHARED_DIR   shared directory, same path in the node (default <repo>/.stack/systemd/shared)
#   WRO_SYSTEMD_JOURNAL_DIR  the node's /var/log/journal on the host (default <repo>/.stack/systemd/journal)
#   WRO_SYSTEMD_CONTAINER    the node's container name (default wro-systemd)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SYSTEMD_DIR="${REPO_ROOT}/.stack/systemd"
BUS="${WRO_SYSTEMD_BUS:-unix:path=${SYSTEMD_DIR}/dbus/system_bus_socket}"
UNITS_DIR="${WRO_SYSTEMD_UNITS_DIR:-${SYSTEMD_DIR}/units}"
SHARED_DIR="${WRO_SYSTEMD_SHARED_DIR:-${SYSTEMD_DIR}/shared}"
JOURNAL_DIR="${WRO_SYSTEMD_JOURNAL_DIR:-${SYSTEMD_DIR}/journal}"
CONTAINER="${WRO_SYSTEMD_CONTAINER:-wro-systemd}"
UNIT="agent-worker-demo.service"
WORKER="demo"
TIMEOUT=30

DEST=org.freedesktop.systemd1
MANAGER_PATH=/org/freedesktop/systemd1
MANAGER=org.freedesktop.systemd1.Manager
UNIT_IF=org.freedesktop.systemd1.Unit
SERVICE_IF=org.freedesktop.systemd1.Service

FAILED=0
log() { printf '[systemd-smoke] %s\n' "$*" >&2; }
die() {
	log "ERROR: $*"
	exit 1
}
pass() { log "PASS: $*"; }
fail() {
	log "FAIL: $*"
	FAILED=1
}

bus() { busctl --address="${BUS}" --timeout=30 "$@"; }
call() { bus call "${DEST}" "${MANAGER_PATH}" "${MANAGER}" "$@"; }

# A property's value without its D-Bus type (strings unquoted; arrays as busctl prints them).
prop() {
	local iface="$1" name="$2" out
	out="$(bus get-property "${DEST}" "${UNIT_PATH}" "${iface}" "${name}")" || return 1
	case "${out}" in
	s\ \"*) out="${out#s \"}" && printf '%s\n' "${out%\"}" ;;
	[uitbxqny]\ *) printf '%s\n' "${out#* }" ;;
	*) printf '%s\n' "${out}" ;;
	esac
}
active_state() { prop "${UNIT_IF}" ActiveState; }

# Wait until the unit's ActiveState is $1 (and, if given, SubState $2).
wait_state() {
	local want="$1" want_sub="${2:-}" deadline=$((SECONDS + TIMEOUT)) state sub
	while :; do
		state="$(active_state 2>/dev/null || true)"
		sub="$(prop "${UNIT_IF}" SubState 2>/dev/null || true)"
		if [[ "${state}" == "${want}" && (-z "${want_sub}" || "${sub}" == "${want_sub}") ]]; then
			return 0
		fi
		if ((SECONDS >= deadline)); then
			log "${UNIT} is ${state}/${sub}, not ${want}${want_sub:+/${want_sub}} after ${TIMEOUT}s"
			return 1
		fi
		sleep 0.2
	done
}

show_props() {
	local p
	for p in ActiveState SubState; do printf '    %-15s %s\n' "${p}" "$(prop "${UNIT_IF}" "${p}")" >&2; done
	for p in Result ExecMainPID ExecMainCode ExecMainStatus NRestarts MemoryMax Environment ControlGroup; do
		printf '    %-15s %s\n' "${p}" "$(prop "${SERVICE_IF}" "${p}")" >&2
	done
}

expect() {
	local what="$1" got="$2" want="$3"
	if [[ "${got}" == "${want}" ]]; then pass "${what} = ${want}"; else fail "${what} = ${got}, expected ${want}"; fi
}

start_unit() {
	call ResetFailedUnit s "${UNIT}" >/dev/null 2>&1 || true
	call StartUnit ss "${UNIT}" replace >/dev/null || return 1
	wait_state active running
}

wait_heartbeat() {
	local hb="${SHARED_ROOT}/workers/${WORKER}/heartbeat.json" deadline=$((SECONDS + TIMEOUT)) pid="$1"
	until [[ -s "${hb}" ]] && grep -q "\"pid\":${pid}[,}]" "${hb}" 2>/dev/null; do
		((SECONDS < deadline)) || return 1
		sleep 0.2
	done
}

# The unit's memory cgroup on the host: the node's cgroups are those of its container.
host_memory_cgroup() {
	local cg="$1" id
	command -v docker >/dev/null 2>&1 || return 1
	id="$(docker inspect -f '{{.Id}}' "${CONTAINER}" 2>/dev/null)" || return 1
	local d
	for d in "/sys/fs/cgroup/memory/docker/${id}${cg}" "/sys/fs/cgroup/docker/${id}${cg}" "/sys/fs/cgroup/system.slice/docker-${id}.scope${cg}"; do
		if [[ -d "${d}" ]]; then
			printf '%s\n' "${d}"
			return 0
		fi
	done
	return 1
}

cleanup() {
	set +e
	if [[ -n "${UNIT_PATH:-}" ]]; then
		call StopUnit ss "${UNIT}" replace >/dev/null 2>&1
		call ResetFailedUnit s "${UNIT}" >/dev/null 2>&1
		call RevertUnitFiles as 1 "${UNIT}" >/dev/null 2>&1
	fi
	rm -f "${UNITS_DIR}/${UNIT}"
	call Reload >/dev/null 2>&1
	[[ -n "${SHARED_ROOT:-}" ]] && rm -rf "${SHARED_ROOT}"
}

# ---------------------------------------------------------------- 1. the bus

[[ "$(id -u)" == 0 ]] || die "run as root: the node's bus lets only root manage units"
command -v busctl >/dev/null 2>&1 || die "busctl is not on PATH (package systemd)"
socket="${BUS#unix:path=}"
[[ -S "${socket}" ]] || die "no bus socket at ${socket}: start the node with scripts/stack.sh systemd"
[[ -d "${UNITS_DIR}" && -d "${SHARED_DIR}" ]] || die "${UNITS_DIR} or ${SHARED_DIR} is missing: start the node with scripts/stack.sh systemd"

version="$(bus get-property "${DEST}" "${MANAGER_PATH}" "${MANAGER}" Version)" || die "the systemd manager does not answer on ${BUS}"
state="$(bus get-property "${DEST}" "${MANAGER_PATH}" "${MANAGER}" SystemState)"
version="${version#s \"}"
state="${state#s \"}"
state="${state%\"}"
log "bus ${BUS}: systemd ${version%\"}, system ${state}"
case "${state}" in running | degraded) pass "SystemState = ${state}" ;; *) fail "SystemState = ${state}" ;; esac

trap cleanup EXIT

# ---------------------------------------------------------------- 2. unit file, Reload, StartUnit

SHARED_ROOT="$(mktemp -d "${SHARED_DIR}/smoke.XXXXXX")"
chmod 755 "${SHARED_ROOT}"
cat >"${UNITS_DIR}/${UNIT}.tmp" <<EOF
# Written by scripts/systemd-smoke.sh.
[Unit]
Description=Sample agent worker ${WORKER} (worker-recovery-operator smoke test)

[Service]
Type=simple
ExecStart=/usr/local/bin/sample-worker
Environment=WORKER_NAME=${WORKER} SHARED_ROOT=${SHARED_ROOT} METRICS_ADDR=127.0.0.1:0 HEARTBEAT_INTERVAL_SECS=1 WORKERRECOVERY_WORKER=default/${WORKER}
Restart=no
MemoryMax=64M
EOF
mv "${UNITS_DIR}/${UNIT}.tmp" "${UNITS_DIR}/${UNIT}"
call RevertUnitFiles as 1 "${UNIT}" >/dev/null 2>&1 || true
call Reload >/dev/null || die "Manager.Reload failed"
unit_path="$(call LoadUnit s "${UNIT}")" || die "LoadUnit ${UNIT} failed"
UNIT_PATH="${unit_path#o \"}"
UNIT_PATH="${UNIT_PATH%\"}"
expect "LoadState" "$(prop "${UNIT_IF}" LoadState)" loaded
expect "FragmentPath" "$(prop "${UNIT_IF}" FragmentPath)" "/usr/local/lib/systemd/system/${UNIT}"

if start_unit; then pass "StartUnit: active/running"; else fail "StartUnit: not active/running"; fi
pid="$(prop "${SERVICE_IF}" ExecMainPID)"
log "properties after start:"
show_props
expect "Result" "$(prop "${SERVICE_IF}" Result)" success
expect "MemoryMax" "$(prop "${SERVICE_IF}" MemoryMax)" $((64 * 1024 * 1024))
expect "NRestarts" "$(prop "${SERVICE_IF}" NRestarts)" 0
env_prop="$(prop "${SERVICE_IF}" Environment)"
if [[ "${env_prop}" == *"\"WORKERRECOVERY_WORKER=default/${WORKER}\""* ]]; then
	pass "Environment has WORKERRECOVERY_WORKER=default/${WORKER}"
else
	fail "Environment: ${env_prop}"
fi
if wait_heartbeat "${pid}"; then
	pass "heartbeat on the host: ${SHARED_ROOT}/workers/${WORKER}/heartbeat.json (pid ${pid}, the node's pid namespace)"
else
	fail "no heartbeat of pid ${pid} in ${SHARED_ROOT}/workers/${WORKER}/heartbeat.json within ${TIMEOUT}s"
fi

# ---------------------------------------------------------------- 3. crash (fault file)

printf 'crash' >"${SHARED_ROOT}/workers/${WORKER}/fault"
if wait_state failed; then pass "crash: failed"; else fail "crash: not failed"; fi
expect "crash: Result" "$(prop "${SERVICE_IF}" Result)" exit-code
expect "crash: ExecMainStatus" "$(prop "${SERVICE_IF}" ExecMainStatus)" 3

# ---------------------------------------------------------------- 4. restart, SIGKILL

start_unit || fail "StartUnit after the crash"
old_pid="$(prop "${SERVICE_IF}" ExecMainPID)"
call RestartUnit ss "${UNIT}" replace >/dev/null || fail "RestartUnit failed"
deadline=$((SECONDS + TIMEOUT))
until new_pid="$(prop "${SERVICE_IF}" ExecMainPID)" && [[ "${new_pid}" != "${old_pid}" && "${new_pid}" != 0 ]] &&
	[[ "$(active_state)" == active ]]; do
	((SECONDS < deadline)) || break
	sleep 0.2
done
if [[ "${new_pid}" != "${old_pid}" && "$(active_state)" == active ]]; then
	pass "RestartUnit: ExecMainPID ${old_pid} -> ${new_pid}"
else
	fail "RestartUnit: ExecMainPID still ${old_pid} or not active"
fi
call KillUnit ssi "${UNIT}" main 9 >/dev/null || fail "KillUnit failed"
if wait_state failed; then pass "SIGKILL: failed"; else fail "SIGKILL: not failed"; fi
expect "SIGKILL: Result" "$(prop "${SERVICE_IF}" Result)" signal
expect "SIGKILL: ExecMainStatus" "$(prop "${SERVICE_IF}" ExecMainStatus)" 9

# ---------------------------------------------------------------- 5. OOM under MemoryMax=64M

start_unit || fail "StartUnit before the oom fault"
cg="$(prop "${SERVICE_IF}" ControlGroup)"
if mem_cg="$(host_memory_cgroup "${cg}")"; then
	for f in memory.max memory.limit_in_bytes; do
		[[ -r "${mem_cg}/${f}" ]] && log "memory cgroup of the unit on the host: ${mem_cg}/${f} = $(cat "${mem_cg}/${f}")"
	done
else
	log "memory cgroup of the unit (${cg}) not found on the host"
fi
printf 'oom' >"${SHARED_ROOT}/workers/${WORKER}/fault"
if wait_state failed; then pass "oom: failed"; else fail "oom: not failed"; fi
oom_result="$(prop "${SERVICE_IF}" Result)"
oom_status="$(prop "${SERVICE_IF}" ExecMainStatus)"
expect "oom: ExecMainStatus (SIGKILL)" "${oom_status}" 9
if [[ "${oom_result}" == oom-kill ]]; then
	pass "oom: Result = oom-kill"
else
	log "NOTE: oom: Result = ${oom_result}, not oom-kill: systemd learns of OOM kills from the oom_kill counter of" \
		"memory.events (cgroup v2 memory controller); this node's memory controller is $(
			if [[ -e /sys/fs/cgroup/cgroup.controllers ]] && grep -qw memory /sys/fs/cgroup/cgroup.controllers; then echo 'cgroup v2'; else echo 'cgroup v1 (no memory.events)'; fi
		)"
fi

# ---------------------------------------------------------------- 6. SetUnitProperties(runtime, MemoryMax=128M)

start_unit || fail "StartUnit before SetUnitProperties"
call SetUnitProperties 'sba(sv)' "${UNIT}" true 1 MemoryMax t $((128 * 1024 * 1024)) >/dev/null ||
	fail "SetUnitProperties MemoryMax=128M failed"
expect "runtime MemoryMax" "$(prop "${SERVICE_IF}" MemoryMax)" $((128 * 1024 * 1024))
cg="$(prop "${SERVICE_IF}" ControlGroup)"
if mem_cg="$(host_memory_cgroup "${cg}")"; then
	limit=""
	[[ -r "${mem_cg}/memory.max" ]] && limit="$(cat "${mem_cg}/memory.max")"
	[[ -r "${mem_cg}/memory.limit_in_bytes" ]] && limit="$(cat "${mem_cg}/memory.limit_in_bytes")"
	expect "the unit's cgroup memory limit on the host" "${limit}" $((128 * 1024 * 1024))
else
	log "the unit's memory cgroup (${cg}) is not visible on the host: cgroup limit not checked"
fi
dropin="$(prop "${UNIT_IF}" DropInPaths)"
log "drop-ins: ${dropin}"

# ---------------------------------------------------------------- 7. journal

call StopUnit ss "${UNIT}" replace >/dev/null || fail "StopUnit failed"
wait_state inactive || fail "StopUnit: not inactive"
if command -v journalctl >/dev/null 2>&1 && [[ -d "${JOURNAL_DIR}" ]]; then
	deadline=$((SECONDS + TIMEOUT))
	until lines="$(journalctl -D "${JOURNAL_DIR}" -u "${UNIT}" --no-pager -o cat 2>/dev/null)" &&
		[[ "${lines}" == *"simulated crash"* ]]; do
		((SECONDS < deadline)) || break
		sleep 0.5
	done
	if [[ "${lines}" == *"simulated crash"* ]]; then
		pass "journal on the host: journalctl -D ${JOURNAL_DIR} -u ${UNIT} ($(wc -l <<<"${lines}") lines)"
		journalctl -D "${JOURNAL_DIR}" -u "${UNIT}" --no-pager -n 5 >&2 || true
	else
		fail "journalctl -D ${JOURNAL_DIR} -u ${UNIT} shows no worker lines"
	fi
else
	fail "no journalctl on the host or no ${JOURNAL_DIR}"
fi
if command -v docker >/dev/null 2>&1 && docker inspect "${CONTAINER}" >/dev/null 2>&1; then
	if inside="$(docker exec "${CONTAINER}" journalctl -u "${UNIT}" -n 20 --no-pager 2>&1)" && [[ "${inside}" == *sample-worker* ]]; then
		pass "journalctl -u ${UNIT} -n 20 inside ${CONTAINER}"
	else
		fail "journalctl inside ${CONTAINER}: ${inside}"
	fi
fi

if ((FAILED)); then
	log "some checks FAILED"
	exit 1
fi
log "all checks passed"
