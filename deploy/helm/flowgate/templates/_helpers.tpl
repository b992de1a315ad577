{{/*
Names and labels.
*/}}

{{- define "flowgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "flowgate.fullname" -}}
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

{{- define "flowgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels every object carries. */}}
{{- define "flowgate.labels" -}}
helm.sh/chart: {{ include "flowgate.chart" . }}
{{ include "flowgate.selectorLabels" . }}
app.kubernetes.io/version: {{ include "flowgate.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: flowgate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* What selects the chart's pods: name and instance; the component tells edge from sidecar pods. */}}
{{- define "flowgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "flowgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "flowgate.gatewaySelectorLabels" -}}
{{ include "flowgate.selectorLabels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "flowgate.workerSelectorLabels" -}}
{{ include "flowgate.selectorLabels" . }}
app.kubernetes.io/component: worker
{{- end }}

{{- define "flowgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "flowgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "flowgate.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag }}
{{- end }}

{{/* A plain `repository:tag` (or `repository@digest`): the registry is part of the repository the user sets. */}}
{{- define "flowgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (include "flowgate.imageTag" .) }}
{{- end }}
{{- end }}

{{/* A Secret or ConfigMap name from values; names may use templates (the defaults name the release). */}}
{{- define "flowgate.tplName" -}}
{{- $name := index . 0 }}
{{- $root := index . 1 }}
{{- if $name }}{{ tpl $name $root }}{{ end }}
{{- end }}

{{- define "flowgate.taskTokenSecret" -}}
{{- include "flowgate.tplName" (list .Values.taskTokens.existingSecret .) }}
{{- end }}

{{- define "flowgate.mintKeySecret" -}}
{{- include "flowgate.tplName" (list .Values.mintKeys.existingSecret .) }}
{{- end }}

{{/* True ("true") when the gateway can run more than one replica at a time. */}}
{{- define "flowgate.multiReplica" -}}
{{- if .Values.autoscaling.enabled }}
{{- if gt (int .Values.autoscaling.maxReplicas) 1 }}true{{ end }}
{{- else if gt (int .Values.replicaCount) 1 }}true{{ end }}
{{- end }}

{{/* True when token exchange is on: a [mint] section with an issuer. */}}
{{- define "flowgate.mintEnabled" -}}
{{- if and .Values.config.mint .Values.config.mint.issuer }}true{{ end }}
{{- end }}

{{/*
Every rule the schema cannot express: rendering fails with the reason rather than deploying a
gateway that misbehaves once a second replica or a restart comes along.
*/}}
{{- define "flowgate.validateEdge" -}}
{{- $multi := include "flowgate.multiReplica" . }}
{{- if and $multi (not (include "flowgate.taskTokenSecret" .)) (not .Values.taskTokens.allowUnsharedKey) }}
{{- fail (printf "taskTokens.existingSecret is required with more than one replica: replicas must share the task-token key (a worker may poll through one replica and complete through another). create a Secret with `kubectl create secret generic %s-task-tokens --from-literal=keys=\"$(openssl rand -base64 32)\"` and name it there, or set taskTokens.allowUnsharedKey=true to accept refused task completions" (include "flowgate.fullname" .)) }}
{{- end }}
{{- if and (include "flowgate.mintEnabled" .) (not (include "flowgate.mintKeySecret" .)) }}
{{- fail "mintKeys.existingSecret is required with config.mint: the signing keys must come from a Secret (`flowgate keys generate DIR`, then `kubectl create secret generic flowgate-mint-keys --from-file=DIR`); a key generated inside a pod would differ per replica and be lost on restart" }}
{{- end }}
{{- if and .Values.config.mint (not .Values.config.mint.issuer) }}
{{- fail "config.mint needs `issuer`: flowgate's own URL as clients and Temporal reach it (leave config.mint empty for no token exchange)" }}
{{- end }}
{{- $redis := and .Values.config.replay .Values.config.replay.redis_url }}
{{- if and $multi (include "flowgate.mintEnabled" .) (not $redis) (not .Values.replayCache.allowPerReplica) }}
{{- fail "config.replay.redis_url is required with config.mint and more than one replica: subject tokens are single use only if every replica shares the replay cache. point it at your Redis, or set replayCache.allowPerReplica=true to accept a token being exchanged once per replica" }}
{{- end }}
{{- $sleep := int .Values.shutdown.preStopSleepSeconds }}
{{- $grace := int .Values.shutdown.graceSeconds }}
{{- $term := int .Values.shutdown.terminationGracePeriodSeconds }}
{{- if le $term (add $sleep $grace) }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%d) must exceed shutdown.preStopSleepSeconds + shutdown.graceSeconds (%d + %d): the kubelet kills the pod at the end of the period, cutting off the long polls flowgate is still draining" $term $sleep $grace) }}
{{- end }}
{{- if and .Values.policies.includeSchema (hasKey .Values.policies.files "schema.cedarschema") }}
{{- fail "policies.files has its own schema.cedarschema: set policies.includeSchema=false to use it instead of the chart's" }}
{{- end }}
{{- if and .Values.shadowPolicies.enabled .Values.shadowPolicies.includeSchema (hasKey .Values.shadowPolicies.files "schema.cedarschema") }}
{{- fail "shadowPolicies.files has its own schema.cedarschema: set shadowPolicies.includeSchema=false to use it instead of the chart's" }}
{{- end }}
{{- if and (not .Values.policies.existingConfigMap) (not (include "flowgate.hasCedarFile" .Values.policies.files)) }}
{{- fail "policies.files has no *.cedar file (flowgate refuses a policy directory without one): add your policies, or name a ConfigMap in policies.existingConfigMap" }}
{{- end }}
{{- if and .Values.shadowPolicies.enabled (not .Values.shadowPolicies.existingConfigMap) (not (include "flowgate.hasCedarFile" .Values.shadowPolicies.files)) }}
{{- fail "shadowPolicies.files has no *.cedar file (flowgate refuses a policy directory without one): add the candidate policies, or name a ConfigMap in shadowPolicies.existingConfigMap" }}
{{- end }}
{{- if and .Values.listenTls.clientCa (not .Values.listenTls.existingSecret) }}
{{- fail "listenTls.clientCa needs listenTls.existingSecret (the Secret holding ca.crt)" }}
{{- end }}
{{- /* The message never repeats the URL: it holds the password. */}}
{{- if and $redis (include "flowgate.urlHasCredentials" $redis) (not .Values.configInSecret) }}
{{- fail "config.replay.redis_url carries credentials (a user:password@ part, or a pass= parameter), and flowgate.toml would be a ConfigMap, readable by anyone who may read ConfigMaps in the namespace: set configInSecret=true (and pass the URL at install time, e.g. --set config.replay.redis_url=..., rather than from a values file you commit)" }}
{{- end }}
{{- if and (ne .Values.service.type "ClusterIP") (not .Values.listenTls.existingSecret) (not .Values.service.allowPlaintext) }}
{{- fail (printf "service.type %s exposes the gRPC listener beyond the cluster, and it has no TLS: bearer tokens, minted credentials and workflow payloads would cross the network in plaintext. set listenTls.existingSecret (a kubernetes.io/tls Secret), or service.allowPlaintext=true when TLS ends in front of flowgate (a mesh's sidecar, a load balancer that terminates TLS)" .Values.service.type) }}
{{- end }}
{{- end }}

{{/*
Credentials in a URL (config.replay.redis_url): userinfo (`user:password@host`; any `@` after
the scheme counts, since a Redis URL has no other use for one) or the `pass=` query parameter
of a unix:// URL. "true" when there are.
*/}}
{{- define "flowgate.urlHasCredentials" -}}
{{- if or (regexMatch "^[A-Za-z][A-Za-z0-9+.-]*://(?s:.*)@" .) (regexMatch "(?i)[?&]pass(word)?=" .) }}true{{ end }}
{{- end }}

{{/* The URL with its credentials (as flowgate.urlHasCredentials finds them) replaced by REDACTED. */}}
{{- define "flowgate.redactUrl" -}}
{{- $url := regexReplaceAll "^([A-Za-z][A-Za-z0-9+.-]*://)(?s:.*)@" . "${1}REDACTED@" }}
{{- regexReplaceAll "(?i)([?&]pass(word)?=)[^&#]*" $url "${1}REDACTED" }}
{{- end }}

{{/*
The TCP port a URL connects to: its explicit port, else the scheme's (http 80, https 443,
redis and rediss 6379); nothing for a unix:// URL. Parsed with regular expressions rather than
urlParse, whose error message would print a password.
*/}}
{{- define "flowgate.urlPort" -}}
{{- $scheme := lower (regexFind "^[A-Za-z][A-Za-z0-9+.-]*" .) }}
{{- $authority := regexFind "^[^/?#]*" (regexReplaceAll "^[A-Za-z][A-Za-z0-9+.-]*://((?s:.*)@)?" . "") }}
{{- $port := regexFind "[0-9]+$" (regexFind ":[0-9]+$" $authority) }}
{{- if $port }}{{ $port }}
{{- else if eq $scheme "http" }}80
{{- else if or (eq $scheme "https") (not (contains "://" .)) }}443
{{- else if has $scheme (list "redis" "rediss") }}6379
{{- end }}
{{- end }}

{{- define "flowgate.hasCedarFile" -}}
{{- range $name, $text := . }}{{ if and $text (hasSuffix ".cedar" $name) }}true{{ end }}{{ end }}
{{- end }}

{{- define "flowgate.validateSidecar" -}}
{{- if not (and .Values.worker.image.repository .Values.worker.image.tag) }}
{{- fail "worker.image.repository and worker.image.tag are required in sidecar mode: the worker that runs beside the flowgate sidecar" }}
{{- end }}
{{- if not (and .Values.sidecar.config.upstream .Values.sidecar.config.upstream.address) }}
{{- fail "sidecar.config.upstream.address is required in sidecar mode: the flowgate gateway, e.g. https://flowgate.example.com:7233" }}
{{- end }}
{{- if not (and .Values.sidecar.config.credential .Values.sidecar.config.credential.scope) }}
{{- fail "sidecar.config.credential.scope is required in sidecar mode, e.g. \"namespace:payments role:worker task_queue:deploys\"" }}
{{- end }}
{{- end }}

{{/* The hardened container securityContext, with the user's additions over it. */}}
{{- define "flowgate.containerSecurityContext" -}}
{{- $base := dict "runAsNonRoot" true "runAsUser" 65532 "runAsGroup" 65532 "readOnlyRootFilesystem" true "allowPrivilegeEscalation" false "privileged" false "capabilities" (dict "drop" (list "ALL")) "seccompProfile" (dict "type" "RuntimeDefault") }}
{{- toYaml (mergeOverwrite $base (deepCopy (.Values.securityContext | default dict))) }}
{{- end }}

{{- define "flowgate.podSecurityContext" -}}
{{- $base := dict "runAsNonRoot" true "runAsUser" 65532 "runAsGroup" 65532 "fsGroup" 65532 "seccompProfile" (dict "type" "RuntimeDefault") }}
{{- toYaml (mergeOverwrite $base (deepCopy (.Values.podSecurityContext | default dict))) }}
{{- end }}

{{/*
A policy directory: the policies ConfigMap (the chart's, or the user's existingConfigMap) and,
with includeSchema, the chart's schema, projected into one directory. A projected volume is
updated like a ConfigMap volume (an atomic `..data` swap), so flowgate's watcher reloads both.
(dict "root" . "name" VOLUME "set" .Values.policies)
*/}}
{{- define "flowgate.policyVolume" -}}
{{- $root := .root }}
- name: {{ .name }}
  projected:
    sources:
      - configMap:
          {{- if .set.existingConfigMap }}
          name: {{ tpl .set.existingConfigMap $root }}
          {{- else }}
          name: {{ include "flowgate.fullname" $root }}-{{ .name }}
          {{- end }}
      {{- if .set.includeSchema }}
      - configMap:
          name: {{ include "flowgate.fullname" $root }}-policy-schema
      {{- end }}
{{- end }}
