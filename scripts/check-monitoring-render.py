#!/usr/bin/env python3
"""Check the chart's monitoring objects as rendered with monitoring.coreos.com/v1 available.

Usage: check-monitoring-render.py RENDERED.yaml RULES.yaml RUNBOOK_BASE_URL DASHBOARD.json

The PrometheusRule holds exactly the groups of the plain rules file, every runbook_url rewritten
to RUNBOOK_BASE_URL; the ServiceMonitor scrapes /metrics through a Service that selects the
operator's pods by the port the pods name "http"; the dashboard ConfigMap, labelled for
Grafana's sidecar, holds the dashboard file. Exits non-zero with what differs.
"""
import json
import sys

import yaml


def main(rendered_path, rules_path, base, dashboard_path):
    docs = [d for d in yaml.safe_load_all(open(rendered_path)) if d]
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    problems = []

    def check(cond, what):
        if not cond:
            problems.append(what)

    rules = yaml.safe_load(open(rules_path))
    for group in rules["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"]["runbook_url"]
            check(url.startswith("README.md#alert-"), f"{rule['alert']}: runbook_url {url} in the file")
            rule["annotations"]["runbook_url"] = url.replace("README.md#", base + "#", 1)
    prs = by_kind.get("PrometheusRule", [])
    check(len(prs) == 1, f"one PrometheusRule, found {len(prs)}")
    if prs:
        check(prs[0]["spec"] == {"groups": rules["groups"]}, "PrometheusRule groups == the rules file's, URLs rewritten")
    sms = by_kind.get("ServiceMonitor", [])
    svcs = [s for s in by_kind.get("Service", []) if s["metadata"]["name"].endswith("-metrics")]
    workloads = by_kind.get("DaemonSet", []) + by_kind.get("Deployment", [])
    check(len(sms) == 1 and len(svcs) == 1 and len(workloads) == 1, "one ServiceMonitor, one metrics Service, one workload")
    if sms and svcs and workloads:
        sm, svc, wl = sms[0], svcs[0], workloads[0]
        pod_labels = wl["spec"]["template"]["metadata"]["labels"]
        check(all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items()), "the Service selects the pods")
        check(all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()), "the ServiceMonitor selects the Service")
        ports = [p["name"] for c in wl["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
        check("http" in ports and svc["spec"]["ports"][0]["targetPort"] == "http", "Service targets the pods' http port")
        ep = sm["spec"]["endpoints"][0]
        check(ep["port"] == "http" and ep["path"] == "/metrics", "ServiceMonitor scrapes http /metrics")
    dashboards = [c for c in by_kind.get("ConfigMap", []) if c["metadata"]["labels"].get("grafana_dashboard") == "1"]
    check(len(dashboards) == 1, f"one ConfigMap labelled grafana_dashboard, found {len(dashboards)}")
    if dashboards:
        data = dashboards[0]["data"]
        check(list(data) == ["worker-recovery.json"], f"one dashboard file, found {list(data)}")
        check(json.loads(next(iter(data.values()))) == json.load(open(dashboard_path)), "the ConfigMap holds the dashboard file")
    for p in problems:
        print(f"check-monitoring-render: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:5]))
