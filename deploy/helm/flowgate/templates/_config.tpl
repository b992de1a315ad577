{{/*
flowgate.toml, from `config` (flowgate's own keys, as in README's configuration reference)
plus the keys the chart owns: the listen and admin addresses, the shutdown grace, and every
path to something the chart mounts.
*/}}

{{/* Where the chart mounts things inside the gateway container. */}}
{{- define "flowgate.paths" -}}
config: /etc/flowgate/config
policies: /etc/flowgate/policies
shadowPolicies: /etc/flowgate/shadow-policies
mintKeys: /etc/flowgate/keys
taskTokens: /etc/flowgate/task-tokens
listenTls: /etc/flowgate/tls
upstreamTls: /etc/flowgate/upstream-tls
upstreamApiKey: /etc/flowgate/upstream-api-key
{{- end }}

{{- define "flowgate.config" -}}
{{- include "flowgate.configFrom" (dict "root" . "config" .Values.config) }}
{{- end }}

{{/*
What `checksum/config` hashes: flowgate.toml with the credentials of config.replay.redis_url
replaced by REDACTED. The annotation is on the pod, which more people may read than the Secret
holding the config, and a hash of a config whose every other line is known would let them test
password guesses offline. So a change of the Redis password alone does not roll the pods
(README.md, "Redis and secrets in the config"); any other change does.
*/}}
{{- define "flowgate.configChecksum" -}}
{{- $c := deepCopy .Values.config }}
{{- if and $c.replay $c.replay.redis_url }}
{{- $_ := set $c.replay "redis_url" (include "flowgate.redactUrl" $c.replay.redis_url) }}
{{- end }}
{{- include "flowgate.configFrom" (dict "root" . "config" $c) | sha256sum }}
{{- end }}

{{/* flowgate.toml from a `config` map: (dict "root" . "config" MAP). */}}
{{- define "flowgate.configFrom" -}}
{{- $root := .root }}
{{- $paths := include "flowgate.paths" $root | fromYaml }}
{{- $c := .config }}
{{- $listen := deepCopy ($c.listen | default dict) }}
{{- $_ := set $listen "address" (printf "%s:%d" $root.Values.bindAddress (int $root.Values.ports.grpc)) }}
{{- $_ := set $listen "shutdown_grace" (printf "%ds" (int $root.Values.shutdown.graceSeconds)) }}
{{- if $root.Values.listenTls.existingSecret }}
{{- $tls := dict "cert" (printf "%s/tls.crt" $paths.listenTls) "key" (printf "%s/tls.key" $paths.listenTls) }}
{{- if $root.Values.listenTls.clientCa }}
{{- $_ := set $tls "client_ca" (printf "%s/ca.crt" $paths.listenTls) }}
{{- end }}
{{- $_ := set $listen "tls" $tls }}
{{- end }}
{{- $upstream := deepCopy ($c.upstream | default dict) }}
{{- with $root.Values.upstreamTls }}
{{- if .existingSecret }}
{{- if .ca }}{{ $_ := set $upstream "ca" (printf "%s/%s" $paths.upstreamTls .ca) }}{{ end }}
{{- if .cert }}{{ $_ := set $upstream "cert" (printf "%s/%s" $paths.upstreamTls .cert) }}{{ end }}
{{- if .key }}{{ $_ := set $upstream "key" (printf "%s/%s" $paths.upstreamTls .key) }}{{ end }}
{{- end }}
{{- end }}
{{- if $root.Values.upstreamApiKey.existingSecret }}
{{- $_ := set $upstream "credentials" "api_key" }}
{{- $_ := set $upstream "api_key_file" (printf "%s/%s" $paths.upstreamApiKey $root.Values.upstreamApiKey.key) }}
{{- end }}
{{- $policy := deepCopy ($c.policy | default dict) }}
{{- $_ := set $policy "dir" $paths.policies }}
{{- if $root.Values.shadowPolicies.enabled }}
{{- $_ := set $policy "shadow_dir" $paths.shadowPolicies }}
{{- end -}}
# Rendered by the flowgate Helm chart from its values (`config` and the chart's own settings).
# `flowgate check --config flowgate.toml` validates a copy with the same directories.
{{ include "flowgate.toml.table" (dict "name" "listen" "values" $listen) }}

{{ include "flowgate.toml.table" (dict "name" "admin" "values" (dict "address" (printf "%s:%d" $root.Values.bindAddress (int $root.Values.ports.admin)))) }}

{{ include "flowgate.toml.table" (dict "name" "upstream" "values" $upstream) }}

{{ include "flowgate.toml.table" (dict "name" "policy" "values" $policy) }}

{{ include "flowgate.toml.table" (dict "name" "audit" "values" ($c.audit | default dict)) }}
{{- range $section := list "identity" "limits" "token_cache" "replay" "metrics" "traces" }}
{{- with (index $c $section) }}

{{ include "flowgate.toml.table" (dict "name" $section "values" .) }}
{{- end }}
{{- end }}
{{- /* [http_api] is on when present, even empty: `with` would skip an empty map. */}}
{{- if kindIs "map" $c.http_api }}

{{ include "flowgate.toml.table" (dict "name" "http_api" "values" $c.http_api) }}
{{- end }}
{{- if include "flowgate.mintEnabled" $root }}
{{- $mint := deepCopy $c.mint }}
{{- $_ := set $mint "key_dir" $paths.mintKeys }}

{{ include "flowgate.toml.table" (dict "name" "mint" "values" $mint) }}
{{- end }}
{{- if include "flowgate.taskTokenSecret" $root }}

{{ include "flowgate.toml.table" (dict "name" "task_tokens" "values" (dict "key_file" (printf "%s/%s" $paths.taskTokens $root.Values.taskTokens.key))) }}
{{- end }}
{{- range $issuer := $c.issuers }}

[[issuers]]
{{- /* The name first, so the file reads like the configuration reference's examples. */}}
{{- if hasKey $issuer "name" }}
name = {{ include "flowgate.toml.value" $issuer.name }}
{{- end }}
{{- include "flowgate.toml.pairs" (dict "values" (omit $issuer "name")) }}
{{- end }}
{{- range $limit := $c.rate_limits }}

[[rate_limits]]
name = {{ include "flowgate.toml.value" $limit.name }}
{{- include "flowgate.toml.pairs" (dict "values" (omit $limit "name")) }}
{{- end }}
{{- end }}

{{/* sidecar.toml, from sidecar.config plus the listen address and the projected token file. */}}
{{- define "flowgate.sidecarConfig" -}}
{{- $c := .Values.sidecar.config }}
{{- $listen := deepCopy ($c.listen | default dict) }}
{{- $_ := set $listen "address" (printf "127.0.0.1:%d" (int .Values.sidecar.port)) }}
{{- $upstream := deepCopy ($c.upstream | default dict) }}
{{- $credential := deepCopy ($c.credential | default dict) }}
{{- if .Values.sidecar.ca.existingSecret }}
{{- $ca := printf "%s/%s" .Values.sidecar.ca.mountPath .Values.sidecar.ca.key }}
{{- $_ := set $upstream "ca" $ca }}
{{- end -}}
# Rendered by the flowgate Helm chart (sidecar mode). The worker beside this sidecar connects
# to 127.0.0.1:{{ .Values.sidecar.port }} without TLS and without a token.
{{ include "flowgate.toml.table" (dict "name" "listen" "values" $listen) }}

{{ include "flowgate.toml.table" (dict "name" "upstream" "values" $upstream) }}

{{ include "flowgate.toml.table" (dict "name" "credential" "values" $credential) }}

# The kubelet's projected service-account token: re-read, and exchanged again, when it rotates.
{{ include "flowgate.toml.table" (dict "name" "credential.source" "values" (dict "kind" "file" "path" (printf "%s/%s" .Values.sidecar.token.mountPath .Values.sidecar.token.path))) }}
{{- end }}
