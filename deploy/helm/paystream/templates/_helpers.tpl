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
A list of integers as comma-separated text. Helm reads YAML numbers as float64, which print as
1e+06 from 1000000 on: every element goes through int64.
*/}}
{{- define "paystream.intList" -}}
{{- $out := list }}
{{- range . }}
{{- $out = append $out (printf "%d" (int64 .)) }}
{{- end }}
{{- join "," $out }}
{{- end }}

{{/*
A value as a TOML basic string: whole numbers without an exponent, JSON escaping (a subset of
TOML's).
*/}}
{{- define "paystream.tomlString" -}}
{{- include "paystream.scalar" . | toJson }}
{{- end }}

{{/*
A scalar as text; whole numbers without an exponent or a fraction (1000000, not 1e+06).
*/}}
{{- define "paystream.scalar" -}}
{{- if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/*
Whether the services and the topics job read a config file: librdkafka properties, topic
configs or a CA certificate (dotted keys cannot be environment variables).
*/}}
{{- define "paystream.hasConfigFile" -}}
{{- $k := .Values.kafka }}
{{- if or $k.properties $k.secretProperties $k.topics.configs $k.caSecret.name }}true{{ end }}
{{- end }}

{{- define "paystream.configDir" -}}/etc/paystream/config{{- end }}
{{- define "paystream.kafkaCaDir" -}}/etc/paystream/kafka-ca{{- end }}

{{/*
The TOML config file (PAYSTREAM_CONFIG_FILE). [kafka.properties] comes last: the config init
container appends kafka.secretProperties to it.
*/}}
{{- define "paystream.configToml" -}}
{{- range $key := concat (keys .Values.kafka.properties) (keys .Values.kafka.secretProperties) }}
{{- if has $key (list "bootstrap.servers" "group.id" "transactional.id" "enable.idempotence" "acks" "isolation.level" "enable.auto.commit") }}
{{- fail (printf "kafka properties: %q is set by paystream itself (the services refuse to start with it)%s" $key (eq $key "bootstrap.servers" | ternary ": use kafka.bootstrapServers" "")) }}
{{- end }}
{{- end }}
{{- range $key, $_ := .Values.kafka.secretProperties }}
{{- if hasKey $.Values.kafka.properties $key }}
{{- fail (printf "kafka.properties and kafka.secretProperties both set %q: keep it in one of them" $key) }}
{{- end }}
{{- end }}
# Rendered by the paystream chart; read through PAYSTREAM_CONFIG_FILE, under the environment.
{{- with .Values.kafka.topics.configs }}

# kafka.topics.configs: topic configs of every topic paystream creates.
[kafka.provisioning.configs]
{{- range $key, $value := . }}
{{ $key | toJson }} = {{ include "paystream.tomlString" $value }}
{{- end }}
{{- end }}

# kafka.properties: librdkafka properties of every client.
[kafka.properties]
{{- range $key, $value := .Values.kafka.properties }}
{{ $key | toJson }} = {{ include "paystream.tomlString" $value }}
{{- end }}
{{- if and .Values.kafka.caSecret.name (not (hasKey .Values.kafka.properties "ssl.ca.location")) (not (hasKey .Values.kafka.secretProperties "ssl.ca.location")) }}
"ssl.ca.location" = {{ printf "%s/ca.crt" (include "paystream.kafkaCaDir" .) | toJson }}
{{- end }}
{{- if .Values.kafka.secretProperties }}
# kafka.secretProperties ({{ keys .Values.kafka.secretProperties | sortAlpha | join ", " }}) follow, added at pod start.
{{- end }}
{{- end }}

{{/*
The config init container: copies the chart's config file into an in-memory volume and appends
kafka.secretProperties, read from their Secrets through the environment, as TOML strings. Only
when there are secret properties. Call with (dict "root" $ "resources" ...).
*/}}
{{- define "paystream.configInitContainer" -}}
{{- $root := .root }}
{{- if $root.Values.kafka.secretProperties }}
- name: config
  image: {{ include "paystream.image" $root | quote }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  command: ["/bin/sh", "-c"]
  args:
    - |
      set -eu
      umask 077
      # A TOML basic string: backslashes and quotes escaped (trailing newlines were dropped).
      toml() { printf '"%s"' "$(printf '%s' "$1" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"; }
      cp "$CONFIG_TEMPLATE" "$CONFIG_FILE.tmp"
      {{- range $i, $key := keys $root.Values.kafka.secretProperties | sortAlpha }}
      printf '%s = %s\n' {{ $key | toJson | squote }} "$(toml "$KAFKA_SECRET_PROPERTY_{{ $i }}")" >>"$CONFIG_FILE.tmp"
      {{- end }}
      mv "$CONFIG_FILE.tmp" "$CONFIG_FILE"
  env:
    - name: CONFIG_TEMPLATE
      value: /etc/paystream/config-template/config.toml
    - name: CONFIG_FILE
      value: {{ printf "%s/config.toml" (include "paystream.configDir" $root) }}
    {{- range $i, $key := keys $root.Values.kafka.secretProperties | sortAlpha }}
    {{- $ref := get $root.Values.kafka.secretProperties $key }}
    - name: {{ printf "KAFKA_SECRET_PROPERTY_%d" $i }}
      valueFrom:
        secretKeyRef:
          name: {{ $ref.secretName | quote }}
          key: {{ $ref.secretKey | quote }}
    {{- end }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- toYaml $root.Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: config-template
      mountPath: /etc/paystream/config-template
      readOnly: true
    - name: config
      mountPath: {{ include "paystream.configDir" $root }}
{{- end }}
{{- end }}

{{/*
Volumes of a pod running a service or the CLI: a writable /tmp on a read-only root file system,
and the config file and CA certificate when there are any. Call with
(dict "root" $ "configSecret" <name of the Secret holding config.toml>).
*/}}
{{- define "paystream.volumes" -}}
{{- $root := .root }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if include "paystream.hasConfigFile" $root }}
{{- if $root.Values.kafka.secretProperties }}
- name: config-template
  secret:
    secretName: {{ .configSecret }}
- name: config
  emptyDir:
    medium: Memory
    sizeLimit: 1Mi
{{- else }}
- name: config
  secret:
    secretName: {{ .configSecret }}
{{- end }}
{{- end }}
{{- with $root.Values.kafka.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ . }}
    items:
      - key: {{ $root.Values.kafka.caSecret.key }}
        path: ca.crt
{{- end }}
{{- end }}

{{- define "paystream.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "paystream.hasConfigFile" . }}
- name: config
  mountPath: {{ include "paystream.configDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.kafka.caSecret.name }}
- name: kafka-ca
  mountPath: {{ include "paystream.kafkaCaDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/*
PAYSTREAM_CONFIG_FILE when there is a config file. Call with the root context.
*/}}
{{- define "paystream.configFileEnv" -}}
{{- if include "paystream.hasConfigFile" . }}
- name: PAYSTREAM_CONFIG_FILE
  value: {{ printf "%s/config.toml" (include "paystream.configDir" .) }}
{{- end }}
{{- end }}

{{/*
Environment shared by the services that use Postgres and Kafka: the database URL from its
Secret and the config file. Call with the root context.
*/}}
{{/*
The key sealing webhook secrets at rest: PAYSTREAM_SECRETS__ENCRYPTION_KEY from the chart's
Secret or an existing one. The gateway and the notifier only.
*/}}
{{- define "paystream.encryptionKey" -}}
{{- required "set secrets.encryptionKey or secrets.existingSecret" .Values.secrets.encryptionKey }}
{{- end }}

{{- define "paystream.secretsEnv" -}}
- name: PAYSTREAM_SECRETS__ENCRYPTION_KEY
  valueFrom:
    secretKeyRef:
      {{- if .Values.secrets.existingSecret }}
      name: {{ .Values.secrets.existingSecret }}
      key: {{ .Values.secrets.existingSecretKey }}
      {{- else }}
      name: {{ include "paystream.componentName" (dict "root" . "component" "secrets") }}
      key: encryption-key
      {{- end }}
{{- end }}

{{- define "paystream.commonEnv" -}}
- name: PAYSTREAM_DATABASE__URL
  valueFrom:
    secretKeyRef:
      name: {{ include "paystream.databaseSecretName" . }}
      key: {{ include "paystream.databaseSecretKey" . }}
{{- include "paystream.configFileEnv" . }}
{{- end }}

{{/*
ConfigMap data, one template per ConfigMap: the ConfigMaps render them, and the pods hash
exactly the ones they load (paystream.configChecksums). Each takes the root context.
*/}}
{{- define "paystream.configData.common" -}}
PAYSTREAM_KAFKA__BOOTSTRAP_SERVERS: {{ required "set kafka.bootstrapServers" .Values.kafka.bootstrapServers | quote }}
# One owner creates topics: with kafka.topics.create, the topics job; the services check.
PAYSTREAM_KAFKA__PROVISIONING__CREATE_TOPICS: {{ not .Values.kafka.topics.create | quote }}
PAYSTREAM_KAFKA__PROVISIONING__REPLICATION_FACTOR: {{ .Values.kafka.topics.replicationFactor | int64 | quote }}
PAYSTREAM_SCHEMA_REGISTRY__URL: {{ required "set schemaRegistry.url" .Values.schemaRegistry.url | quote }}
{{ include "paystream.topicEnv" . }}
PAYSTREAM_DATABASE__MAX_CONNECTIONS: {{ .Values.database.maxConnections | int64 | quote }}
{{- with .Values.retention }}
PAYSTREAM_RETENTION__INTERVAL_SECS: {{ .intervalSecs | int64 | quote }}
PAYSTREAM_RETENTION__BATCH_SIZE: {{ .batchSize | int64 | quote }}
PAYSTREAM_RETENTION__PROCESSED_EVENTS_DAYS: {{ .processedEventsDays | int64 | quote }}
PAYSTREAM_RETENTION__REPLAY_MARGIN_DAYS: {{ .replayMarginDays | int64 | quote }}
PAYSTREAM_RETENTION__OUTBOX_DAYS: {{ .outboxDays | int64 | quote }}
PAYSTREAM_RETENTION__NOTIFICATION_DELIVERIES_DAYS: {{ .notificationDeliveriesDays | int64 | quote }}
PAYSTREAM_RETENTION__ANALYTICS_PAYMENTS_DAYS: {{ .analyticsPaymentsDays | int64 | quote }}
{{- end }}
{{ include "paystream.telemetryEnv" . }}
{{- end }}

{{/*
Topic names as KEY: "value" lines (ConfigMap data).
*/}}
{{- define "paystream.topicEnv" -}}
PAYSTREAM_TOPICS__PAYMENTS_REQUESTED: {{ .Values.topics.paymentsRequested | quote }}
PAYSTREAM_TOPICS__PAYMENTS_OUTCOMES: {{ .Values.topics.paymentsOutcomes | quote }}
PAYSTREAM_TOPICS__ANALYTICS_PAYMENT_STATS: {{ .Values.topics.analyticsPaymentStats | quote }}
PAYSTREAM_TOPICS__NOTIFICATIONS_SENT: {{ .Values.topics.notificationsSent | quote }}
{{- end }}

{{/*
A map as a container's env list (sorted by name).
*/}}
{{- define "paystream.envList" -}}
{{- range $name, $value := . }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/*
Logging and tracing as KEY: "value" lines (ConfigMap data).
*/}}
{{- define "paystream.telemetryEnv" -}}
RUST_LOG: {{ .Values.logging.level | quote }}
PAYSTREAM_LOG_FORMAT: {{ .Values.logging.format | quote }}
{{- with .Values.otel.endpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
OTEL_EXPORTER_OTLP_PROTOCOL: {{ $.Values.otel.protocol | quote }}
OTEL_TRACES_SAMPLER: {{ $.Values.otel.sampler | quote }}
{{- with $.Values.otel.samplerArg }}
OTEL_TRACES_SAMPLER_ARG: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}

{{- define "paystream.configData.gateway" -}}
{{- $v := .Values.gateway }}
PAYSTREAM_HTTP__HOST: "0.0.0.0"
PAYSTREAM_HTTP__PORT: {{ $v.port | int64 | quote }}
PAYSTREAM_GATEWAY__IDEMPOTENCY_RETENTION_HOURS: {{ $v.idempotencyRetentionHours | int64 | quote }}
PAYSTREAM_GATEWAY__MAX_AMOUNT_MINOR: {{ $v.maxAmountMinor | int64 | quote }}
PAYSTREAM_GATEWAY__OUTBOX_POLL_INTERVAL_MS: {{ $v.outboxPollIntervalMs | int64 | quote }}
PAYSTREAM_GATEWAY__OUTBOX_BATCH_SIZE: {{ $v.outboxBatchSize | int64 | quote }}
PAYSTREAM_GATEWAY__PRODUCE_TIMEOUT_MS: {{ $v.produceTimeoutMs | int64 | quote }}
PAYSTREAM_GATEWAY__IDEMPOTENCY_PURGE_INTERVAL_SECS: {{ $v.idempotencyPurgeIntervalSecs | int64 | quote }}
PAYSTREAM_GATEWAY__MAX_BODY_BYTES: {{ $v.maxBodyBytes | int64 | quote }}
PAYSTREAM_GATEWAY__REQUEST_TIMEOUT_MS: {{ $v.requestTimeoutMs | int64 | quote }}
PAYSTREAM_GATEWAY__OUTBOX_RELAY_ENABLED: {{ $v.outboxRelayEnabled | quote }}
PAYSTREAM_GATEWAY__SHUTDOWN_FLUSH_TIMEOUT_MS: {{ $v.shutdownFlushTimeoutMs | int64 | quote }}
PAYSTREAM_GATEWAY__RATE_LIMIT__REQUESTS_PER_SECOND: {{ include "paystream.scalar" $v.rateLimit.requestsPerSecond | quote }}
PAYSTREAM_GATEWAY__RATE_LIMIT__BURST: {{ $v.rateLimit.burst | int64 | quote }}
PAYSTREAM_GATEWAY__AUTH__ENABLED: {{ $v.auth.enabled | quote }}
{{- range $client, $hashes := $v.auth.apiKeys }}
PAYSTREAM_GATEWAY__AUTH__API_KEYS__{{ $client | upper }}: {{ $hashes | quote }}
{{- end }}
# The migration hook migrates; without it, the gateway does at start-up.
PAYSTREAM_GATEWAY__MIGRATE_ON_START: {{ not .Values.migrations.enabled | quote }}
OTEL_SERVICE_NAME: gateway
{{- end }}

{{/*
Settings of every consumer group's loop. Call with (dict "root" $ "values" <component values>).
*/}}
{{- define "paystream.consumerData" -}}
{{- $v := .values }}
PAYSTREAM_HTTP__HOST: "0.0.0.0"
PAYSTREAM_HTTP__PORT: {{ $v.port | int64 | quote }}
PAYSTREAM_CONSUMER__GROUP_ID: {{ $v.groupId | quote }}
PAYSTREAM_CONSUMER__BATCH_MAX_RECORDS: {{ $v.batchMaxRecords | int64 | quote }}
PAYSTREAM_CONSUMER__RETRY_DELAYS_MS: {{ include "paystream.intList" $v.retryDelaysMs | quote }}
PAYSTREAM_CONSUMER__DRAIN_TIMEOUT_MS: {{ $v.drainTimeoutMs | int64 | quote }}
# Used when the service creates its retry and dead-letter topics (kafka.topics.create=false).
PAYSTREAM_CONSUMER__RETRY_TOPIC_PARTITIONS: {{ .root.Values.kafka.topics.retryPartitions | int64 | quote }}
PAYSTREAM_CONSUMER__DLQ_TOPIC_PARTITIONS: {{ .root.Values.kafka.topics.retryPartitions | int64 | quote }}
{{- end }}

{{- define "paystream.configData.payment-processor" -}}
{{- $v := .Values.paymentProcessor }}
{{ include "paystream.consumerData" (dict "root" . "values" $v) }}
PAYSTREAM_CONSUMER__BATCH_MAX_WAIT_MS: {{ $v.batchMaxWaitMs | int64 | quote }}
PAYSTREAM_CONSUMER__TRANSACTION_TIMEOUT_MS: {{ $v.transactionTimeoutMs | int64 | quote }}
PAYSTREAM_CONSUMER__SESSION_TIMEOUT_MS: {{ $v.sessionTimeoutMs | int64 | quote }}
PAYSTREAM_CONSUMER__ABORT_BACKOFF_MS: {{ $v.abortBackoffMs | int64 | quote }}
PAYSTREAM_CONSUMER__ABORT_BACKOFF_MAX_MS: {{ $v.abortBackoffMaxMs | int64 | quote }}
{{- with $v.dlqTopic }}
PAYSTREAM_CONSUMER__DLQ_TOPIC: {{ . | quote }}
{{- end }}
PAYSTREAM_PSP__URL: {{ include "paystream.pspUrl" . | quote }}
PAYSTREAM_PSP__TIMEOUT_MS: {{ .Values.psp.timeoutMs | int64 | quote }}
PAYSTREAM_PSP__ATTEMPTS: {{ .Values.psp.attempts | int64 | quote }}
PAYSTREAM_PSP__RETRY_BACKOFF_MS: {{ .Values.psp.retryBackoffMs | int64 | quote }}
OTEL_SERVICE_NAME: payment-processor
{{- end }}

{{- define "paystream.configData.analytics" -}}
{{- $v := .Values.analytics }}
{{ include "paystream.consumerData" (dict "root" . "values" $v) }}
PAYSTREAM_ANALYTICS__ALLOWED_LATENESS_MS: {{ $v.allowedLatenessMs | int64 | quote }}
# Used when analytics creates its stats topic (kafka.topics.create=false).
PAYSTREAM_ANALYTICS__STATS_TOPIC_PARTITIONS: {{ .Values.kafka.topics.partitions | int64 | quote }}
OTEL_SERVICE_NAME: analytics
{{- end }}

{{- define "paystream.configData.notifier" -}}
{{- $v := .Values.notifier }}
{{ include "paystream.consumerData" (dict "root" . "values" $v) }}
PAYSTREAM_NOTIFIER__WEBHOOK_TIMEOUT_MS: {{ $v.webhookTimeoutMs | int64 | quote }}
PAYSTREAM_NOTIFIER__ALLOW_LOOPBACK_TARGETS: {{ $v.allowLoopbackTargets | quote }}
PAYSTREAM_NOTIFIER__ALLOW_PRIVATE_TARGETS: {{ $v.allowPrivateTargets | quote }}
PAYSTREAM_NOTIFIER__SMTP_HOST: {{ required "notifier.smtp.host is required while notifier.enabled is true: the SMTP relay of the customer e-mails (or set notifier.enabled=false)" $v.smtp.host | quote }}
PAYSTREAM_NOTIFIER__SMTP_PORT: {{ $v.smtp.port | int64 | quote }}
PAYSTREAM_NOTIFIER__SMTP_TIMEOUT_MS: {{ $v.smtp.timeoutMs | int64 | quote }}
PAYSTREAM_NOTIFIER__EMAIL_FROM: {{ $v.emailFrom | quote }}
# Used when the notifier creates its receipts topic (kafka.topics.create=false).
PAYSTREAM_NOTIFIER__RECEIPTS_TOPIC_PARTITIONS: {{ .Values.kafka.topics.partitions | int64 | quote }}
OTEL_SERVICE_NAME: notifier
{{- end }}

{{- define "paystream.configData.psp-simulator" -}}
{{- $v := .Values.pspSimulator }}
PAYSTREAM_HTTP__HOST: "0.0.0.0"
PAYSTREAM_HTTP__PORT: {{ $v.port | int64 | quote }}
PAYSTREAM_PSP__LATENCY_MS: {{ $v.latencyMs | int64 | quote }}
PAYSTREAM_PSP__LATENCY_JITTER_MS: {{ $v.latencyJitterMs | int64 | quote }}
PAYSTREAM_PSP__DECLINE_RATE: {{ include "paystream.scalar" $v.declineRate | quote }}
PAYSTREAM_PSP__TRANSIENT_FAILURE_RATE: {{ include "paystream.scalar" $v.transientFailureRate | quote }}
{{ include "paystream.telemetryEnv" . }}
OTEL_SERVICE_NAME: psp-simulator
{{- end }}

{{/*
A component's ConfigMap. Call with (dict "root" $ "component" "gateway").
*/}}
{{- define "paystream.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "paystream.componentName" . }}
  labels:
    {{- include "paystream.labels" . | nindent 4 }}
data:
  {{- include (printf "paystream.configData.%s" .component) .root | nindent 2 }}
{{- end }}

{{/*
Pod-template annotations that roll a component's pods when what they load changes: the
ConfigMaps they read (the common one, except for the PSP simulator, and their own) and the
chart's Secrets they use. Call with (dict "root" $ "component" "gateway").
*/}}
{{- define "paystream.configChecksums" -}}
{{- $root := .root }}
{{- $config := include (printf "paystream.configData.%s" .component) $root }}
{{- $secrets := "" }}
{{- if ne .component "psp-simulator" }}
{{- $config = print (include "paystream.configData.common" $root) "\n---\n" $config }}
{{- if $root.Values.database.existingSecret }}
{{- $secrets = printf "database: %s/%s" $root.Values.database.existingSecret $root.Values.database.existingSecretKey }}
{{- else }}
{{- $secrets = printf "database: %s" (include "paystream.databaseUrl" $root) }}
{{- end }}
{{- if include "paystream.hasConfigFile" $root }}
{{- $secrets = print $secrets "\n---\n" (include "paystream.configToml" $root) "\n---\n" (toJson $root.Values.kafka.secretProperties) "\n---\n" (toJson $root.Values.kafka.caSecret) }}
{{- end }}
{{- if eq .component "gateway" }}
{{- $secrets = print $secrets "\n---\n" (toJson (pick $root.Values.gateway "adminToken" "adminTokenExistingSecret" "adminTokenExistingSecretKey")) }}
{{- end }}
{{- if or (eq .component "gateway") (eq .component "notifier") }}
{{- $secrets = print $secrets "\n---\n" (toJson $root.Values.secrets) }}
{{- end }}
{{- end }}
checksum/config: {{ $config | sha256sum }}
checksum/secret: {{ $secrets | sha256sum }}
{{- end }}

{{/*
A startup probe on /health/live (liveness and readiness wait for it). Call with the
component's startupProbe values.
*/}}
{{- define "paystream.startupProbe" -}}
startupProbe:
  httpGet:
    path: /health/live
    port: http
  periodSeconds: {{ .periodSeconds | int64 }}
  timeoutSeconds: 3
  failureThreshold: {{ .failureThreshold | int64 }}
{{- end }}

{{/*
A PodDisruptionBudget. Call with (dict "root" $ "component" "gateway" "values" <its
podDisruptionBudget values>). minAvailable, when set, replaces maxUnavailable (0 allowed).
*/}}
{{- define "paystream.podDisruptionBudget" -}}
{{- $pdb := .values }}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "paystream.componentName" . }}
  labels:
    {{- include "paystream.labels" . | nindent 4 }}
spec:
  {{- if and (ne (toString $pdb.minAvailable) "") (not (kindIs "invalid" $pdb.minAvailable)) }}
  minAvailable: {{ include "paystream.intOrPercent" $pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ include "paystream.intOrPercent" $pdb.maxUnavailable }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "paystream.selectorLabels" . | nindent 6 }}
{{- end }}

{{/*
An IntOrString: a number as an integer, a percentage as a quoted string.
*/}}
{{- define "paystream.intOrPercent" -}}
{{- if kindIs "string" . }}{{ . | quote }}{{ else }}{{ . | int64 }}{{ end }}
{{- end }}

{{/*
One container of a hook job running the `paystream` CLI. Call with (dict "root" $ "name" ...
"args" (list ...) "env" <extra env YAML> "resources" ... "volumeMounts" <YAML or "">).
*/}}
{{- define "paystream.cliContainer" -}}
- name: {{ .name }}
  image: {{ include "paystream.image" .root | quote }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  command: ["paystream"]
  args:
    {{- toYaml .args | nindent 4 }}
  env:
    {{- .env | nindent 4 }}
    - name: RUST_LOG
      value: {{ .root.Values.logging.level | quote }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- toYaml .root.Values.securityContext | nindent 4 }}
  volumeMounts:
    {{- .volumeMounts | nindent 4 }}
{{- end }}
