{{/*
The chart's name (nameOverride or "effp").
*/}}
{{- define "effp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name, the prefix of every object: the release name, with the
chart's name unless the release's name holds it.
*/}}
{{- define "effp.fullname" -}}
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

{{/*
chart label: name-version.
*/}}
{{- define "effp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The labels that select one component's pods; call with (dict "ctx" $ "component" "api").
*/}}
{{- define "effp.selectorLabels" -}}
app.kubernetes.io/name: {{ include "effp.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
Every object's labels; call with (dict "ctx" $ "component" "api"), component may be "".
*/}}
{{- define "effp.labels" -}}
helm.sh/chart: {{ include "effp.chart" .ctx }}
app.kubernetes.io/name: {{ include "effp.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: effp
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
An object's metadata annotations: commonAnnotations and the object's own, as an
"annotations:" block under metadata, or nothing; call with (dict "ctx" $ "extra" map)
right after the labels (it begins with its own newline).
*/}}
{{- define "effp.annotations" -}}
{{- $all := merge (deepCopy (.extra | default dict)) (.ctx.Values.commonAnnotations | default dict) }}
{{- with $all }}
{{ printf "annotations:\n%s" (toYaml . | indent 2) | indent 2 }}
{{- end }}
{{- end }}

{{/*
Names of the objects.
*/}}
{{- define "effp.apiName" -}}
{{- printf "%s-api" (include "effp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "effp.workerName" -}}
{{- printf "%s-worker" (include "effp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "effp.agentName" -}}
{{- printf "%s-agent" (include "effp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "effp.configName" -}}
{{- printf "%s-config" (include "effp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The Secret the pods read their secret settings from: the given one, else the chart's.
*/}}
{{- define "effp.secretName" -}}
{{- if .Values.secrets.existingSecret }}
{{- .Values.secrets.existingSecret }}
{{- else }}
{{- printf "%s-secrets" (include "effp.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/*
The ServiceAccount of the pods.
*/}}
{{- define "effp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "effp.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference; call with (dict "ctx" $ "image" .Values.image.api).
*/}}
{{- define "effp.image" -}}
{{- $tag := default .ctx.Chart.AppVersion .image.tag }}
{{- if .image.registry }}
{{- printf "%s/%s:%s" .image.registry .image.repository $tag }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The port of a host:port listen address ("0.0.0.0:8080" → 8080), as an integer.
*/}}
{{- define "effp.listenPort" -}}
{{- regexReplaceAll "^.*:" (toString .) "" | atoi }}
{{- end }}

{{/*
The API's container port, from config.EFFP_LISTEN.
*/}}
{{- define "effp.apiPort" -}}
{{- $port := include "effp.listenPort" (required "config.EFFP_LISTEN is required" .Values.config.EFFP_LISTEN) | atoi }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- fail (printf "config.EFFP_LISTEN %q names no port" .Values.config.EFFP_LISTEN) }}
{{- end }}
{{- $port }}
{{- end }}

{{/*
The workers' metrics port, from config.EFFP_WORKER_METRICS_LISTEN; empty when unset.
*/}}
{{- define "effp.workerMetricsPort" -}}
{{- with .Values.config.EFFP_WORKER_METRICS_LISTEN }}
{{- $port := include "effp.listenPort" . | atoi }}
{{- if or (lt $port 1) (gt $port 65535) }}
{{- fail (printf "config.EFFP_WORKER_METRICS_LISTEN %q names no port" .) }}
{{- end }}
{{- $port }}
{{- end }}
{{- end }}

{{/*
The pod security context of a component: the shared one with the component's
user; call with (dict "ctx" $ "component" .Values.api).
*/}}
{{- define "effp.podSecurityContext" -}}
{{- toYaml (mergeOverwrite (deepCopy .ctx.Values.podSecurityContext) (deepCopy (.component.podSecurityContext | default dict))) }}
{{- end }}

{{/*
A checksum of the settings the pods read: the rendered ConfigMap and the secret
values, so that changing either rolls the pods. (Generated secrets are kept across
upgrades and so never change it.)
*/}}
{{- define "effp.settingsChecksum" -}}
{{- $config := include (print .Template.BasePath "/configmap.yaml") . }}
{{- $secrets := toJson .Values.secrets }}
{{- printf "%s\n%s" $config $secrets | sha256sum }}
{{- end }}

{{/*
The environment (envFrom: the ConfigMap and the Secret) of the API and the workers.
*/}}
{{- define "effp.envFrom" -}}
envFrom:
  - configMapRef:
      name: {{ include "effp.configName" . }}
  - secretRef:
      name: {{ include "effp.secretName" . }}
{{- end }}

{{/*
Checks that hold for every render: what a distributed deployment cannot do without.
*/}}
{{- define "effp.validate" -}}
{{- if not .Values.config.EFFP_S3_BUCKET }}
{{- fail "config.EFFP_S3_BUCKET is required: the API and the workers share models, datasets and checkpoints through S3" }}
{{- end }}
{{- if and (not .Values.secrets.existingSecret) (not .Values.secrets.values.EFFP_REDIS_URL) }}
{{- fail "secrets.values.EFFP_REDIS_URL (or secrets.existingSecret) is required: the API and the workers share jobs through Redis" }}
{{- end }}
{{- end }}
