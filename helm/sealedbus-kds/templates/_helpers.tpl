{{/* Names and labels shared by every template. */}}

{{- define "sealedbus-kds.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sealedbus-kds.fullname" -}}
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

{{- define "sealedbus-kds.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sealedbus-kds.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "sealedbus-kds.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "sealedbus-kds.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: kds
app.kubernetes.io/part-of: sealedbus
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "sealedbus-kds.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "sealedbus-kds.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The replica count the mode allows (sqlite: exactly one). */}}
{{- define "sealedbus-kds.replicas" -}}
{{- if eq .Values.mode "sqlite" }}1{{ else }}{{ .Values.replicaCount }}{{ end }}
{{- end }}
