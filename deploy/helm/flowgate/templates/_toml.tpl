{{/*
A small TOML writer for flowgate's config files.

Helm's own toToml is not used: values read from YAML files reach templates as float64, and
toToml writes them as `4194304.0`, which flowgate refuses for its integer settings. Here an
integral number is written as an integer, strings are written as JSON strings (every JSON
string escape is also a TOML basic-string escape), lists as inline arrays and maps as inline
tables. A key whose value is null is left out, so `--set config.limits.max_message_bytes=null`
restores flowgate's default.
*/}}

{{- define "flowgate.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "flowgate.toml.value" -}}
{{- $v := . }}
{{- if kindIs "string" $v }}{{ toJson $v }}
{{- else if kindIs "bool" $v }}{{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "float32" $v) }}
{{- if eq (float64 (int64 $v)) (float64 $v) }}{{ int64 $v }}{{ else }}{{ $v }}{{ end }}
{{- else if or (kindIs "int" $v) (kindIs "int64" $v) (kindIs "int32" $v) (kindIs "uint64" $v) }}{{ $v }}
{{- else if kindIs "slice" $v }}[{{ range $i, $item := $v }}{{ if $i }}, {{ end }}{{ include "flowgate.toml.value" $item }}{{ end }}]
{{- else if kindIs "map" $v }}{ {{- $first := true }}{{ range $k, $item := $v }}{{ if not (kindIs "invalid" $item) }}{{ if not $first }},{{ end }} {{ include "flowgate.toml.key" $k }} = {{ include "flowgate.toml.value" $item }}{{ $first = false }}{{ end }}{{ end }} }
{{- else }}{{ fail (printf "cannot write %v (%s) as a TOML value" $v (kindOf $v)) }}
{{- end }}
{{- end }}

{{/* The `key = value` lines of a table: (dict "values" MAP). */}}
{{- define "flowgate.toml.pairs" -}}
{{- range $k, $v := .values }}
{{- if not (kindIs "invalid" $v) }}
{{ include "flowgate.toml.key" $k }} = {{ include "flowgate.toml.value" $v }}
{{- end }}
{{- end }}
{{- end }}

{{/* A `[name]` table: (dict "name" NAME "values" MAP). */}}
{{- define "flowgate.toml.table" -}}
[{{ .name }}]
{{- include "flowgate.toml.pairs" . }}
{{- end }}
