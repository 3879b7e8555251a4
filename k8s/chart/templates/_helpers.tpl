{{/* Labels every object carries; "component" tells web, a worker, beat, redis... apart. */}}
{{- define "places.labels" -}}
app.kubernetes.io/name: {{ .root.Values.name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: places
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "places.selector" -}}
app.kubernetes.io/name: {{ .root.Values.name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image, pinned: a version tag (never latest) and, when known, the digest. */}}
{{- define "places.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if eq $tag "latest" -}}
{{- fail "image.tag=latest is refused: pin a release version (and image.digest)" -}}
{{- end -}}
{{- if .Values.image.digest -}}
{{- if not (hasPrefix "sha256:" .Values.image.digest) -}}
{{- fail "image.digest must be sha256:<hex>" -}}
{{- end -}}
{{ .Values.image.repository }}:{{ $tag }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{- define "places.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{- define "places.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/*
Database URLs carry no password: it is read from the operator's app Secret, mounted as a
file (DATABASE_PASSWORD_FILE). "pooled" goes through the PgBouncer Pooler (web); the others
connect to the primary's -rw service directly (workers, beat, migrations: session advisory
locks, server-side cursors, DDL). Analytics read the -ro service (replicas only).
*/}}
{{- define "places.databaseEnv" -}}
{{- $db := .root.Values.database -}}
{{- if $db.cnpg }}
{{- $host := printf "%s-rw" $db.clusterName -}}
{{- if and .pooled $db.pooler.enabled -}}
{{- $host = printf "%s-pooler-rw" $db.clusterName -}}
{{- end }}
- name: DATABASE_URL
  value: {{ printf "postgis://%s@%s:5432/%s" $db.owner $host $db.name | quote }}
- name: REPLICA_DATABASE_URL
  value: {{ printf "postgis://%s@%s-%s:5432/%s" $db.owner $db.clusterName (ternary "ro" "rw" (gt (int $db.instances) 1)) $db.name | quote }}
- name: DATABASE_PASSWORD_FILE
  value: /run/secrets/db/password
{{- else }}
- name: DATABASE_URL_FILE
  value: /run/secrets/places/DATABASE_URL
- name: REPLICA_DATABASE_URL_FILE
  value: /run/secrets/places/REPLICA_DATABASE_URL
{{- end }}
{{- end }}

{{/* Every app container: ConfigMap, the secrets' *_FILE paths, the database URLs. */}}
{{- define "places.env" -}}
envFrom:
  - configMapRef:
      name: {{ .root.Values.name }}-config
env:
{{- range (include "places.secretKeys" .root | fromJsonArray) }}
  - name: {{ . }}_FILE
    value: /run/secrets/places/{{ . }}
{{- end }}
{{- include "places.databaseEnv" . | nindent 2 }}
{{- end }}

{{/* Keys of secrets.name the app reads as files: secrets.keys, and the bucket's credentials
when uploads go to S3 with credentials from the Secret. */}}
{{- define "places.secretKeys" -}}
{{- $keys := .Values.secrets.keys }}
{{- $s3 := .Values.uploads.s3 }}
{{- if and $s3.bucket $s3.credentialsFromSecret }}
{{- $keys = concat $keys (list "UPLOADS_S3_ACCESS_KEY_ID" "UPLOADS_S3_SECRET_ACCESS_KEY") | uniq }}
{{- end }}
{{- toJson $keys }}
{{- end }}

{{/* "true" when uploads live on the shared media volume (no bucket named). */}}
{{- define "places.mediaVolume" -}}
{{- if not .Values.uploads.s3.bucket }}true{{ end }}
{{- end }}

{{- define "places.secretMounts" -}}
- name: secrets
  mountPath: /run/secrets/places
  readOnly: true
{{- if .Values.database.cnpg }}
- name: db-secret
  mountPath: /run/secrets/db
  readOnly: true
{{- end }}
{{- end }}

{{- define "places.secretVolumes" -}}
- name: secrets
  secret:
    secretName: {{ .Values.secrets.name }}
    defaultMode: 0440
{{- if .Values.database.cnpg }}
# The operator's Secret for the owner role (keys username, password, ...).
- name: db-secret
  secret:
    secretName: {{ .Values.database.clusterName }}-app
    defaultMode: 0440
    items:
      - key: password
        path: password
{{- end }}
{{- end }}

{{- define "places.configData" -}}
DJANGO_SETTINGS_MODULE: config.settings.production
SENTRY_ENVIRONMENT: {{ .Values.environment | quote }}
ALLOWED_HOSTS: {{ .Values.host | quote }}
CSRF_TRUSTED_ORIGINS: {{ printf "https://%s" .Values.host | quote }}
REDIS_URL: {{ printf "redis://%s-redis-cache:6379/0" .Values.name | quote }}
CELERY_BROKER_URL: {{ printf "redis://%s-redis-broker:6379/1" .Values.name | quote }}
MEDIA_ROOT: /app/.run/media
{{- with .Values.uploads.s3 }}
{{- if .bucket }}
UPLOADS_S3_BUCKET: {{ .bucket | quote }}
{{- with .endpointURL }}
UPLOADS_S3_ENDPOINT_URL: {{ . | quote }}
{{- end }}
{{- with .region }}
UPLOADS_S3_REGION: {{ . | quote }}
{{- end }}
{{- with .prefix }}
UPLOADS_S3_PREFIX: {{ . | quote }}
{{- end }}
{{- end }}
{{- end }}
# The root filesystem is read-only; whatever writes under $HOME gets the /tmp emptyDir.
HOME: /tmp
PROMETHEUS_MULTIPROC_DIR: /tmp/prometheus
{{- range $key, $value := .Values.config }}
{{ $key }}: {{ $value | quote }}
{{- end }}
{{- end }}

{{/* Egress of the app's pods: database (when asked), both Redis, listed HTTPS endpoints. */}}
{{- define "places.egressDataRules" -}}
{{- $v := .root.Values }}
{{- if .database }}
- to:
    - podSelector:
        matchLabels:
          cnpg.io/cluster: {{ $v.database.clusterName }}
    - podSelector:
        matchLabels:
          cnpg.io/poolerName: {{ $v.database.clusterName }}-pooler-rw
  ports:
    - port: 5432
      protocol: TCP
{{- end }}
- to:
    - podSelector:
        matchLabels:
          app.kubernetes.io/name: {{ $v.name }}
        matchExpressions:
          - key: app.kubernetes.io/component
            operator: In
            values: [redis-broker, redis-cache]
  ports:
    - port: 6379
      protocol: TCP
{{- with $v.networkPolicy.appEgressCIDRs }}
- to:
    {{- range . }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - port: 443
      protocol: TCP
{{- end }}
{{- if and .database $v.uploads.s3.bucket }}
# The uploads' bucket.
- to:
    {{- range ($v.uploads.s3.egressCIDRs | default $v.networkPolicy.objectStorageCIDRs) }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - port: {{ $v.uploads.s3.port }}
      protocol: TCP
{{- end }}
{{- end }}
