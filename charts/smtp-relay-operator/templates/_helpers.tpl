{{/* Names and labels shared by every template. */}}

{{- define "smtp-relay-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or just <release> when it already contains the chart name, so
`helm install smtp-relay-operator .` does not yield "smtp-relay-operator-smtp-relay-operator".
*/}}
{{- define "smtp-relay-operator.fullname" -}}
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

{{- define "smtp-relay-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: never change between upgrades (a Deployment's selector is immutable). */}}
{{- define "smtp-relay-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "smtp-relay-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "smtp-relay-operator.labels" -}}
helm.sh/chart: {{ include "smtp-relay-operator.chart" . }}
{{ include "smtp-relay-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: smtp-relay-operator
{{- end }}

{{- define "smtp-relay-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "smtp-relay-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "repo:tag" or "repo@digest"; the tag defaults to appVersion. Argument: (list $ .Values.x). */}}
{{- define "smtp-relay-operator.imageRef" -}}
{{- $root := index . 0 }}
{{- $img := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{/* Leader election is on when asked for, and always with several replicas: two replicas
reconciling the same SmtpRelay at once would fight over its StatefulSet. */}}
{{- define "smtp-relay-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{/* The operator upgrades an older SmtpRelay CRD at startup unless crds.upgrade is false. A
release upgraded with --reuse-values from a chart without the key has no crds map: on. */}}
{{- define "smtp-relay-operator.crdUpgrade" -}}
{{- $crds := .Values.crds | default dict }}
{{- if or (not (hasKey $crds "upgrade")) $crds.upgrade }}true{{ end }}
{{- end }}

{{- define "smtp-relay-operator.leaseName" -}}
{{- default (include "smtp-relay-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* Labels for SmtpRelay objects from values. Deliberately not the selector labels: if the
operator copies them onto relay pods, the operator's Deployment and metrics Service must not
select those pods. */}}
{{- define "smtp-relay-operator.relayLabels" -}}
helm.sh/chart: {{ include "smtp-relay-operator.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: smtp-relay-operator
{{- end }}
