"""Driver of scripts/bench-autoheal.sh: see its header for what is measured and how."""

import json, os, shutil, signal, socket, statistics, subprocess, sys, tempfile, threading, time
import urllib.request

IMAGE = "wro-sample-worker:dev"
LABEL = "workerrecovery.io/worker"
OPERATOR = os.environ["OPERATOR"]
CRASHES = int(os.environ.get("CRASHES", "50"))
CONTAINERS = int(os.environ.get("CONTAINERS", "5"))
WORKERS = int(os.environ.get("WORKERS", "1000"))
REAL = int(os.environ.get("REAL", "20"))
IDLE = int(os.environ.get("IDLE_SECONDS", "60"))
# Scale: 1: every Worker is file-only (no container; granted with --file-only-worker) with a
# heartbeat kept fresh by this script, so that all of them are healthy and looked at as such.
FILE_ONLY = os.environ.get("FILE_ONLY", "0") == "1"
RUN = f"{int(time.time())}"


def sh(*args, check=True, capture=True, stdin=None):
    r = subprocess.run(args, check=check, capture_output=capture, text=True, input=stdin)
    return r.stdout.strip() if capture else ""


def kubectl_apply(yaml):
    sh("kubectl", "apply", "--server-side", "-f", "-", stdin=yaml)


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, max(0, int(round(p / 100 * len(v) + 0.5)) - 1))]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    def __init__(self, ns, root, log, extra=()):
        self.log = open(log, "a")
        self.addr = f"127.0.0.1:{free_port()}"
        self.proc = subprocess.Popen(
            [OPERATOR, "run", "--listen", self.addr, "--log-format", "json",
             "--namespace", ns, "--allowed-root", root, *extra],
            stdout=self.log, stderr=self.log, env={**os.environ, "RUST_LOG": "warn"})

    def worker_reconciles(self):
        """Reconciles of the Worker controller so far (its own counter), 0 before it serves."""
        try:
            text = urllib.request.urlopen(f"http://{self.addr}/metrics", timeout=2).read().decode()
        except OSError:
            return 0
        for line in text.splitlines():
            if line.startswith('workerrecovery_reconciliations_total{controller="worker"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0

    def stop(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def rss_kib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    def cpu_seconds(self):
        f = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def worker_yaml(ns, name, container, root, auto=True, timeout=30, extra=""):
    return f"""apiVersion: workerrecovery.io/v1alpha1
kind: Worker
metadata: {{name: {name}, namespace: {ns}}}
spec:
  container: {container}
  workerName: {name}
  sharedRoot: {root}
  heartbeatTimeoutSeconds: {timeout}
  autoRecovery:
    enabled: {str(auto).lower()}
    cooldownSeconds: 0
    maxRestarts: 100
    backoff: {{initialSeconds: 0, resetAfterSeconds: 10}}
{extra}---
"""


def start_worker(name, root, labels=(), restart=None, env=()):
    shared = os.path.join(root, name)
    for d in ("pending", "active", "staged", "failed"):
        os.makedirs(os.path.join(shared, "tasks", name, d), exist_ok=True)
    args = ["docker", "run", "-d", "--name", name, "--network", "none",
            "-v", f"{shared}:/shared", "-e", f"WORKER_NAME={name}",
            "-e", "HEARTBEAT_INTERVAL_SECS=1", "-e", "METRICS_ADDR=127.0.0.1:0",
            "--label", f"bench.run={RUN}"]
    for l in labels:
        args += ["--label", l]
    for e in env:
        args += ["-e", e]
    if restart:
        args += ["--restart", restart]
    sh(*args, IMAGE)
    return shared


def crash(shared, name):
    d = os.path.join(shared, "workers", name)
    os.makedirs(d, exist_ok=True)
    # Whole, by a rename: a worker that reads a half-written fault file ignores it.
    with open(os.path.join(d, ".fault.tmp"), "w") as f:
        f.write("crash")
    os.replace(os.path.join(d, ".fault.tmp"), os.path.join(d, "fault"))


def cleanup(ns=None):
    ids = sh("docker", "ps", "-aq", "--filter", f"label=bench.run={RUN}", check=False).split()
    if ids:
        sh("docker", "rm", "-f", *ids, check=False)
    if ns:
        # The local stack has no namespace controller: delete what is in the namespace first.
        sh("kubectl", "delete", "workers,workerrecoveries,resumeplans", "--all", "-n", ns,
           "--wait=false", check=False)
        sh("kubectl", "delete", "namespace", ns, "--wait=false", check=False)


def restart_bench():
    ns = f"bench-restart-{RUN}"
    sh("kubectl", "create", "namespace", ns)
    root = tempfile.mkdtemp(prefix="wro-bench-")
    names = {m: [f"b{RUN[-5:]}-{m}-{i}" for i in range(CONTAINERS)] for m in ("operator", "docker", "poller")}
    events = subprocess.Popen(
        ["docker", "events", "--filter", f"label=bench.run={RUN}", "--filter", "event=die",
         "--filter", "event=start", "--format", "{{.TimeNano}} {{.Action}} {{.Actor.Attributes.name}}"],
        stdout=subprocess.PIPE, text=True)
    seen = []
    threading.Thread(target=lambda: [seen.append(l.split()) for l in events.stdout], daemon=True).start()
    shared = {}
    yaml = ""
    for n in names["operator"]:
        shared[n] = start_worker(n, root, labels=[f"{LABEL}={ns}/{n}"])
        yaml += worker_yaml(ns, n, n, shared[n])
    for n in names["docker"]:
        shared[n] = start_worker(n, root, restart="on-failure")
    for n in names["poller"]:
        shared[n] = start_worker(n, root, labels=["bench.group=poller"])
    kubectl_apply(yaml)
    op = Operator(ns, root, os.path.join(root, "operator.log"))
    stop = threading.Event()

    def poller():
        while not stop.is_set():
            ids = sh("docker", "ps", "-aq", "--filter", "label=bench.group=poller",
                     "--filter", f"label=bench.run={RUN}", "--filter", "status=exited", check=False).split()
            if ids:
                sh("docker", "start", *ids, check=False)
            stop.wait(5)
    threading.Thread(target=poller, daemon=True).start()
    rounds = (CRASHES + CONTAINERS - 1) // CONTAINERS
    time.sleep(12)
    try:
        for r in range(rounds):
            for n in sum(names.values(), []):
                crash(shared[n], n)
            # Wait until every container runs again and has run 11 s (Docker's reset is 10 s).
            deadline = time.time() + 60
            while time.time() < deadline:
                running = sh("docker", "ps", "-q", "--filter", f"label=bench.run={RUN}").split()
                if len(running) == 3 * CONTAINERS:
                    break
                time.sleep(0.5)
            time.sleep(11)
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)
    finally:
        stop.set()
        op.stop()
        events.terminate()
        cleanup(ns)
    latencies = {m: [] for m in names}
    pending = {}
    for t, action, name in seen:
        if action == "die":
            pending[name] = int(t)
        elif action == "start" and name in pending:
            method = name.split("-")[1]
            latencies[method].append((int(t) - pending.pop(name)) / 1e6)
    print("\n## crash to running again (ms)")
    print(f"| method | n | p50 | p95 | min | max |\n|---|---|---|---|---|---|")
    for m, v in latencies.items():
        if v:
            print(f"| {m} | {len(v)} | {pct(v, 50):.0f} | {pct(v, 95):.0f} | {min(v):.0f} | {max(v):.0f} |")
    o, d = latencies["operator"], latencies["docker"]
    if o and d:
        print(f"\noperator / docker: p50 {pct(o, 50) / pct(d, 50):.2f}x, p95 {pct(o, 95) / pct(d, 95):.2f}x")
    shutil.rmtree(root, ignore_errors=True)


def deadline_bench(samples=5):
    ns = f"bench-deadline-{RUN}"
    sh("kubectl", "create", "namespace", ns)
    root = tempfile.mkdtemp(prefix="wro-bench-")
    op = Operator(ns, root, os.path.join(root, "operator.log"))
    lags = []
    try:
        for i in range(samples):
            n = f"d{RUN[-5:]}-{i}"
            s = start_worker(n, root, labels=[f"{LABEL}={ns}/{n}"])
            kubectl_apply(worker_yaml(ns, n, n, s, auto=False, timeout=5))
            while json.loads(sh("kubectl", "get", "-n", ns, "worker", n, "-o", "json")).get("status", {}).get("phase") != "Healthy":
                time.sleep(0.2)
            crash_dir = os.path.join(s, "workers", n)
            with open(os.path.join(crash_dir, ".fault.tmp"), "w") as f:
                f.write("hang")
            os.replace(os.path.join(crash_dir, ".fault.tmp"), os.path.join(crash_dir, "fault"))
            time.sleep(1.5)
            hb = json.load(open(os.path.join(crash_dir, "heartbeat.json")))["timestamp"]
            last = float(sh("date", "-u", "-d", hb, "+%s.%N"))
            while True:
                w = json.loads(sh("kubectl", "get", "-n", ns, "worker", n, "-o", "json"))
                c = [c for c in w.get("status", {}).get("conditions", []) if c["type"] == "HeartbeatFresh"]
                if c and c[0]["status"] == "False":
                    lags.append(time.time() - (last + 5))
                    break
                time.sleep(0.1)
    finally:
        op.stop()
        cleanup(ns)
    print("\n## heartbeat deadline to HeartbeatFresh=False (s, observed by polling every 0.1 s)")
    print("samples: " + ", ".join(f"{x:.2f}" for x in lags))
    print(f"p50 {pct(lags, 50):.2f} s, max {max(lags):.2f} s")
    shutil.rmtree(root, ignore_errors=True)


def apiserver_requests():
    text = sh("kubectl", "get", "--raw", "/metrics")
    total = 0.0
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def keep_beating(paths, stop):
    """Rewrite each heartbeat file every 2 s, as live idle workers do."""
    while not stop.is_set():
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        for p in paths:
            tmp = p + ".tmp"
            with open(tmp, "w") as f:
                f.write(json.dumps({"timestamp": now, "status": "idle", "progress": 0}))
            os.replace(tmp, p)
        stop.wait(2)


def scale_workers(ns, root):
    """Apply the Workers; returns the heartbeat files to keep fresh (file-only mode)."""
    yaml, beats = "", []
    for i in range(WORKERS):
        n = f"s{i:04d}"
        if i < REAL and not FILE_ONLY:
            c = f"s{RUN[-5:]}-{i}"
            shared = start_worker(c, root, labels=[f"{LABEL}={ns}/{n}"])
            os.makedirs(os.path.join(shared, "workers"), exist_ok=True)
            yaml += worker_yaml(ns, n, c, shared).replace(f"workerName: {n}", f"workerName: {c}")
        else:
            hb = os.path.join(root, n, "workers", n)
            os.makedirs(hb, exist_ok=True)
            beats.append(os.path.join(hb, "heartbeat.json"))
            yaml += worker_yaml(ns, n, f"absent-{n}", os.path.join(root, n))
        if (i + 1) % 200 == 0:
            kubectl_apply(yaml)
            yaml = ""
    if yaml:
        kubectl_apply(yaml)
    return beats if FILE_ONLY else []


def scale_bench():
    ns = f"bench-scale-{RUN}"
    sh("kubectl", "create", "namespace", ns)
    root = tempfile.mkdtemp(prefix="wro-bench-")
    beats = scale_workers(ns, root)
    stop = threading.Event()
    threading.Thread(target=keep_beating, args=(beats, stop), daemon=True).start()
    extra = ["--file-only-worker", f"{ns}/*"] if FILE_ONLY else []
    results = {}
    try:
        for attempt in ("first start", "restart"):
            started = time.time()
            op = Operator(ns, root, os.path.join(root, "operator.log"), extra)
            # Looked at: the Worker controller's own count of reconciles (a look that finds
            # nothing new writes no status, so lastObservedTime cannot tell).
            while op.worker_reconciles() < WORKERS:
                time.sleep(0.5)
            results[f"all {WORKERS} looked at after the {attempt} (s)"] = round(time.time() - started, 1)
            if attempt == "restart":
                time.sleep(10)
                r0, c0, a0 = op.rss_kib(), op.cpu_seconds(), apiserver_requests()
                time.sleep(IDLE)
                r1, c1, a1 = op.rss_kib(), op.cpu_seconds(), apiserver_requests()
                results["RSS (MiB)"] = round(max(r0, r1) / 1024, 1)
                results["idle CPU (% of a core)"] = round(100 * (c1 - c0) / IDLE, 2)
                # The two /metrics reads of this measurement are requests too; subtracted.
                results["API requests per minute when idle"] = round((a1 - a0 - 1) * 60 / IDLE, 1)
            op.stop()
    finally:
        stop.set()
        cleanup(ns)
    mode = "file-only, all healthy" if FILE_ONLY else f"{REAL} with real containers"
    print(f"\n## {WORKERS} Workers, {mode}, idle window {IDLE} s, "
          f"status refresh {os.environ.get('WRO_STATUS_REFRESH_SECONDS', 'default')}")
    for k, v in results.items():
        print(f"| {k} | {v} |")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) > 1 else "all"
    if mode in ("restart", "all"):
        restart_bench()
    if mode in ("deadline", "all"):
        deadline_bench()
    if mode in ("scale", "all"):
        scale_bench()
