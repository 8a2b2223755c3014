{{/* The release's full name: every object of the release is named after it. */}}
{{- define "wro.fullname" -}}
{{- if contains "worker-recovery-operator" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-worker-recovery-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "wro.selectorLabels" -}}
app.kubernetes.io/name: worker-recovery-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "wro.labels" -}}
{{ include "wro.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "wro.serviceAccountName" -}}
{{- default (include "wro.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/* Every allowed root directory, global and per namespace, once each, sorted: what is mounted. */}}
{{- define "wro.rootDirs" -}}
{{- $dirs := list -}}
{{- range .Values.allowedRoots.global -}}
{{- $dirs = append $dirs . -}}
{{- end -}}
{{- range $ns, $nsDirs := .Values.allowedRoots.perNamespace -}}
{{- range $nsDirs -}}
{{- $dirs = append $dirs . -}}
{{- end -}}
{{- end -}}
{{- $dirs | uniq | sortAlpha | toJson -}}
{{- end -}}

{{/* WRO_ALLOWED_ROOTS: `DIR` for a global root, `NAMESPACE=DIR` for one namespace's. */}}
{{- define "wro.allowedRootsEnv" -}}
{{- $grants := list -}}
{{- range .Values.allowedRoots.global -}}
{{- $grants = append $grants . -}}
{{- end -}}
{{- range $ns, $nsDirs := .Values.allowedRoots.perNamespace -}}
{{- range $nsDirs -}}
{{- $grants = append $grants (printf "%s=%s" $ns .) -}}
{{- end -}}
{{- end -}}
{{- join "," $grants -}}
{{- end -}}

{{- define "wro.caConfigMap" -}}
{{- if .Values.caBundle.existingConfigMap -}}
{{- .Values.caBundle.existingConfigMap -}}
{{- else if .Values.caBundle.pem -}}
{{- printf "%s-ca" (include "wro.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* What the operator does with the API, in the watched namespace or in all of them. */}}
{{- define "wro.rules" -}}
- apiGroups: ["workerrecovery.io"]
  resources: ["workers", "workerrecoveries", "resumeplans"]
  verbs: ["get", "list", "watch"]
# Adding and removing the finalizers of a run that created a debug container and of a
# resume plan that marked its worker recovering.
- apiGroups: ["workerrecovery.io"]
  resources: ["workerrecoveries", "resumeplans"]
  verbs: ["patch"]
# The Resume step of a recovery run creates the ResumePlan it waits for; automatic recovery
# creates a WorkerRecovery per attempt and deletes the oldest beyond its history limit.
- apiGroups: ["workerrecovery.io"]
  resources: ["resumeplans", "workerrecoveries"]
  verbs: ["create"]
- apiGroups: ["workerrecovery.io"]
  resources: ["workerrecoveries"]
  verbs: ["delete"]
- apiGroups: ["workerrecovery.io"]
  resources: ["workers/status", "workerrecoveries/status", "resumeplans/status"]
  verbs: ["get", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# One writer per Worker: the Lease `wro-writer.<worker>` next to each Worker records which
# run, plan or failover may change it.
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["get", "create", "update", "delete"]
# Post-mortems: the ConfigMap `<worker>-postmortems` next to each Worker, written by
# server-side apply.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
{{- end -}}
