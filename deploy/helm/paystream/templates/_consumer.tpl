{{/*
A consumer group's StatefulSet (stable pod names, hence stable transactional ids) and its
headless Service: the payment processor, analytics and the notifier. Call with
(dict "root" $ "component" "analytics" "values" .Values.analytics); the component's ConfigMap
is named like the component.
*/}}
{{- define "paystream.consumerStatefulSet" -}}
{{- $root := .root }}
{{- $v := .values }}
{{- $ctx := dict "root" .root "component" .component }}
{{- $name := include "paystream.componentName" $ctx }}
apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: {{ $name }}
  labels:
    {{- include "paystream.labels" $ctx | nindent 4 }}
spec:
  # A StatefulSet for its stable pod names (<name>-0, <name>-1, ...), which make stable
  # transactional ids: a restarted pod fences the open transaction of its predecessor instead
  # of leaving it to the transaction timeout. No volumes: all state is in Kafka and Postgres.
  serviceName: {{ printf "%s-headless" $name }}
  replicas: {{ $v.replicaCount | int64 }}
  podManagementPolicy: Parallel
  updateStrategy:
    type: RollingUpdate
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "paystream.selectorLabels" $ctx | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "paystream.labels" $ctx | nindent 8 }}
      annotations:
        {{- include "paystream.configChecksums" $ctx | nindent 8 }}
        {{- with $v.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "paystream.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml $root.Values.podSecurityContext | nindent 8 }}
      # SIGTERM: the current batch is finished and committed, then the group is left.
      terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds | int64 }}
      {{- with include "paystream.configInitContainer" (dict "root" $root "resources" $v.resources) }}
      initContainers:
        {{- . | nindent 8 }}
      {{- end }}
      containers:
        - name: {{ .component }}
          image: {{ include "paystream.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [{{ .component | quote }}]
          ports:
            - name: http
              containerPort: {{ $v.port | int64 }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "paystream.componentName" (dict "root" $root "component" "common") }}
            - configMapRef:
                name: {{ $name }}
          env:
            - name: POD_NAME
              valueFrom:
                fieldRef:
                  fieldPath: metadata.name
            - name: PAYSTREAM_CONSUMER__TRANSACTIONAL_ID
              value: {{ printf "%s-$(POD_NAME)" $v.groupId | quote }}
            {{- include "paystream.commonEnv" $root | nindent 12 }}
            {{- if eq .component "notifier" }}
            {{- include "paystream.secretsEnv" $root | nindent 12 }}
            {{- end }}
            {{- with $v.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          # Start-up connects to Postgres and Kafka, checks (or creates) the group's topics and
          # registers schemas before /health/live answers; liveness waits for it.
          {{- include "paystream.startupProbe" $v.startupProbe | nindent 10 }}
          # A fenced instance exits non-zero and the kubelet restarts it; the probes only see
          # whether the loop runs.
          livenessProbe:
            httpGet:
              path: /health/live
              port: http
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /health/ready
              port: http
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 3
          resources:
            {{- toYaml $v.resources | nindent 12 }}
          securityContext:
            {{- toYaml $root.Values.securityContext | nindent 12 }}
          volumeMounts:
            {{- include "paystream.volumeMounts" $root | nindent 12 }}
      volumes:
        {{- include "paystream.volumes" (dict "root" $root "configSecret" (include "paystream.componentName" (dict "root" $root "component" "config"))) | nindent 8 }}
      {{- with $v.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $v.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}

{{/*
The headless Service governing a consumer group's StatefulSet: stable DNS names for the pods'
health endpoints (the group serves no traffic). Same arguments as above.
*/}}
{{- define "paystream.consumerService" -}}
{{- $v := .values }}
{{- $ctx := dict "root" .root "component" .component }}
apiVersion: v1
kind: Service
metadata:
  name: {{ printf "%s-headless" (include "paystream.componentName" $ctx) }}
  labels:
    {{- include "paystream.labels" $ctx | nindent 4 }}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
  selector:
    {{- include "paystream.selectorLabels" $ctx | nindent 4 }}
  ports:
    - name: http
      port: {{ $v.port | int64 }}
      targetPort: http
      protocol: TCP
{{- end }}
