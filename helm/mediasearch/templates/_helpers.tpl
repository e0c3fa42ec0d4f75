{{/* Names ------------------------------------------------------------------------------------ */}}
{{- define "mediasearch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "mediasearch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "mediasearch.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "mediasearch.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels: common, and the selector of one component ----------------------------------------- */}}
{{- define "mediasearch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "mediasearch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* usage: include "mediasearch.selector" (list $ "gateway") */}}
{{- define "mediasearch.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "mediasearch.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "mediasearch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* In-cluster addresses (what the ConfigMap tells the services) --------------------------- */}}
{{- define "mediasearch.tritonHost" -}}{{ include "mediasearch.fullname" . }}-triton{{- end -}}
{{- define "mediasearch.gatewayHost" -}}{{ include "mediasearch.fullname" . }}-gateway{{- end -}}

{{/* One entry per shard, its StatefulSet's pods as replicas separated by "|" (the router tries
them in turn). usage: include "mediasearch.shardAddresses" . */}}
{{- define "mediasearch.shardAddresses" -}}
{{- $root := . -}}
{{- $fullname := include "mediasearch.fullname" . -}}
{{- $shards := list -}}
{{- range $s := until (int .Values.index.shards) -}}
{{- $replicas := list -}}
{{- range $r := until (int $root.Values.shards.replicas) -}}
{{- $replicas = append $replicas (printf "%s-shard-%d-%d.%s-shard-%d:%d" $fullname $s $r $fullname $s (int $root.Values.shards.port)) -}}
{{- end -}}
{{- $shards = append $shards (join "|" $replicas) -}}
{{- end -}}
{{- toJson $shards -}}
{{- end -}}

{{/* Pod pieces shared by every mediasearch workload ------------------------------------------ */}}
{{/* usage: include "mediasearch.scheduling" .Values.gateway */}}
{{- define "mediasearch.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* No Kubernetes API token; no service-link variables (a release named "mediasearch" would
otherwise hand every pod MEDIASEARCH_GATEWAY_PORT=tcp://..., which the settings refuse). */}}
{{- define "mediasearch.podSecurity" -}}
automountServiceAccountToken: false
enableServiceLinks: false
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* A workload's pod: the release's ServiceAccount (its cloud role) and the above. */}}
{{- define "mediasearch.podSpec" -}}
serviceAccountName: {{ include "mediasearch.serviceAccountName" . }}
{{ include "mediasearch.podSecurity" . }}
{{- end -}}

{{/* The environment of every mediasearch container: the ConfigMap, and the secrets by reference. */}}
{{- define "mediasearch.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "mediasearch.fullname" . }}-config
{{- with .Values.aws.existingSecret }}
  - secretRef:
      name: {{ . }}
{{- end }}
env:
  - name: MEDIASEARCH_DATABASE_URL
    valueFrom:
      secretKeyRef:
        name: {{ required "database.existingSecret is required: a Secret holding the PostgreSQL URL" .Values.database.existingSecret }}
        key: {{ .Values.database.urlKey }}
{{- end -}}

{{/* Every model a mediasearch pod may encode with, each a name in model.repository: model.name,
model.others, and reindex.modelName while the reindex Job is enabled. Gateways and indexers encode
with the live generation's model (its name in the database), so they must hold each one's files
before a switch or a rollback reaches them. usage: include "mediasearch.modelNames" . | fromJsonArray */}}
{{- define "mediasearch.modelNames" -}}
{{- $names := concat (list .Values.model.name) .Values.model.others -}}
{{- if .Values.reindex.enabled -}}
{{- $names = append $names (required "reindex.modelName is required: the new model's name in model.repository" .Values.reindex.modelName) -}}
{{- end -}}
{{- $names | uniq | toJson -}}
{{- end -}}

{{/* The models' manifests and tokenizers for a service, copied from S3 before it starts: one init
container per name of mediasearch.modelNames (the first, model.name, is "pull-model"). */}}
{{- define "mediasearch.pullModel" -}}
{{- $root := . -}}
{{- range $i, $name := include "mediasearch.modelNames" . | fromJsonArray }}
- name: {{ ternary "pull-model" (printf "pull-model-%d" $i) (eq $i 0) }}
  image: {{ include "mediasearch.image" $root }}
  imagePullPolicy: {{ $root.Values.image.pullPolicy }}
  args: [pull-model, {{ required "model.repository is required: s3://bucket/prefix" $root.Values.model.repository | quote }}{{ if $i }}, --name, {{ $name | quote }}{{ end }}]
  {{- include "mediasearch.env" $root | nindent 2 }}
  securityContext:
    {{- toYaml $root.Values.containerSecurityContext | nindent 4 }}
  resources:
    requests: {cpu: 50m, memory: 128Mi}
    limits: {cpu: 500m, memory: 256Mi}
  volumeMounts:
    - {name: models, mountPath: /models}
    - {name: tmp, mountPath: /tmp}
{{- end }}
{{- end -}}

{{- define "mediasearch.volumes" -}}
- name: models
  emptyDir: {sizeLimit: 64Mi}
- name: tmp
  emptyDir: {sizeLimit: 2Gi}
{{- end -}}

{{- define "mediasearch.volumeMounts" -}}
- {name: models, mountPath: /models, readOnly: true}
- {name: tmp, mountPath: /tmp}
{{- end -}}

{{/* The segment cache of a shard-server replica (an emptyDir): shards.cacheSize, or derived from the
vectors it serves. A cached segment holds the index (bytesPerVector), the ids (8 B) and the source
vectors kept for compaction (sourceBytesPerVector: 4 x the dimension), and half as much again
covers segments downloaded before the ones they replace are released:
  vectorsPerShard x (bytesPerVector + 8 + sourceBytesPerVector) x 1.5
e.g. 25,000,000 x (540 + 8 + 2,048) B x 1.5 = 92,839 MiB. usage: include "mediasearch.shardCacheSize" . */}}
{{- define "mediasearch.shardCacheSize" -}}
{{- $s := .Values.shards -}}
{{- if $s.cacheSize -}}
{{- $s.cacheSize -}}
{{- else -}}
{{- $perVector := add (int64 $s.bytesPerVector) 8 (int64 $s.sourceBytesPerVector) -}}
{{- printf "%dMi" (div (mul (div (mul (int64 $s.vectorsPerShard) $perVector) 1048576) 3) 2) -}}
{{- end -}}
{{- end }}
