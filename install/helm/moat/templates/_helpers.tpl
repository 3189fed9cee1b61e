{{/* The image of every container: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "moat.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* The labels of every object (no release or Helm labels: the chart renders what moat.yaml holds). */}}
{{- define "moat.labels" -}}
app.kubernetes.io/name: moat
{{- end -}}

{{/* The port of metrics.address (host:port or [v6]:port). */}}
{{- define "moat.metricsPort" -}}
{{ regexReplaceAll "^.*:" .Values.metrics.address "" }}
{{- end -}}

{{/* Where the kubelet, on the node's network, reaches the listener: its host, or 127.0.0.1 for a wildcard. */}}
{{- define "moat.metricsHost" -}}
{{- $host := regexReplaceAll ":[0-9]+$" .Values.metrics.address "" | trimPrefix "[" | trimSuffix "]" -}}
{{- if has $host (list "" "0.0.0.0" "::") -}}
127.0.0.1
{{- else -}}
{{ $host }}
{{- end -}}
{{- end -}}

{{/* Whether flow events go to a file on the node (rather than to stdout). */}}
{{- define "moat.flowLogFile" -}}
{{- if and .Values.flowLog.enabled (ne .Values.flowLog.path "-") -}}true{{- end -}}
{{- end -}}

{{/* The FirewallConfig's spec from values.config, leaving out what is empty (absent means the default). */}}
{{- define "moat.configSpec" -}}
{{- $c := .Values.config -}}
{{- with $c.clusterCIDRs }}
clusterCIDRs:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $c.defaultIngress }}
defaultIngress: {{ . }}
{{- end }}
{{- with $c.defaultEgress }}
defaultEgress: {{ . }}
{{- end }}
{{- with $c.metadataAPI }}
{{- if or .action .addresses .allowNamespaces }}
metadataAPI:
  {{- with .action }}
  action: {{ . }}
  {{- end }}
  {{- with .addresses }}
  addresses:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .allowNamespaces }}
  allowNamespaces:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end }}
{{- with $c.conntrack }}
{{- if hasKey . "maxPerEndpoint" }}
conntrack:
  maxPerEndpoint: {{ .maxPerEndpoint }}
{{- end }}
{{- end }}
{{- with $c.sourceValidation }}
sourceValidation: {{ . }}
{{- end }}
{{- end -}}
