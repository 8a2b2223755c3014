#!/usr/bin/env python3
"""Assert what a rendering of charts/worker-recovery-operator must contain for its values.

Usage: check-chart-render.py RENDERED.yaml RELEASE_NAMESPACE [VALUES.yaml ...]

The values files are merged over the chart's values.yaml as helm does (maps deeply, anything
else replaced); the rendering must then hold exactly the workload, RBAC, volumes and env those
values call for. Exits 1 with every failed assertion listed.
"""
import os
import sys

import yaml

CHART = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "charts", "worker-recovery-operator")
ALLOWED_CAPS = {"CHOWN", "DAC_OVERRIDE", "FOWNER"}
LEASE_VERBS = {"get", "create", "update", "patch", "delete"}

failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
    return cond


def merge(base, over):
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = merge(base.get(k), v) if k in base else v
        return out
    return over


def main():
    rendered, release_ns, *value_files = sys.argv[1:]
    with open(os.path.join(CHART, "values.yaml")) as f:
        values = yaml.safe_load(f)
    for vf in value_files:
        with open(vf) as f:
            values = merge(values, yaml.safe_load(f) or {})
    with open(rendered) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)

    mode = values["mode"]
    watch = values.get("watchNamespace") or ""
    roots = values["allowedRoots"]
    global_roots = roots.get("global") or []
    per_ns = roots.get("perNamespace") or {}
    want_dirs = set(global_roots) | {d for dirs in per_ns.values() for d in dirs}
    want_grants = set(global_roots) | {f"{ns}={d}" for ns, dirs in per_ns.items() for d in dirs}

    check("CustomResourceDefinition" not in by_kind, "templates must not render CRDs (they live in crds/)")

    # The workload: a DaemonSet per node, or a Deployment with leader election.
    if mode == "perNode":
        check(len(by_kind.get("DaemonSet", [])) == 1, "perNode: exactly one DaemonSet")
        check("Deployment" not in by_kind, "perNode: no Deployment")
        check("PodDisruptionBudget" not in by_kind, "perNode: no PodDisruptionBudget")
        workloads = by_kind.get("DaemonSet", [])
    else:
        check(len(by_kind.get("Deployment", [])) == 1, "singleHost: exactly one Deployment")
        check("DaemonSet" not in by_kind, "singleHost: no DaemonSet")
        workloads = by_kind.get("Deployment", [])
        for w in workloads:
            check(w["spec"].get("replicas") == values["replicas"], f"singleHost: replicas {values['replicas']}")
        if values["podDisruptionBudget"]["enabled"]:
            check(len(by_kind.get("PodDisruptionBudget", [])) == 1, "singleHost: a PodDisruptionBudget")
    if not workloads:
        return
    w = workloads[0]
    check(w["metadata"]["namespace"] == release_ns, "workload in the release namespace")
    pod = w["spec"]["template"]["spec"]
    (c,) = pod["containers"]

    # Volumes: only the allowed roots (each at its own path), the Docker socket from the node and,
    # with systemd on, its bus socket and journal directories (read-only).
    sd = values["systemd"]
    journals = set(sd["journalDirs"]) if sd["enabled"] else set()
    want_paths = want_dirs | {values["dockerSocket"]} | journals
    if sd["enabled"]:
        want_paths.add(sd["busSocket"])
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    check(
        set(host_paths.values()) == want_paths,
        f"hostPath volumes are exactly the allowed roots, the sockets and the journal: {sorted(host_paths.values())} != {sorted(want_paths)}",
    )
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    for name, path in host_paths.items():
        mounted = mounts.get(name, {}).get("mountPath")
        if path == values["dockerSocket"]:
            check(mounted == "/var/run/docker.sock", "the socket is mounted at /var/run/docker.sock")
        elif sd["enabled"] and path == sd["busSocket"]:
            check(mounted == "/run/dbus/system_bus_socket", "the bus is mounted at /run/dbus/system_bus_socket")
        elif path in journals and path not in want_dirs:
            check(mounted == path and mounts[name].get("readOnly") is True, f"journal {path} read-only at the same path")
        else:
            check(mounted == path, f"root {path} mounted at the same path (got {mounted})")

    # The node's PID namespace only for systemd units' processes.
    want_host_pid = bool(sd["enabled"] and sd.get("hostPID", True))
    check(pod.get("hostPID", False) == want_host_pid, f"hostPID is {want_host_pid} (systemd.enabled and systemd.hostPID)")

    # Environment.
    env = {e["name"]: e for e in c["env"]}

    def value(name):
        return env.get(name, {}).get("value")

    def field(name):
        return env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")

    grants = set(filter(None, (value("WRO_ALLOWED_ROOTS") or "").split(",")))
    check(grants == want_grants, f"WRO_ALLOWED_ROOTS {sorted(grants)} != {sorted(want_grants)}")
    check(value("WRO_NAMESPACE") == (watch or None), f"WRO_NAMESPACE is {watch or 'unset'}")
    check(field("POD_NAME") == "metadata.name", "POD_NAME from metadata.name")
    check(field("POD_NAMESPACE") == "metadata.namespace", "POD_NAMESPACE from metadata.namespace")
    check(value("WRO_LISTEN") == f"0.0.0.0:{values['port']}", "WRO_LISTEN")
    check(value("WRO_LOG_FORMAT") == values["logFormat"], "WRO_LOG_FORMAT")
    check(value("WRO_STATUS_REFRESH_SECONDS") == str(values["statusRefreshSeconds"]), "WRO_STATUS_REFRESH_SECONDS")
    for key, name in (("deny", "WRO_URL_DENY"), ("allow", "WRO_URL_ALLOW")):
        want = ",".join(values["urlPolicy"][key]) or None
        check(value(name) == want, f"{name} is {want}")
    check(value("WRO_FILE_ONLY_WORKERS") == (",".join(values["fileOnlyWorkers"]) or None), "WRO_FILE_ONLY_WORKERS")
    ca = values["caBundle"]
    check(("WRO_CA_FILE" in env) == bool(ca["pem"] or ca["existingConfigMap"]), "WRO_CA_FILE iff a CA bundle")
    check(value("OTEL_EXPORTER_OTLP_ENDPOINT") == (values["tracing"]["otlpEndpoint"] or None), "OTEL endpoint")
    want_bus = "unix:path=/run/dbus/system_bus_socket" if sd["enabled"] else None
    check(value("WRO_SYSTEMD_BUS") == want_bus, "WRO_SYSTEMD_BUS")
    want_journal = ",".join(sd["journalDirs"]) if sd["enabled"] else None
    check(value("WRO_SYSTEMD_JOURNAL_DIRS") == want_journal, "WRO_SYSTEMD_JOURNAL_DIRS")
    for extra in values.get("extraEnv") or []:
        check(env.get(extra["name"]) == extra, f"extraEnv {extra['name']} rendered as given")
    if mode == "perNode":
        check(field("WRO_NODE_NAME") == "spec.nodeName", "perNode: WRO_NODE_NAME from spec.nodeName")
        check("WRO_LEADER_ELECT" not in env, "perNode: no leader election")
    else:
        check("WRO_NODE_NAME" not in env, "singleHost: no WRO_NODE_NAME")
        check(value("WRO_LEADER_ELECT") == "1", "singleHost: WRO_LEADER_ELECT=1")
        check(field("WRO_LEADER_ELECTION_NAMESPACE") == "metadata.namespace", "singleHost: election namespace from the pod")
        election = values["leaderElection"]
        check(value("WRO_LEADER_ELECTION_LEASE_SECONDS") == str(election["leaseSeconds"]), "singleHost: lease seconds")
        check(value("WRO_LEADER_ELECTION_RENEW_SECONDS") == str(election["renewSeconds"]), "singleHost: renew seconds")

    # Security: root, but no more than the socket and the workers' files need.
    sc = c.get("securityContext", {})
    check(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
    check(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
    check(not sc.get("privileged"), "not privileged")
    caps = sc.get("capabilities", {})
    check(caps.get("drop") == ["ALL"], "capabilities: drop ALL")
    want_caps = ALLOWED_CAPS | ({"SYSLOG"} if sd["enabled"] else set()) | ({"SYS_PTRACE"} if want_host_pid else set())
    check(set(caps.get("add", [])) == want_caps, f"capabilities added: {sorted(caps.get('add', []))} != {sorted(want_caps)}")
    seccomp = (sc.get("seccompProfile") or pod.get("securityContext", {}).get("seccompProfile") or {}).get("type")
    check(seccomp == "RuntimeDefault", "seccomp RuntimeDefault")
    check(not pod.get("hostIPC"), "no hostIPC")

    # RBAC: namespaced when one namespace is watched, cluster-wide only when all are.
    sa = pod["serviceAccountName"]
    roles = by_kind.get("Role", [])
    election = [r for r in roles if r["metadata"]["name"].endswith("-leader-election")]
    main_roles = [r for r in roles if r not in election]
    if watch:
        check("ClusterRole" not in by_kind and "ClusterRoleBinding" not in by_kind, "one namespace: no ClusterRole(Binding)")
        check(len(main_roles) == 1 and main_roles[0]["metadata"]["namespace"] == watch, f"one namespace: a Role in {watch}")
        rb = [b for b in by_kind.get("RoleBinding", []) if b["roleRef"]["kind"] == "Role" and b["metadata"]["namespace"] == watch and not b["metadata"]["name"].endswith("-leader-election")]
        check(len(rb) == 1, f"one namespace: a RoleBinding in {watch}")
        bindings = rb
        rules = main_roles[0]["rules"] if main_roles else []
    else:
        check(len(by_kind.get("ClusterRole", [])) == 1 and len(by_kind.get("ClusterRoleBinding", [])) == 1, "all namespaces: a ClusterRole and a ClusterRoleBinding")
        check(not main_roles, "all namespaces: no namespaced Role besides leader election")
        bindings = by_kind.get("ClusterRoleBinding", [])
        rules = by_kind.get("ClusterRole", [{}])[0].get("rules", [])
    for b in bindings:
        check(b["subjects"] == [{"kind": "ServiceAccount", "name": sa, "namespace": release_ns}], "binding names the pod's ServiceAccount")
    check(any("workers" in r["resources"] and "watch" in r["verbs"] for r in rules), "RBAC: watch workers")
    check(any("workers/status" in r["resources"] and "patch" in r["verbs"] for r in rules), "RBAC: patch workers/status")
    check(any("configmaps" in r["resources"] and {"get", "create", "patch"} <= set(r["verbs"]) for r in rules), "RBAC: write the post-mortem ConfigMaps")
    if mode == "singleHost":
        ok = len(election) == 1 and election[0]["metadata"]["namespace"] == release_ns
        check(ok, "singleHost: a leader-election Role in the release namespace")
        if ok:
            lease = [r for r in election[0]["rules"] if "leases" in r["resources"]]
            check(lease and set(lease[0]["verbs"]) == LEASE_VERBS, f"leader election: leases {sorted(LEASE_VERBS)}")
    else:
        check(not election, "perNode: no leader-election Role")


if __name__ == "__main__":
    main()
    if failures:
        for f in failures:
            print(f"FAIL: {f}", file=sys.stderr)
        sys.exit(1)
