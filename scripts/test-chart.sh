#!/usr/bin/env bash
# Tests of the Helm chart (charts/worker-recovery-operator), against the running local stack:
#   * the chart's CRDs (copies, not links) are byte for byte those of crds/: after
#     'cargo run -- crdgen' writes both (a unit test checks it too);
#   * helm lint --strict of the defaults and of every ci/*-values.yaml, and the schema refusing
#     bad values;
#   * helm template with no cluster reachable, then scripts/check-chart-render.py: the rendered
#     workload, RBAC, hostPath volumes and env are what the values call for;
#   * kubectl apply --dry-run=server of every rendering: the API server validates the objects.
# helm is built from hack/helm on first use (scripts/stack.sh helm). Needs 'scripts/stack.sh up'.
# It creates the namespaces the renderings live in (wro-chart-test and the watched ones) and
# leaves them: nothing else is created.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

CHART=charts/worker-recovery-operator
RELEASE=wro
RELEASE_NS=wro-chart-test
KUBECTL=.stack/bin/kubectl
export KUBECONFIG="${KUBECONFIG:-${PWD}/.stack/kubeconfig}"
HELM="$(bash scripts/stack.sh helm)"
OUT="$(mktemp -d)"
trap 'rm -rf "${OUT}"' EXIT
# helm keeps no state of ours: its cache, config and data under the temp dir.
export HELM_CACHE_HOME="${OUT}/helm/cache" HELM_CONFIG_HOME="${OUT}/helm/config" HELM_DATA_HOME="${OUT}/helm/data"

failed=0
ok() { printf '  ok   %s\n' "$*"; }
fail() {
	printf '  FAIL %s\n' "$*" >&2
	failed=1
}

echo "chart CRDs are crds/"
if [[ -n "$(find "${CHART}/crds" -type l)" ]]; then
	fail "${CHART}/crds holds symbolic links: helm packages copies, keep copies"
elif diff -r crds "${CHART}/crds" >"${OUT}/crd.diff"; then
	ok "${CHART}/crds == crds/"
else
	cat "${OUT}/crd.diff" >&2
	fail "${CHART}/crds differs from crds/: run 'cargo run -- crdgen' (it writes both)"
fi

# Each case: a name and its values files (none: the defaults).
cases=("defaults")
for f in "${CHART}"/ci/*-values.yaml; do cases+=("${f}"); done

echo "helm lint --strict, helm template (no cluster), rendered assertions"
for c in "${cases[@]}"; do
	name="$(basename "${c}" -values.yaml)"
	args=()
	[[ "${c}" == defaults ]] || args=(-f "${c}")
	if "${HELM}" lint --strict --namespace "${RELEASE_NS}" "${CHART}" "${args[@]}" >"${OUT}/${name}.lint" 2>&1; then
		ok "lint ${name}"
	else
		cat "${OUT}/${name}.lint" >&2
		fail "lint ${name}"
	fi
	# Rendering must not need a cluster: no kubeconfig at all.
	if KUBECONFIG=/nonexistent "${HELM}" template "${RELEASE}" "${CHART}" --namespace "${RELEASE_NS}" "${args[@]}" >"${OUT}/${name}.yaml" 2>"${OUT}/${name}.err"; then
		ok "template ${name}"
	else
		cat "${OUT}/${name}.err" >&2
		fail "template ${name}"
		continue
	fi
	if python3 scripts/check-chart-render.py "${OUT}/${name}.yaml" "${RELEASE_NS}" "${args[@]:1}"; then
		ok "assertions ${name}"
	else
		fail "assertions ${name}"
	fi
done

echo "the schema and the assertions refuse what they must"
bad_values=(
	"--set mode=everywhere"
	"--set-json allowedRoots.global=[\"relative/dir\"]"
	"--set-json allowedRoots.global=[\"/a,b\"]"
	"--set-json allowedRoots.perNamespace={\"Team_A\":[\"/x\"]}"
	"--set replicas=0"
	"--set unknownKey=1"
	"--set urlPolicy.deny[0]=not-a-cidr"
	"--set fileOnlyWorkers[0]=no-slash"
	"--set logFormat=xml"
)
set -f # the entries hold [ ] and * meant for helm, not for the shell
for b in "${bad_values[@]}"; do
	# shellcheck disable=SC2086 # each entry is a flag and its argument
	if "${HELM}" lint --strict "${CHART}" ${b} >"${OUT}/bad.lint" 2>&1; then
		fail "lint accepted ${b}"
	elif grep -q "values don't meet the specifications of the schema" "${OUT}/bad.lint"; then
		ok "lint refuses ${b}"
	else
		cat "${OUT}/bad.lint" >&2
		fail "lint failed on ${b}, but not on the schema"
	fi
done
set +f
# A rule the schema cannot say (one value less than another): the template refuses it (helm
# lint only logs a template's fail, so this is helm template).
if "${HELM}" template x "${CHART}" --set leaderElection.renewSeconds=15 >"${OUT}/bad.render" 2>&1; then
	fail "template accepted a renew interval as long as the lease"
elif grep -q "must be less than leaderElection.leaseSeconds" "${OUT}/bad.render"; then
	ok "template refuses --set leaderElection.renewSeconds=15 (the lease is 15 s)"
else
	cat "${OUT}/bad.render" >&2
	fail "template failed on the renew interval, but not with its message"
fi
# Monitoring: the PrometheusRule and ServiceMonitor only where their CRDs exist; there, the
# rules file's groups with the runbook URLs rewritten.
RULES="${CHART}/files/alert-rules.yaml"
if "${HELM}" template x "${CHART}" | grep -q "kind: PrometheusRule\|kind: ServiceMonitor"; then
	fail "PrometheusRule or ServiceMonitor rendered without monitoring.coreos.com/v1"
else
	ok "no PrometheusRule or ServiceMonitor without monitoring.coreos.com/v1"
fi
"${HELM}" template x "${CHART}" --api-versions monitoring.coreos.com/v1 \
	--set monitoring.runbookBaseUrl=https://docs.example.org/wro/README.md >"${OUT}/monitoring.yaml"
if python3 scripts/check-monitoring-render.py "${OUT}/monitoring.yaml" "${RULES}" https://docs.example.org/wro/README.md \
	"${CHART}/files/dashboard.json"; then
	ok "PrometheusRule = ${RULES} (runbook URLs rewritten), ServiceMonitor -> Service -> pods, dashboard ConfigMap"
else
	fail "the monitoring objects do not match the rules file and the pods"
fi
# The defaults' rendering checked as if it were singleHost: the assertions must catch it.
printf 'mode: singleHost\n' >"${OUT}/wrong-mode.yaml"
if python3 scripts/check-chart-render.py "${OUT}/defaults.yaml" "${RELEASE_NS}" "${OUT}/wrong-mode.yaml" 2>/dev/null; then
	fail "check-chart-render.py accepted a DaemonSet rendering for mode singleHost"
else
	ok "check-chart-render.py refuses a rendering that does not match its values"
fi

echo "kubectl apply --dry-run=server (kube-apiserver validates every object)"
for c in "${cases[@]}"; do
	name="$(basename "${c}" -values.yaml)"
	[[ -s "${OUT}/${name}.yaml" ]] || continue
	# The namespaces the objects live in must exist, even for a dry run.
	for ns in $(awk '$1 == "namespace:" { print $2 }' "${OUT}/${name}.yaml" | sort -u); do
		"${KUBECTL}" get namespace "${ns}" >/dev/null 2>&1 || "${KUBECTL}" create namespace "${ns}" >/dev/null
	done
	if "${KUBECTL}" apply --dry-run=server -f "${OUT}/${name}.yaml" >"${OUT}/${name}.apply" 2>&1; then
		ok "dry-run ${name}: $(wc -l <"${OUT}/${name}.apply") objects accepted"
	else
		cat "${OUT}/${name}.apply" >&2
		fail "dry-run ${name}"
	fi
done

if ((failed)); then
	echo "chart tests FAILED" >&2
	exit 1
fi
echo "chart tests passed"
