{{/* The name of every object of this release. */}}
{{- define "anchorage.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "anchorage.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "anchorage.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "anchorage.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "anchorage.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "anchorage.fullname" .) -}}
{{- end -}}

{{/* Environment every role shares: NATS URL, replicas, database, configuration file. */}}
{{- define "anchorage.env" -}}
- name: MIMALLOC_ALLOW_THP
  value: "0"
- name: ANCHORAGE_NATS__URL
  value: {{ .Values.nats.url | quote }}
- name: ANCHORAGE_STREAMS__REPLICAS
  value: {{ .Values.nats.replicas | quote }}
- name: ANCHORAGE_DATABASE__MAX_CONNECTIONS
  value: {{ .Values.database.maxConnections | quote }}
- name: ANCHORAGE_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "anchorage.secretName" . }}
      key: database-url
{{- end -}}

{{- define "anchorage.configVolume" -}}
- name: config
  configMap:
    name: {{ include "anchorage.fullname" . }}
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "anchorage.configMount" -}}
- name: config
  mountPath: /etc/anchorage
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}
