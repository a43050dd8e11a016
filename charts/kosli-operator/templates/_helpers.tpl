{{/* The chart name. */}}
{{- define "kosli-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The prefix of every resource name: the release name, plus the chart name unless it is already in it. */}}
{{- define "kosli-operator.fullname" -}}
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

{{- define "kosli-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kosli-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kosli-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "kosli-operator.labels" -}}
helm.sh/chart: {{ include "kosli-operator.chart" . }}
{{ include "kosli-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "kosli-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "kosli-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Whether to create the RBAC: rbac.create when set, else as serviceAccount.create does
(as Kosli's k8s-reporter chart, which creates no RBAC for a ServiceAccount it did not create). */}}
{{- define "kosli-operator.rbacCreate" -}}
{{- if kindIs "bool" .Values.rbac.create }}{{ .Values.rbac.create }}{{ else }}{{ .Values.serviceAccount.create }}{{ end }}
{{- end }}

{{/* A securityContext without its null keys, at any depth, as JSON. Helm drops a null only
where the chart has a default for the key; elsewhere (fsGroup) it would reach the
manifest as null. Null means "left to the platform", e.g. OpenShift's SCC picking the
uid, gid and fsGroup from the namespace's range. */}}
{{- define "kosli-operator.withoutNulls" -}}
{{- $out := dict }}
{{- range $key, $value := . }}
{{- if kindIs "map" $value }}
{{- $_ := set $out $key (include "kosli-operator.withoutNulls" $value | fromJson) }}
{{- else if not (kindIs "invalid" $value) }}
{{- $_ := set $out $key $value }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Where the registry CA bundle of the gate comes from: gate.registryCA, else customCA
(a TLS-inspecting proxy's or a corporate CA is usually the registries' too). Empty: none.
The operator takes one bundle file, so with both set gate.registryCA is used. */}}
{{- define "kosli-operator.registryCABundle" -}}
{{- if .Values.gate.registryCA.enabled }}/etc/kosli-operator/registry-ca/ca.crt
{{- else if .Values.customCA.enabled }}/etc/kosli-operator/custom-ca/ca.crt
{{- end }}
{{- end }}

{{- define "kosli-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* Namespaces whose pods the operator watches: explicit, or the release namespace when permissionScope is "namespace". */}}
{{- define "kosli-operator.watchNamespaces" -}}
{{- $list := .Values.reporterConfig.watchNamespaces }}
{{- if and (not $list) (eq .Values.serviceAccount.permissionScope "namespace") }}
{{- $list = list .Release.Namespace }}
{{- end }}
{{- toJson $list }}
{{- end }}

{{/* The environment selector as k=v,k=v (sorted keys). */}}
{{- define "kosli-operator.environmentSelector" -}}
{{- $terms := list }}
{{- range $k, $v := .Values.reporterConfig.environmentSelector }}
{{- $terms = append $terms (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $terms }}
{{- end }}

{{/* The webhook Service name and the Secret holding its certificate. */}}
{{- define "kosli-operator.webhookService" -}}
{{- printf "%s-webhook" (include "kosli-operator.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "kosli-operator.webhookSecret" -}}
{{- printf "%s-webhook-tls" (include "kosli-operator.fullname" .) | trunc 253 }}
{{- end }}

{{/* The Secret and key holding the CA of the API server's client certificate. */}}
{{- define "kosli-operator.webhookClientCASecret" -}}
{{- .Values.gate.clientAuth.caSecret | default (printf "%s-webhook-client-ca" (include "kosli-operator.fullname" .) | trunc 253) }}
{{- end }}

{{- define "kosli-operator.webhookClientCAKey" -}}
{{- if .Values.gate.clientAuth.caSecret }}{{ .Values.gate.clientAuth.caKey }}{{ else }}ca.crt{{ end }}
{{- end }}

{{/* Sanity checks of value combinations the schema cannot express. */}}
{{- define "kosli-operator.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.leaderElection.enabled) }}
{{- fail "replicaCount > 1 needs leaderElection.enabled: two reporters on one environment would make its snapshots flip" }}
{{- end }}
{{- if regexMatch "(^|/)kosli-dev/cli$" .Values.image.repository }}
{{- fail (printf "image.repository %s is the Kosli CLI, the k8s-reporter chart's image: leave image.* out of values copied from that chart" .Values.image.repository) }}
{{- end }}
{{- if and .Values.customCA.enabled (not .Values.customCA.secretName) }}
{{- fail "customCA.secretName is required when customCA.enabled" }}
{{- end }}
{{- if and .Values.gate.registryCA.enabled (not .Values.gate.registryCA.secretName) }}
{{- fail "gate.registryCA.secretName is required when gate.registryCA.enabled" }}
{{- end }}
{{- if and .Values.gate.clientAuth.enabled (not .Values.gate.clientAuth.caSecret) (not .Values.gate.clientAuth.caBundle) }}
{{- fail "gate.clientAuth.enabled needs gate.clientAuth.caSecret or gate.clientAuth.caBundle (the CA of the API server's client certificate)" }}
{{- end }}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) }}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled" }}
{{- end }}
{{- if and (not .Values.kosliApiToken.secretName) (not .Values.reporterConfig.dryRun) }}
{{- fail "kosliApiToken.secretName is required (unless reporterConfig.dryRun)" }}
{{- end }}
{{- end }}

{{/* The ConfigMap of the environments with permissionScope "namespace". */}}
{{- define "kosli-operator.environmentsConfigMap" -}}
{{- printf "%s-environments" (include "kosli-operator.fullname" .) | trunc 253 }}
{{- end }}
