{{/* Names, labels and small derived values shared by every template. */}}

{{- define "tether.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tether.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "tether.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tether.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tether.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tether.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: tether
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The platform sandbox (sandbox.enabled): its own name label, so that none of the controller's selectors (Deployment, Service, PodDisruptionBudget, NetworkPolicy) picks its pod. */}}
{{- define "tether.sandboxName" -}}
{{- printf "%s-sandbox" (include "tether.fullname" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{- define "tether.sandboxSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-sandbox" (include "tether.name" . | trunc 55 | trimSuffix "-") }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "tether.sandboxLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tether.sandboxSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: sandbox
app.kubernetes.io/part-of: tether
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The platforms in the order the sandbox serves them; use with (splitList " " (include "tether.platforms" .)). */}}
{{- define "tether.platforms" -}}
render vercel fly supabase
{{- end }}

{{/* The sandbox's base URL for one platform, as the controller's --<platform>-url takes it (Render's ends in /v1, where its API's servers URL does). Call with (dict "root" $ "platform" "render"). */}}
{{- define "tether.sandboxUrl" -}}
{{- $root := .root }}
{{- printf "http://%s.%s.svc:%v%s" (include "tether.sandboxName" $root) $root.Release.Namespace (index $root.Values.sandbox.ports .platform | int) (ternary "/v1" "" (eq .platform "render")) }}
{{- end }}

{{- define "tether.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tether.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tether.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The namespace holding the leader-election Lease (the controller's --lease-namespace default is the pod's namespace). */}}
{{- define "tether.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/* A duration such as "1h30m" or "250ms" in milliseconds (the schema checks the format). */}}
{{- define "tether.durationMs" -}}
{{- $units := dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000 }}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+(ms|s|m|h)" . -1 }}
{{- $total = add $total (mul (regexFind "^[0-9]+" . | int64) (get $units (regexFind "(ms|s|m|h)$" .))) }}
{{- end }}
{{- $total }}
{{- end }}

{{/* Refuse combinations that would install something broken (a pod that exits at start). */}}
{{- define "tether.validate" -}}
{{- if gt (include "tether.durationMs" .Values.minRetryInterval | int64) (include "tether.durationMs" .Values.maxRetryInterval | int64) }}
{{- fail (printf "minRetryInterval (%s) exceeds maxRetryInterval (%s)" .Values.minRetryInterval .Values.maxRetryInterval) }}
{{- end }}
{{- if and (gt (int .Values.replicas) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicas > 1 needs leaderElection.enabled=true: without it every replica reconciles at once" }}
{{- end }}
{{- if .Values.sandbox.enabled }}
{{- $ports := list }}
{{- range $platform, $port := .Values.sandbox.ports }}
{{- $ports = append $ports (int $port) }}
{{- end }}
{{- if ne (len (uniq $ports)) (len $ports) }}
{{- fail (printf "sandbox.ports must be four different ports, one per platform (got %v)" .Values.sandbox.ports) }}
{{- end }}
{{- if has (int .Values.sandbox.edgePort) $ports }}
{{- fail (printf "sandbox.edgePort %v is one of sandbox.ports: the app edge needs a port of its own" .Values.sandbox.edgePort) }}
{{- end }}
{{- end }}
{{- end }}
