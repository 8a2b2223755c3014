#!/usr/bin/env bash
# Benchmark of crash to container running again (issue 9), on the local stack. Reported, never
# pass/fail. Two measurements:
#
#   restart   Three restarters of the same image (wro-sample-worker:dev), side by side in one run,
#             CONTAINERS containers each, all three methods at the same time:
#               operator  the operator (`run`, Docker event stream), a Worker with autoRecovery
#                         enabled for each container (consent label workerrecovery.io/worker,
#                         heartbeatTimeoutSeconds 30, policy: OPERATOR_POLICY below);
#               docker    Docker's own `--restart on-failure` (no consent label);
#               poller    a bash loop that every 5 s runs `docker ps -a --filter status=exited`
#                         over its containers and `docker start`s them (docker-autoheal style).
#             Each container is crashed CRASHES times with the sample worker's one-shot `crash`
#             fault (exit code 3), each time once it has been running RUN_SECONDS (>= 11 s:
#             Docker's policy doubles its 100 ms delay unless the container ran 10 s) plus a
#             random 0..JITTER_SECONDS (without it the crashes fall in step with the poller's
#             5 s period and its latency is biased). Crashes are staggered over the containers
#             (LOCKSTEP=1: every container at the same moment, once all of them have run long
#             enough: 3 x CONTAINERS dies at once on the engine). Latency = the engine's own clock: for each
#             `die` event of a container, the next `start` event of that container (`docker
#             events`, TimeNano). Per method: n, p50, p95, min, max in ms.
#   deadline  Heartbeat deadline to HeartbeatFresh=False: DEADLINE_SAMPLES Workers with
#             heartbeatTimeoutSeconds 5 (autoRecovery off: detection only), one at a time hung
#             with the `hang` fault (heartbeats stop). Latency = when a GET of the Worker (every
#             0.1 s, through `kubectl proxy`) first shows HeartbeatFresh=False, and separately
#             its lastTransitionTime (second precision, so a range), minus (the `timestamp` of the
#             last heartbeat.json + 5 s).
#
#   scripts/bench-restart.sh [restart|deadline|all]      default: all
#   CONTAINERS=5 CRASHES=11        containers per method, crashes per container (n = product)
#   RUN_SECONDS=11 JITTER_SECONDS=5  running time before each crash: RUN_SECONDS + U(0, JITTER)
#   LOCKSTEP=0                     1: crash every container at the same moment each round
#   OPERATOR_POLICY=docker         operator's policy like Docker's (cooldownSeconds 0, backoff
#                                  initialSeconds 0 reset after 10 s, maxRestarts 100); `defaults`:
#                                  plain `autoRecovery: {enabled: true}`: the first restart at
#                                  once, then one a minute at most (cooldownSeconds 60), and
#                                  after 3 in 10 minutes the worker is left stopped, escalated
#   TIMEOUT_SECONDS=300            cap of the crash phase
#   DEADLINE_SAMPLES=5
#   OPERATOR=path                  operator binary (default: `cargo build --release` here, and
#                                  <cargo target dir>/release/worker-recovery-operator)
#   KEEP=1                         keep the temp dir (events log, operator log)
#
# Starts the stack when none of it runs (and stops it at the end then, only then) and builds
# the worker image when needed. Everything it creates carries a per-run label or name and is
# removed at the end: containers, the namespace's objects, the temp dir.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"
MODE="${1:-all}"
case "${MODE}" in restart | deadline | all) ;; *) echo "usage: $0 [restart|deadline|all]" >&2; exit 2 ;; esac
CONTAINERS="${CONTAINERS:-5}"
CRASHES="${CRASHES:-11}"
RUN_SECONDS="${RUN_SECONDS:-11}"
JITTER_SECONDS="${JITTER_SECONDS:-5}"
LOCKSTEP="${LOCKSTEP:-0}"
OPERATOR_POLICY="${OPERATOR_POLICY:-docker}"
TIMEOUT_SECONDS="${TIMEOUT_SECONDS:-300}"
DEADLINE_SAMPLES="${DEADLINE_SAMPLES:-5}"
POLL_SECONDS=5
IMAGE=wro-sample-worker:dev
RUN="$(date +%s)"
TAG="r${RUN: -5}"
NS="bench-restart-${RUN}"
log() { printf '[bench-restart] %s\n' "$*" >&2; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/wro-bench-restart.XXXXXX")"
SHARED="${WORK}/roots" # the operator's --allowed-root; one shared root per container below it
mkdir -p "${SHARED}"
PIDS=()
STARTED_STACK=0
NS_CREATED=0
cleanup() {
	local rc=$?
	set +e
	for pid in "${PIDS[@]}"; do kill "${pid}" 2>/dev/null; done
	for pid in "${PIDS[@]}"; do wait "${pid}" 2>/dev/null; done
	if [[ ${NS_CREATED} == 1 ]]; then
		ids="$(docker ps -aq --filter "label=bench.run=${RUN}")"
		[[ -n "${ids}" ]] && docker rm -f ${ids} >/dev/null 2>&1
		# The local stack has no namespace controller: delete the namespace's objects first...
		kubectl delete workers,workerrecoveries,resumeplans --all -n "${NS}" --wait=false >/dev/null 2>&1
		kubectl delete namespace "${NS}" --wait=false >/dev/null 2>&1
		# ... and, once it is empty, finalize it here.
		kubectl get namespace "${NS}" -o json 2>/dev/null |
			python3 -c 'import json, sys; n = json.load(sys.stdin); n["spec"]["finalizers"] = []; print(json.dumps(n))' |
			kubectl replace --raw "/api/v1/namespaces/${NS}/finalize" -f - >/dev/null 2>&1
	fi
	if [[ "${KEEP:-0}" == 1 || (${rc} != 0 && ${NS_CREATED} == 1) ]]; then log "kept ${WORK}"; else rm -rf "${WORK}"; fi
	[[ ${STARTED_STACK} == 1 ]] && bash scripts/stack.sh down >/dev/null 2>&1
	exit "${rc}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The stack: started here only when none of it runs; then, and only then, stopped at the end.
if ! awk '$1 ~ /^(etcd|kube-apiserver|jaeger|dockerd)$/ && $2 != "stopped" { up = 1 } END { exit !up }' \
	<<<"$(bash scripts/stack.sh status 2>/dev/null || true)"; then
	STARTED_STACK=1
fi
bash scripts/stack.sh up >/dev/null
eval "$(bash scripts/stack.sh env)"
bash scripts/build-worker-image.sh >/dev/null
if [[ -z "${OPERATOR:-}" ]]; then
	cargo build --release --locked --quiet --bin worker-recovery-operator ||
		{ log "the operator does not build here; OPERATOR=path/to/worker-recovery-operator uses a built one"; exit 1; }
	OPERATOR="${CARGO_TARGET_DIR:-${ROOT}/target}/release/worker-recovery-operator"
	BUILT="release build of $(git rev-parse --short HEAD 2>/dev/null)$(git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | grep -q . && echo ' + uncommitted changes')"
else
	BUILT="given by OPERATOR, sha256 $(sha256sum "${OPERATOR}" | cut -c1-12)"
fi
kubectl apply --server-side --force-conflicts -f crds/ >/dev/null

NS_CREATED=1
kubectl create namespace "${NS}" >/dev/null

start_container() { # name method [docker run args...]
	local name=$1 method=$2
	shift 2
	mkdir -p "${SHARED}/${name}"
	docker run -d --name "${name}" --network none -v "${SHARED}/${name}:/shared" \
		-e "WORKER_NAME=${name}" -e HEARTBEAT_INTERVAL_SECS=1 -e METRICS_ADDR=127.0.0.1:0 \
		--label "bench.run=${RUN}" --label "bench.method=${method}" "$@" "${IMAGE}" >/dev/null
}

worker_yaml() { # name timeout auto-recovery-block
	cat <<EOF
apiVersion: workerrecovery.io/v1alpha1
kind: Worker
metadata: {name: $1, namespace: ${NS}}
spec:
  container: $1
  workerName: $1
  sharedRoot: ${SHARED}/$1
  heartbeatTimeoutSeconds: $2
  autoRecovery: $3
---
EOF
}

case "${OPERATOR_POLICY}" in
docker) POLICY='{enabled: true, cooldownSeconds: 0, maxRestarts: 100, backoff: {initialSeconds: 0, resetAfterSeconds: 10}}' ;;
defaults) POLICY='{enabled: true}' ;;
*) echo "OPERATOR_POLICY: docker or defaults" >&2; exit 2 ;;
esac

log "run ${RUN}: operator ${OPERATOR} (${BUILT})"
"${OPERATOR}" run --namespace "${NS}" --allowed-root "${SHARED}" --listen 127.0.0.1:0 \
	--log-format json >"${WORK}/operator.log" 2>&1 &
PIDS+=($!)

summary=()

restart_bench() {
	# The engine's clock, for the whole run, only this run's containers.
	docker events --filter type=container --filter "label=bench.run=${RUN}" \
		--filter event=die --filter event=start \
		--format '{{.TimeNano}} {{.Action}} {{.Actor.Attributes.name}} {{index .Actor.Attributes "bench.method"}} {{index .Actor.Attributes "exitCode"}}' \
		>"${WORK}/events.log" &
	local events_pid=$!
	PIDS+=(${events_pid})
	sleep 0.5
	local names=() yaml="" i n
	for ((i = 0; i < CONTAINERS; i++)); do
		n="${TAG}-operator-${i}"
		start_container "${n}" operator --label "workerrecovery.io/worker=${NS}/${n}"
		yaml+="$(worker_yaml "${n}" 30 "${POLICY}")"$'\n'
		names+=("${n}:operator")
		n="${TAG}-docker-${i}"
		start_container "${n}" docker --restart on-failure
		names+=("${n}:docker")
		n="${TAG}-poller-${i}"
		start_container "${n}" poller --label bench.group=poller
		names+=("${n}:poller")
	done
	kubectl apply --server-side -f - <<<"${yaml}" >/dev/null
	# The poller, docker-autoheal style (restricted to this run's containers).
	while :; do
		docker ps -a --filter label=bench.group=poller --filter "label=bench.run=${RUN}" \
			--filter status=exited -q | xargs -r docker start >/dev/null 2>&1 || true
		sleep "${POLL_SECONDS}"
	done &
	local poller_pid=$!
	PIDS+=(${poller_pid})

	log "restart: ${CONTAINERS} containers x ${CRASHES} crashes per method, each after ${RUN_SECONDS} s + U(0, ${JITTER_SECONDS}) s running (lockstep ${LOCKSTEP}, operator policy ${OPERATOR_POLICY})"
	python3 - "${WORK}/events.log" "${SHARED}" "${CRASHES}" "${RUN_SECONDS}" "${JITTER_SECONDS}" \
		"${LOCKSTEP}" "${TIMEOUT_SECONDS}" "${RUN}" "${names[@]}" <<'PY'
# The crash scheduler: follows the events log for each container's last start, and writes the
# one-shot `crash` fault once it has been running RUN_SECONDS + a random 0..JITTER_SECONDS.
import os, random, sys, time
events, shared, crashes, run_s, jitter, lockstep, timeout, seed = sys.argv[1:9]
crashes, run_s, jitter, lockstep, timeout = int(crashes), float(run_s), float(jitter), lockstep == "1", float(timeout)
rng = random.Random(int(seed))
names = sys.argv[9:]
cs = {}
for i, arg in enumerate(names):
    name, method = arg.split(":")
    # Staggered: the containers' first crashes spread over one RUN_SECONDS.
    cs[name] = dict(method=method, running=False, started=0.0, done=0, waiting=None,
                    extra=0.0 if lockstep else i * run_s / len(names) + rng.uniform(0, jitter))
round_extra = rng.uniform(0, jitter)
def crash(name):
    d = os.path.join(shared, name, "workers", name)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, ".fault.tmp"), "w") as f:
        f.write("crash")
    os.replace(os.path.join(d, ".fault.tmp"), os.path.join(d, "fault"))
    c = cs[name]
    c["done"] += 1
    c["waiting"] = time.time()
f = open(events)
buf, end, last_report = "", time.time() + timeout, time.time()
while True:
    buf += f.read()
    *lines, buf = buf.split("\n")
    for line in lines:
        p = line.split()
        if len(p) < 3 or p[2] not in cs:
            continue
        c = cs[p[2]]
        if p[1] == "start":
            c["running"], c["started"] = True, int(p[0]) / 1e9
            if c["done"]:
                c["extra"] = rng.uniform(0, jitter)
        elif p[1] == "die":
            c["running"], c["waiting"] = False, None
    now = time.time()
    for name, c in cs.items():
        if c["waiting"] and now - c["waiting"] > 10:
            print(f"  {name}: no die 10 s after its crash fault", file=sys.stderr)
            c["waiting"] = None
    ready = lambda c: c["running"] and not c["waiting"] and now - c["started"] >= run_s + (round_extra if lockstep else c["extra"])
    todo = [n for n, c in cs.items() if c["done"] < crashes]
    if not todo and all(c["running"] and not c["waiting"] for c in cs.values()):
        break
    if now > end:
        print(f"  crash phase cut at TIMEOUT_SECONDS={timeout:.0f}", file=sys.stderr)
        break
    if lockstep:
        if todo and all(ready(c) for c in cs.values()):
            for n in todo:
                crash(n)
            round_extra = rng.uniform(0, jitter)
    else:
        for n in todo:
            if ready(cs[n]):
                crash(n)
    if now - last_report >= 30:
        last_report = now
        per = {}
        for c in cs.values():
            per[c["method"]] = per.get(c["method"], 0) + c["done"]
        print("  crashes so far: " + ", ".join(f"{m} {k}" for m, k in per.items()), file=sys.stderr)
    time.sleep(0.05)
PY
	sleep 1 # the last events reach the log
	kill "${poller_pid}" "${events_pid}" 2>/dev/null || true
	summary+=("$(python3 - "${WORK}/events.log" <<'PY'
import math, sys
def pct(v, p):  # nearest rank
    v = sorted(v)
    return v[max(0, math.ceil(p / 100 * len(v)) - 1)]
lat, dies, unpaired, other_exit, pending = {}, {}, {}, {}, {}
for line in open(sys.argv[1]):
    p = line.split()
    if len(p) < 4:
        continue
    t, action, name, method = int(p[0]), p[1], p[2], p[3]
    for d in (lat, dies, unpaired, other_exit):
        d.setdefault(method, [] if d is lat else 0)
    if action == "die":
        dies[method] += 1
        if len(p) > 4 and p[4] != "3":
            other_exit[method] += 1
        if name in pending:
            unpaired[method] += 1
        pending[name] = (t, method)
    elif action == "start" and name in pending:
        lat[method].append((t - pending.pop(name)[0]) / 1e6)
for name, (t, method) in pending.items():
    unpaired[method] += 1
print("## Crash to running again (ms; engine clock, die -> next start of the same container)\n")
print("| method | n | p50 | p95 | min | max |\n|---|---|---|---|---|---|")
for m in ("operator", "docker", "poller"):
    v = lat.get(m, [])
    if v:
        print(f"| {m} | {len(v)} | {pct(v, 50):.0f} | {pct(v, 95):.0f} | {min(v):.0f} | {max(v):.0f} |")
    else:
        print(f"| {m} | 0 | - | - | - | - |")
notes = [f"{m}: {dies[m]} dies, {unpaired[m]} without a start" + (f", {other_exit[m]} with an exit code other than 3" if other_exit[m] else "")
         for m in ("operator", "docker", "poller") if m in dies]
print("\n" + "; ".join(notes))
o, d = lat.get("operator"), lat.get("docker")
if o and d:
    r50, r95 = pct(o, 50) / pct(d, 50), pct(o, 95) / pct(d, 95)
    print(f"operator / docker: p50 {r50:.2f}x (target <= 1.5x: {'met' if r50 <= 1.5 else 'not met'}), "
          f"p95 {r95:.2f}x (target <= 2x: {'met' if r95 <= 2 else 'not met'})")
PY
)")
}

deadline_bench() {
	kubectl proxy --address 127.0.0.1 --port 0 >"${WORK}/proxy.log" 2>&1 &
	PIDS+=($!)
	local yaml="" names=() i n port=""
	for ((i = 0; i < DEADLINE_SAMPLES; i++)); do
		n="${TAG}-hang-${i}"
		start_container "${n}" hang --label "workerrecovery.io/worker=${NS}/${n}"
		yaml+="$(worker_yaml "${n}" 5 '{enabled: false}')"$'\n'
		names+=("${n}")
	done
	kubectl apply --server-side -f - <<<"${yaml}" >/dev/null
	for ((i = 0; i < 50; i++)); do
		port="$(sed -n 's/^Starting to serve on 127.0.0.1:\([0-9]*\).*/\1/p' "${WORK}/proxy.log")"
		[[ -n "${port}" ]] && break
		sleep 0.1
	done
	[[ -n "${port}" ]] || { log "kubectl proxy did not start: $(cat "${WORK}/proxy.log")"; exit 1; }
	log "deadline: ${DEADLINE_SAMPLES} Workers (heartbeatTimeoutSeconds 5), hung one at a time"
	summary+=("$(python3 - "http://127.0.0.1:${port}/apis/workerrecovery.io/v1alpha1/namespaces/${NS}/workers" \
		"${SHARED}" "${names[@]}" <<'PY'
import datetime, json, math, os, sys, time, urllib.request
url, shared, names = sys.argv[1], sys.argv[2], sys.argv[3:]
def ts(s):
    return datetime.datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()
def fresh(name):
    w = json.load(urllib.request.urlopen(f"{url}/{name}", timeout=5))
    for c in w.get("status", {}).get("conditions", []):
        if c["type"] == "HeartbeatFresh":
            return c["status"], c.get("lastTransitionTime")
    return None, None
rows = []
for name in names:
    d = os.path.join(shared, name, "workers", name)
    end = time.time() + 60
    while fresh(name)[0] != "True":
        if time.time() > end:
            sys.exit(f"{name}: HeartbeatFresh never True")
        time.sleep(0.2)
    time.sleep(1)
    with open(os.path.join(d, ".fault.tmp"), "w") as f:
        f.write("hang")
    os.replace(os.path.join(d, ".fault.tmp"), os.path.join(d, "fault"))
    end = time.time() + 60
    while True:
        status, ltt = fresh(name)
        seen = time.time()
        if status == "False":
            break
        if seen > end:
            sys.exit(f"{name}: HeartbeatFresh never False")
        time.sleep(0.1)
    # No heartbeat is written after the hang: the file now holds the last one.
    deadline = ts(json.load(open(os.path.join(d, "heartbeat.json")))["timestamp"]) + 5
    rows.append((seen - deadline, ts(ltt) - deadline))
    print(f"  {name}: seen {seen - deadline:+.2f} s, lastTransitionTime {ts(ltt) - deadline:+.2f} s", file=sys.stderr)
seen = sorted(r[0] for r in rows)
p50 = seen[max(0, math.ceil(len(seen) / 2) - 1)]
print("## Heartbeat deadline to HeartbeatFresh=False (s after last heartbeat + 5 s)\n")
print("seen by a GET every 0.1 s: " + ", ".join(f"{r[0]:.2f}" for r in rows) + f"  -> p50 {p50:.2f}, max {max(seen):.2f}")
print("lastTransitionTime (whole seconds, truncated: the flip is in [t, t+1)): "
      + ", ".join(f"[{r[1]:.2f}, {r[1] + 1:.2f})" for r in rows))
PY
)")
}

[[ "${MODE}" == restart || "${MODE}" == all ]] && restart_bench
[[ "${MODE}" == deadline || "${MODE}" == all ]] && deadline_bench

echo
echo "# bench-restart ${RUN}: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, Docker $(docker version --format '{{.Server.Version}}'), operator ${OPERATOR##"${ROOT}/"} (${BUILT})"
echo "# CONTAINERS=${CONTAINERS} CRASHES=${CRASHES} RUN_SECONDS=${RUN_SECONDS} JITTER_SECONDS=${JITTER_SECONDS} LOCKSTEP=${LOCKSTEP} OPERATOR_POLICY=${OPERATOR_POLICY}"
warns="$(grep -c '"level":"\(WARN\|ERROR\)"' "${WORK}/operator.log" || true)"
echo "# operator log: ${warns} warn/error lines"
for s in "${summary[@]}"; do
	echo
	echo "${s}"
done
