{{/* The name every object carries. The `app.kubernetes.io/name` label stays `mytpe-relay`: the alerts and the
dashboard select job="mytpe-relay", and the ServiceMonitor takes the job from that label. */}}
{{- define "relay.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The relay's pods. The `helm test` pod and the drain Job carry another component, so that the Service,
the PodDisruptionBudget and the spread constraints never count them as relays. */}}
{{- define "relay.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: relay
{{- end -}}

{{- define "relay.labels" -}}
{{ include "relay.selectorLabels" . }}
{{ include "relay.baseLabels" . }}
{{- end -}}

{{- define "relay.baseLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: mytpe-pay
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "relay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "relay.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "relay.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "relay.workloadKind" -}}
{{- if .Values.spool.enabled }}StatefulSet{{ else }}Deployment{{ end -}}
{{- end -}}

{{/* Secret files, each mounted as a directory (never subPath, so that the kubelet's updates reach the relay):
a list of {name, dir, secret, mode, files: [{key, path, variable}]} built from the values. */}}
{{- define "relay.secretMounts" -}}
{{- $mounts := list -}}
{{- $v := .Values -}}
{{- if $v.sources.secretName -}}
{{- $mounts = append $mounts (dict "name" "sources" "dir" "/etc/mytpe-relay/sources" "secret" $v.sources.secretName "mode" 256 "files" (list (dict "key" $v.sources.key "path" "sources.yaml" "variable" "RELAY_SOURCES_FILE"))) -}}
{{- end -}}
{{- with $v.kafka.saslPassword -}}{{- if .secretName -}}
{{- $mounts = append $mounts (dict "name" "kafka-user" "dir" "/etc/mytpe-relay/kafka-user" "secret" .secretName "mode" 256 "files" (list (dict "key" .key "path" "password" "variable" "RELAY_KAFKA_SASL_PASSWORD_FILE"))) -}}
{{- end -}}{{- end -}}
{{- with $v.kafka.ca -}}{{- if .secretName -}}
{{- $mounts = append $mounts (dict "name" "kafka-ca" "dir" "/etc/mytpe-relay/kafka-ca" "secret" .secretName "mode" 292 "files" (list (dict "key" .key "path" "ca.crt" "variable" "RELAY_KAFKA_SSL_CA_FILE"))) -}}
{{- end -}}{{- end -}}
{{- with $v.kafka.clientCert -}}{{- if .secretName -}}
{{- $files := list (dict "key" .certKey "path" "user.crt" "variable" "RELAY_KAFKA_SSL_CERT_FILE") (dict "key" .keyKey "path" "user.key" "variable" "RELAY_KAFKA_SSL_KEY_FILE") -}}
{{- if .keyPasswordKey -}}{{- $files = append $files (dict "key" .keyPasswordKey "path" "key-password" "variable" "RELAY_KAFKA_SSL_KEY_PASSWORD_FILE") -}}{{- end -}}
{{- $mounts = append $mounts (dict "name" "kafka-client" "dir" "/etc/mytpe-relay/kafka-client" "secret" .secretName "mode" 256 "files" $files) -}}
{{- end -}}{{- end -}}
{{- with $v.kafka.oauthToken -}}{{- if .secretName -}}
{{- $mounts = append $mounts (dict "name" "kafka-oauth" "dir" "/etc/mytpe-relay/kafka-oauth" "secret" .secretName "mode" 256 "files" (list (dict "key" .key "path" "token" "variable" "RELAY_KAFKA_OAUTH_TOKEN_FILE"))) -}}
{{- end -}}{{- end -}}
{{- with $v.dedupe.ca -}}{{- if .secretName -}}
{{- $mounts = append $mounts (dict "name" "redis-ca" "dir" "/etc/mytpe-relay/redis-ca" "secret" .secretName "mode" 292 "files" (list (dict "key" .key "path" "ca.crt" "variable" "RELAY_DEDUPE_TLS_CA_FILE"))) -}}
{{- end -}}{{- end -}}
{{- with $v.dedupe.clientCert -}}{{- if .secretName -}}
{{- $mounts = append $mounts (dict "name" "redis-client" "dir" "/etc/mytpe-relay/redis-client" "secret" .secretName "mode" 256 "files" (list (dict "key" .certKey "path" "client.crt" "variable" "RELAY_DEDUPE_TLS_CERT_FILE") (dict "key" .keyKey "path" "client.key" "variable" "RELAY_DEDUPE_TLS_KEY_FILE"))) -}}
{{- end -}}{{- end -}}
{{- with $v.mytpeApi -}}{{- if .secretName -}}
{{- $mounts = append $mounts (dict "name" "mytpe-api" "dir" "/etc/mytpe-relay/mytpe-api" "secret" .secretName "mode" 256 "files" (list (dict "key" .keyKey "path" "api-key" "variable" "RELAY_MYTPE_API_KEY_FILE") (dict "key" .secretKey "path" "api-secret" "variable" "RELAY_MYTPE_API_SECRET_FILE"))) -}}
{{- end -}}{{- end -}}
{{- toJson (dict "mounts" $mounts) -}}
{{- end -}}

{{/* Every setting the ConfigMap holds: the values' `config`, the port, the spool's, tracing's, and the path of
each mounted secret file. */}}
{{- define "relay.settings" -}}
{{- $settings := dict "RELAY_PORT" (include "relay.string" .Values.containerPort) -}}
{{- range $name, $value := .Values.config -}}
{{- $_ := set $settings $name (include "relay.string" $value) -}}
{{- end -}}
{{- if .Values.spool.enabled -}}
{{- $_ := set $settings "RELAY_SPOOL_DIR" .Values.spool.mountPath -}}
{{- $_ := set $settings "RELAY_SPOOL_AFTER_SECONDS" (include "relay.string" .Values.spool.afterSeconds) -}}
{{- $_ := set $settings "RELAY_SPOOL_MAX_BYTES" (include "relay.string" .Values.spool.maxBytes) -}}
{{- $_ := set $settings "RELAY_SPOOL_DRAIN_SECONDS" (include "relay.string" .Values.spool.drainSeconds) -}}
{{- if .Values.spool.recoveryCheck -}}
{{- $_ := set $settings "RELAY_SPOOL_RECOVERY_CHECK" "true" -}}
{{- end -}}
{{- end -}}
{{- range $name, $value := include "relay.tracingSettings" . | fromJson -}}
{{- $_ := set $settings $name $value -}}
{{- end -}}
{{- range (include "relay.secretMounts" . | fromJson).mounts -}}
{{- $dir := .dir -}}
{{- range .files -}}
{{- $_ := set $settings .variable (printf "%s/%s" $dir .path) -}}
{{- end -}}
{{- end -}}
{{- toJson $settings -}}
{{- end -}}

{{/* The OTEL_* variables, from the `tracing` values only; off, OTEL_SDK_DISABLED=true (the others stay, so that
turning it on changes one value). */}}
{{- define "relay.tracingSettings" -}}
{{- $t := .Values.tracing -}}
{{- toJson (dict "OTEL_SDK_DISABLED" (ternary "false" "true" $t.enabled) "OTEL_SERVICE_NAME" $t.serviceName "OTEL_EXPORTER_OTLP_ENDPOINT" $t.endpoint "OTEL_TRACES_SAMPLER" "parentbased_traceidratio" "OTEL_TRACES_SAMPLER_ARG" (include "relay.string" $t.sampleRatio)) -}}
{{- end -}}

{{/* The collector's port (the endpoint's, else its scheme's), let out by the NetworkPolicy while tracing is on. */}}
{{- define "relay.tracingPort" -}}
{{- $url := urlParse .Values.tracing.endpoint -}}
{{- $port := regexFind ":[0-9]+$" $url.host -}}
{{- if $port -}}{{- trimPrefix ":" $port -}}{{- else -}}{{- ternary 443 80 (eq $url.scheme "https") -}}{{- end -}}
{{- end -}}

{{/* The relay's longest time from SIGTERM to exit (relay/settings/model.py, stop_bound_seconds: with Redis dedupe, the
drain's 4 s for the store operations and two clients' closes, relay/settings/redis.py STORE_STOP_SECONDS; with tracing on, plus the
exporter's last spans, relay/tracing/config.py SHUTDOWN_SECONDS) plus the preStop sleep: the grace period must
exceed it, or the kubelet kills a relay that is still draining. */}}
{{- define "relay.stopBound" -}}
{{- $c := .Values.config -}}
{{- $delay := include "relay.seconds" (list $c "RELAY_SHUTDOWN_DELAY_SECONDS" 3) | float64 -}}
{{- $drain := include "relay.seconds" (list $c "RELAY_SHUTDOWN_TIMEOUT_SECONDS" 15) | float64 -}}
{{- $flush := include "relay.seconds" (list $c "RELAY_FLUSH_TIMEOUT_SECONDS" 5) | float64 -}}
{{- $bound := addf $delay $drain $flush 1.0 (float64 .Values.preStopSleepSeconds) -}}
{{- if .Values.spool.enabled -}}
{{- $bound = addf $bound (float64 .Values.spool.drainSeconds) (float64 .Values.spool.afterSeconds) -}}
{{- end -}}
{{- if .Values.dedupe.urlSecret.secretName -}}
{{- $bound = addf $bound 8.0 -}}
{{- end -}}
{{- if .Values.tracing.enabled -}}
{{- $bound = addf $bound 5.0 -}}
{{- end -}}
{{- $bound -}}
{{- end -}}

{{/* A number of seconds from `config` as the relay reads it (relay/settings/parsers.py): spaces around it
trimmed, `_` between digits taken; unset or empty, the relay's default. Anything else fails the render: read as 0
(sprig's float64 of " 1000 "), a grace period checked against it would let the kubelet kill a relay draining. */}}
{{- define "relay.seconds" -}}
{{- $value := index (index . 0) (index . 1) -}}
{{- $text := trim (replace "_" "" (toString (default "" $value))) -}}
{{- if eq $text "" -}}
{{- index . 2 -}}
{{- else if regexMatch "^[+]?([0-9]+([.][0-9]*)?|[.][0-9]+)([eE][+-]?[0-9]+)?$" $text -}}
{{- trimPrefix "+" $text -}}
{{- else -}}
{{- fail (printf "config.%s: %q is not a number of seconds" (index . 1) (toString $value)) -}}
{{- end -}}
{{- end -}}

{{/* The startup probe's failures allowed, one every 2 s. Without the spool, a start that cannot reach Kafka fails
after RELAY_STARTUP_TIMEOUT_SECONDS, then takes up to 10 s to say why (relay/kafka/security.py DIAGNOSE_TIMEOUT,
every bootstrap server at once): the probe leaves it that and 20 s more, 60 s at least, or the kubelet kills the pod
before its line is written. With the spool it starts while Kafka is unreachable: 600 s for the spool's recovery. At
most 2^31 - 1, the field's int32 (the API server refuses more). */}}
{{- define "relay.startupFailures" -}}
{{- if .Values.spool.enabled -}}
300
{{- else -}}
{{- $start := include "relay.seconds" (list .Values.config "RELAY_STARTUP_TIMEOUT_SECONDS" 30) | float64 -}}
{{- max 30 (int (minf 2147483647.0 (ceil (divf (addf $start 30.0) 2.0)))) -}}
{{- end -}}
{{- end -}}

{{- define "relay.gracePeriod" -}}
{{- $grace := .Values.terminationGracePeriodSeconds -}}
{{- if not $grace -}}{{- $grace = ternary 120 45 .Values.spool.enabled -}}{{- end -}}
{{- $bound := include "relay.stopBound" . | float64 -}}
{{- if le (float64 $grace) $bound -}}
{{- fail (printf "terminationGracePeriodSeconds %v is not above preStop + the relay's stop bound (%v s): the kubelet would kill it while it drains" $grace $bound) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}

{{/* Several replicas need a shared dedupe store: with memory:// a retry landing on another replica is
published twice. With the HPA on, its maximum counts, not replicaCount (the workload then has no count). */}}
{{- define "relay.checkDedupe" -}}
{{- $most := .Values.replicaCount -}}
{{- if .Values.autoscaling.enabled -}}{{- $most = .Values.autoscaling.maxReplicas -}}{{- end -}}
{{- if and (gt (int $most) 1) (not .Values.dedupe.urlSecret.secretName) -}}
{{- fail (printf "%v replicas can run, but dedupe.urlSecret is not set: memory:// dedupe is per process, so a retry on another replica would be published twice. Set dedupe.urlSecret (a redis:// URL), or run one replica" $most) -}}
{{- end -}}
{{- end -}}

{{/* extraEnv comes after the ConfigMap and wins over it: a RELAY_* there would skip the schema (a secret in plain
text, a typo) and the grace period check (a longer spool drain). Settings go in `config`, secrets in Secrets. */}}
{{- define "relay.checkExtraEnv" -}}
{{- range .Values.extraEnv -}}
{{- if hasPrefix "RELAY_" .name -}}
{{- fail (printf "extraEnv: %s is a relay setting: set it in `config` (checked by the schema and the grace period), or a secret through its *.secretName value" .name) -}}
{{- end -}}
{{- if hasPrefix "OTEL_" .name -}}
{{- fail (printf "extraEnv: %s is a tracing setting: set it through the `tracing` values (the one place the OTEL_* variables come from)" .name) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Counts that cannot work: an HPA whose minimum is above its maximum; a PodDisruptionBudget no eviction can
satisfy at the fewest replicas (it blocks every node drain for good); a StatefulSet name whose
controller-revision-hash label (the name plus 11 characters) would not fit a label's 63. */}}
{{- define "relay.checkCounts" -}}
{{- $a := .Values.autoscaling -}}
{{- if and $a.enabled (gt (int $a.minReplicas) (int $a.maxReplicas)) -}}
{{- fail (printf "autoscaling.minReplicas %v is above autoscaling.maxReplicas %v" $a.minReplicas $a.maxReplicas) -}}
{{- end -}}
{{- $fewest := int (ternary $a.minReplicas .Values.replicaCount $a.enabled) -}}
{{- $pdb := .Values.podDisruptionBudget -}}
{{- if $pdb.enabled -}}
{{- $blocks := "" -}}
{{- if not (kindIs "invalid" $pdb.maxUnavailable) -}}
{{- if eq (int (trimSuffix "%" (toString $pdb.maxUnavailable))) 0 -}}
{{- $blocks = printf "maxUnavailable %v" $pdb.maxUnavailable -}}
{{- end -}}
{{- else if not (kindIs "invalid" $pdb.minAvailable) -}}
{{- $min := toString $pdb.minAvailable -}}
{{- if hasSuffix "%" $min -}}
{{- if gt (mul (int (trimSuffix "%" $min)) $fewest) (mul 100 (sub $fewest 1)) -}}{{- $blocks = printf "minAvailable %s" $min -}}{{- end -}}
{{- else if ge (int $min) $fewest -}}
{{- $blocks = printf "minAvailable %s" $min -}}
{{- end -}}
{{- end -}}
{{- if $blocks -}}
{{- fail (printf "podDisruptionBudget.%s would block every node drain with %d replica(s): no pod could ever be evicted. Lower it, or set maxUnavailable: 1" $blocks $fewest) -}}
{{- end -}}
{{- end -}}
{{- $fullname := include "relay.fullname" . -}}
{{- if and .Values.spool.enabled (gt (len $fullname) 52) -}}
{{- fail (printf "the StatefulSet's name %s is longer than 52 characters: its controller-revision-hash label (the name plus 11 characters) must fit 63. Set a shorter fullnameOverride or release name" $fullname) -}}
{{- end -}}
{{- end -}}

{{/* The spool's values the relay would refuse at start, refused here: a wait before spooling that is not below the
publish timeout (relay/settings/model.py), and a cap above half its volume: the spool's files take up to twice the records' bytes (relay/spool/room.py
OVERHEAD). Half is not all the room that needs: the file system's own blocks and the spool's reserve come off the
other half, and `mytpe-relay check` measures the room the volume really has at run time. `spool.size` read as
Kubernetes writes a quantity: a whole or decimal number, then a binary (Ki..Ei) or decimal (k..E) suffix, or none;
a number in a values file, which Helm reads as a float (4e+09), as its whole number. */}}
{{- define "relay.checkSpool" -}}
{{- if .Values.spool.enabled -}}
{{- $publish := include "relay.seconds" (list .Values.config "RELAY_PUBLISH_TIMEOUT_SECONDS" 10) | float64 -}}
{{- if ge (float64 .Values.spool.afterSeconds) $publish -}}
{{- fail (printf "spool.afterSeconds %v is not below config.RELAY_PUBLISH_TIMEOUT_SECONDS (%v): a record must be spooled before its publish gives up, and the relay refuses to start otherwise" .Values.spool.afterSeconds $publish) -}}
{{- end -}}
{{- $size := toString .Values.spool.size -}}
{{- if kindIs "float64" .Values.spool.size -}}{{- $size = printf "%.0f" .Values.spool.size -}}{{- end -}}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?([KMGTPE]i|[kMGTPE])?$" $size) -}}
{{- fail (printf "spool.size %q is not a size this chart reads: write it as a number of bytes or with a suffix (2Gi, 1500Mi, 2G)" $size) -}}
{{- end -}}
{{- $units := dict "" 1.0 "k" 1e3 "M" 1e6 "G" 1e9 "T" 1e12 "P" 1e15 "E" 1e18 "Ki" 1024.0 "Mi" 1048576.0 "Gi" 1073741824.0 "Ti" 1099511627776.0 "Pi" 1125899906842624.0 "Ei" 1152921504606846976.0 -}}
{{- $number := regexFind "^[0-9.]+" $size -}}
{{- $bytes := mulf (float64 $number) (get $units (trimPrefix $number $size)) -}}
{{- if gt (mulf 2.0 (float64 .Values.spool.maxBytes)) $bytes -}}
{{- fail (printf "spool.maxBytes %.0f is more than half of spool.size %s: the spool's files take up to twice the records' bytes, so a full spool would not fit its volume. Lower spool.maxBytes to %d or less, or install with a larger spool.size" (float64 .Values.spool.maxBytes) $size (int64 (divf $bytes 2.0))) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Environment variables from Secrets, by reference. */}}
{{- define "relay.secretEnv" -}}
{{- with .Values.mytpeSecrets }}{{ if .secretName }}
- name: RELAY_MYTPE_SECRETS
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end }}{{ end }}
{{- with .Values.dedupe.urlSecret }}{{ if .secretName }}
- name: RELAY_DEDUPE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}{{ end }}
{{- with .Values.tracing.headersSecret }}{{ if .secretName }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .key }}
{{- end }}{{ end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "relay.secretVolumeMounts" -}}
{{- range (include "relay.secretMounts" . | fromJson).mounts }}
- name: {{ .name }}
  mountPath: {{ .dir }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "relay.secretVolumes" -}}
{{- range (include "relay.secretMounts" . | fromJson).mounts }}
- name: {{ .name }}
  secret:
    secretName: {{ .secret }}
    defaultMode: {{ .mode }}
    items:
    {{- range .files }}
      - key: {{ .key }}
        path: {{ .path }}
    {{- end }}
{{- end }}
{{- end -}}

{{- define "relay.configMapName" -}}
{{- printf "%s-config" (include "relay.fullname" .) -}}
{{- end -}}

{{/* A value as the relay reads it: YAML numbers reach templates as float64, so 1073741824 would print as
1.073741824e+09; whole numbers print as integers. */}}
{{- define "relay.string" -}}
{{- if and (kindIs "float64" .) (eq . (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}
