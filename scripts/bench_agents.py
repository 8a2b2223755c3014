"""Driver of scripts/bench-agents.sh: ten per-node agents (issue 15), see its header."""

import json, os, shutil, signal, subprocess, sys, tempfile, threading, time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_autoheal as b  # noqa: E402  (sh, worker_yaml, free_port, apiserver_requests, ...)

NODES = int(os.environ.get("NODES", "10"))
PER_NODE = int(os.environ.get("PER_NODE", "1000"))
IDLE = int(os.environ.get("IDLE_SECONDS", "120"))
TIMEOUT = int(os.environ.get("HEARTBEAT_TIMEOUT", "120"))
BEAT_EVERY = int(os.environ.get("BEAT_EVERY", "30"))
CHUNK = int(os.environ.get("CHUNK", "500"))
# The first STALE Workers of each node get no heartbeat: not healthy, so their agent writes an
# Event about them, whose reportingInstance (POD_NAME) names the agent that looked.
STALE = int(os.environ.get("STALE", "1"))
RUN = b.RUN


class Agent(b.Operator):
    """One per-node agent: the operator with --node-name and its own POD_NAME."""

    def __init__(self, ns, root, node, log, extra):
        self.node = node
        self.log = open(log, "a")
        self.addr = f"127.0.0.1:{b.free_port()}"
        self.proc = subprocess.Popen(
            [b.OPERATOR, "run", "--listen", self.addr, "--log-format", "json",
             "--namespace", ns, "--allowed-root", root, "--node-name", node, *extra],
            stdout=self.log, stderr=self.log,
            env={**os.environ, "RUST_LOG": "warn", "POD_NAME": f"agent-{node}"})


def keep_beating(paths, stop):
    while not stop.is_set():
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = json.dumps({"timestamp": now, "status": "idle", "progress": 0})
        for p in paths:
            with open(p + ".tmp", "w") as f:
                f.write(body)
            os.replace(p + ".tmp", p)
        stop.wait(BEAT_EVERY)


def make_workers(ns, root):
    """PER_NODE file-only Workers on each of NODES nodes, heartbeats written once before apply."""
    docs, beats = [], []
    for n in range(NODES):
        for i in range(PER_NODE):
            name = f"n{n}-w{i:04d}"
            hb = os.path.join(root, name, "workers", name)
            os.makedirs(hb, exist_ok=True)
            if i >= STALE:
                beats.append(os.path.join(hb, "heartbeat.json"))
            docs.append(b.worker_yaml(ns, name, f"absent-{name}", os.path.join(root, name),
                                      timeout=TIMEOUT, extra=f"  nodeName: node-{n}\n"))
    stop = threading.Event()
    keep = threading.Thread(target=keep_beating, args=(beats, stop), daemon=True)
    keep.start()
    chunks = ["".join(docs[i:i + CHUNK]) for i in range(0, len(docs), CHUNK)]
    t0 = time.time()
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(b.kubectl_apply, chunks))
    print(f"applied {len(docs)} Workers in {time.time() - t0:.1f} s", file=sys.stderr, flush=True)
    return stop


def start_all(ns, root, extra):
    return [Agent(ns, root, f"node-{n}", os.path.join(root, f"agent-{n}.log"), extra)
            for n in range(NODES)]


def wait_all(agents, limit=300):
    """Seconds until each agent's reconcile counter reaches PER_NODE (None if not in limit)."""
    started, done = time.time(), {}
    while len(done) < len(agents) and time.time() - started < limit:
        for a in agents:
            if a.node not in done and a.worker_reconciles() >= PER_NODE:
                done[a.node] = round(time.time() - started, 1)
        time.sleep(0.5)
    return done, {a.node: a.worker_reconciles() for a in agents}


def events_by_instance(ns):
    """(reportingInstance, the Worker's node) for the Events of the namespace."""
    out = b.sh("kubectl", "get", "events.events.k8s.io", "-n", ns, "-o", "json", check=False)
    pairs = {}
    try:
        for e in json.loads(out)["items"]:
            inst = e.get("reportingInstance", "")
            obj = (e.get("regarding") or {}).get("name", "")
            node = "node-" + obj.split("-")[0][1:] if obj.startswith("n") else "?"
            pairs[(inst, node)] = pairs.get((inst, node), 0) + 1
    except (ValueError, KeyError):
        pass
    return pairs


def main():
    ns = f"bench-agents-{RUN}"
    b.sh("kubectl", "create", "namespace", ns)
    root = tempfile.mkdtemp(prefix="wro-bench-agents-")
    extra = ["--file-only-worker", f"{ns}/*"]
    stop = make_workers(ns, root)
    res, agents = {}, []
    try:
        agents = start_all(ns, root, extra)
        done, counts = wait_all(agents)
        res["first start: all looked at (s)"] = max(done.values()) if len(done) == NODES else f"incomplete {done}"
        res["first start: reconcile counters"] = counts
        for a in agents:
            a.stop()
        time.sleep(2)
        t0 = time.time()
        agents = start_all(ns, root, extra)
        done, counts = wait_all(agents)
        res["restart: per-agent time to look at its Workers (s)"] = done
        res[f"restart: all {NODES * PER_NODE} looked at (s)"] = round(max(done.values()), 1) if len(done) == NODES else "incomplete"
        res["restart: reconcile counters when all done"] = counts
        time.sleep(10)
        c_all = {a.node: a.worker_reconciles() for a in agents}
        res["restart: reconcile counters 10 s later"] = c_all
        r0 = {a.node: a.rss_kib() for a in agents}
        cpu0 = {a.node: a.cpu_seconds() for a in agents}
        api0, w0 = b.apiserver_requests(), time.time()
        time.sleep(IDLE)
        api1, w1 = b.apiserver_requests(), time.time()
        cpu1 = {a.node: a.cpu_seconds() for a in agents}
        r1 = {a.node: a.rss_kib() for a in agents}
        win = w1 - w0
        rss = [max(r0[n], r1[n]) / 1024 for n in r0]
        cpu = [100 * (cpu1[n] - cpu0[n]) / win for n in cpu0]
        res["idle window (s)"] = round(win, 1)
        res["RSS per agent (MiB) avg / max"] = f"{sum(rss) / len(rss):.1f} / {max(rss):.1f}"
        res["idle CPU per agent (% of a core) avg / max"] = f"{sum(cpu) / len(cpu):.2f} / {max(cpu):.2f}"
        res["idle CPU, all agents (% of a core)"] = round(sum(cpu), 2)
        res["API requests per minute when idle (all agents)"] = round((api1 - api0 - 1) * 60 / win, 1)
        c_end = {a.node: a.worker_reconciles() for a in agents}
        res["reconciles per agent during the idle window"] = {n: c_end[n] - c_all[n] for n in c_end}
        res["per-agent RSS (MiB)"] = {n: round(max(r0[n], r1[n]) / 1024, 1) for n in r0}
        res["per-agent idle CPU (%)"] = {n: round(100 * (cpu1[n] - cpu0[n]) / win, 2) for n in cpu0}
        res["Events (reportingInstance, Worker's node): count"] = {
            f"{k[0]} -> {k[1]}": v for k, v in events_by_instance(ns).items()}
    finally:
        for a in agents:
            if a.proc.poll() is None:
                a.stop()
        stop.set()
        print(json.dumps(res, indent=1), flush=True)
        b.sh("kubectl", "delete", "workers", "--all", "-n", ns, "--wait=false", check=False)
        b.sh("kubectl", "delete", "namespace", ns, "--wait=false", check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
