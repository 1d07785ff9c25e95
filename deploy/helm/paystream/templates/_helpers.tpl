{{/*
The chart's name, overridable.
*/}}
{{- define "paystream.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name: <release>-<chart> unless the release name already contains the chart
name. Truncated so component suffixes still fit Kubernetes' 63-character names.
*/}}
{{- define "paystream.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The name of one component's resources. Call with (dict "root" $ "component" "gateway").
At most 52 characters: a StatefulSet's pods add "-<ordinal>" and a revision hash label.
*/}}
{{- define "paystream.componentName" -}}
{{- printf "%s-%s" (include "paystream.fullname" .root) .component | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "paystream.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of every resource. Call with (dict "root" $ "component" "gateway").
*/}}
{{- define "paystream.labels" -}}
helm.sh/chart: {{ include "paystream.chart" .root }}
{{ include "paystream.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: paystream
{{- end }}

{{/*
Selector labels. Call with (dict "root" $ "component" "gateway").
*/}}
{{- define "paystream.selectorLabels" -}}
app.kubernetes.io/name: {{ include "paystream.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "paystream.image" -}}
{{- printf "%s:%s" .Values.image.repository (toString (default .Chart.AppVersion .Values.image.tag)) }}
{{- end }}

{{- define "paystream.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "paystream.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The Secret and key holding the database URL.
*/}}
{{- define "paystream.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- include "paystream.componentName" (dict "root" . "component" "database") }}
{{- end }}
{{- end }}

{{- define "paystream.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else -}}
database-url
{{- end }}
{{- end }}

{{/*
The database URL for a Secret the chart creates; fails the render when neither it nor an
existing Secret is given.
*/}}
{{- define "paystream.databaseUrl" -}}
{{- required "set database.url or database.existingSecret" .Values.database.url }}
{{- end }}

{{/*
The PSP base URL the processor charges.
*/}}
{{- define "paystream.pspUrl" -}}
{{- if .Values.psp.url }}
{{- .Values.psp.url }}
{{- else if .Values.pspSimulator.enabled }}
{{- printf "http://%s:%v" (include "paystream.componentName" (dict "root" . "component" "psp-simulator")) .Values.pspSimulator.port }}
{{- else }}
{{- required "set psp.url (or enable pspSimulator in a development cluster)" .Values.psp.url }}
{{- end }}
{{- end }}

{{/*
Whether the gateway and the processor read a config file (kafka.properties is not empty).
*/}}
{{- define "paystream.hasConfigFile" -}}
{{- if .Values.kafka.properties }}true{{ end }}
{{- end }}

{{/*
The TOML config file carrying kafka.properties (dotted librdkafka keys cannot be env vars).
*/}}
{{- define "paystream.configToml" -}}
# Rendered by the paystream chart; read through PAYSTREAM_CONFIG_FILE, under the environment.
[kafka.properties]
{{- range $key, $value := .Values.kafka.properties }}
{{- /* Values are numbers after Helm's YAML parsing; print whole numbers without an exponent. */}}
{{- if and (kindIs "float64" $value) (eq (float64 (int64 $value)) $value) }}
{{- $value = int64 $value }}
{{- end }}
{{ $key | quote }} = {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/*
Environment shared by the gateway and the processor: the database URL from its Secret and the
config file. Call with the root context.
*/}}
{{- define "paystream.commonEnv" -}}
- name: PAYSTREAM_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "paystream.databaseSecretName" . }}
      key: {{ include "paystream.databaseSecretKey" . }}
{{- if include "paystream.hasConfigFile" . }}
- name: PAYSTREAM_CONFIG_FILE
  value: /etc/paystream/config.toml
{{- end }}
{{- end }}

{{/*
Volumes and mounts of every service container: a writable /tmp on a read-only root file
system, and the config file when there is one.
*/}}
{{- define "paystream.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if include "paystream.hasConfigFile" . }}
- name: config
  secret:
    secretName: {{ include "paystream.componentName" (dict "root" . "component" "config") }}
{{- end }}
{{- end }}

{{- define "paystream.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "paystream.hasConfigFile" . }}
- name: config
  mountPath: /etc/paystream
  readOnly: true
{{- end }}
{{- end }}

{{/*
Pod-template annotations that roll the pods when their configuration changes.
*/}}
{{- define "paystream.configChecksums" -}}
checksum/config: {{ include (print .Template.BasePath "/configmap.yaml") . | sha256sum }}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end }}

{{/*
One step of the migration job: a `paystream` CLI container. Call with
(dict "root" $ "name" "migrate" "args" (list "migrate") "secretName" ... "secretKey" ...).
The hook runs before the release's ConfigMaps exist, so its settings are inline.
*/}}
{{- define "paystream.migrationContainer" -}}
- name: {{ .name }}
  image: {{ include "paystream.image" .root | quote }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["paystream"]
  args:
    {{- toYaml .args | nindent 4 }}
  env:
    - name: PAYSTREAM_DATABASE__URL
      valueFrom:
        secretKeyRef:
          name: {{ .secretName }}
          key: {{ .secretKey }}
    - name: PAYSTREAM_SCHEMA_REGISTRY__URL
      value: {{ required "set schemaRegistry.url" .root.Values.schemaRegistry.url | quote }}
    - name: PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS
      value: {{ required "set kafka.bootstrapServers" .root.Values.kafka.bootstrapServers | quote }}
    - name: RUST_LOG
      value: {{ .root.Values.logging.level | quote }}
  resources:
    {{- toYaml .root.Values.migrations.resources | nindent 4 }}
  securityContext:
    {{- toYaml .root.Values.securityContext | nindent 4 }}
{{- end }}
