{{/* Names -------------------------------------------------------------------------------------- */}}
{{- define "build-studio.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "build-studio.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "build-studio.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "build-studio.selectorLabels" -}}
app.kubernetes.io/name: {{ include "build-studio.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "build-studio.commonLabels" -}}
helm.sh/chart: {{ include "build-studio.chart" . }}
app.kubernetes.io/name: {{ include "build-studio.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: build-studio
{{- end }}

{{- define "build-studio.labels" -}}
{{ include "build-studio.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "build-studio.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "build-studio.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "build-studio.sandboxServiceAccountName" -}}
{{- default (printf "%s-sandbox" (include "build-studio.fullname" .)) .Values.sandbox.serviceAccount.name }}
{{- end }}

{{/* repository@digest when a digest is given (immutable), else repository:tag (tag default: appVersion). */}}
{{- define "build-studio.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .appVersion .image.tag) }}
{{- end }}
{{- end }}

{{- define "build-studio.image" -}}
{{- include "build-studio.imageRef" (dict "image" .Values.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{- define "build-studio.sandboxImage" -}}
{{- include "build-studio.imageRef" (dict "image" .Values.sandbox.image "appVersion" .Chart.AppVersion) }}
{{- end }}

{{/* Namespaced mode serves watchNamespaces; the release namespace also gets the namespaced rules
     because engine presence-probe pods and the Events of cluster-scoped BuildEngines live there. */}}
{{- define "build-studio.roleNamespaces" -}}
{{- $nss := append (.Values.watchNamespaces | default list) .Release.Namespace | uniq }}
{{- toJson $nss }}
{{- end }}

{{- define "build-studio.sandboxNamespaces" -}}
{{- $nss := concat (list .Release.Namespace) (.Values.watchNamespaces | default list) (.Values.sandbox.serviceAccount.namespaces | default list) | uniq }}
{{- toJson $nss }}
{{- end }}

{{/* RBAC rules: the operator's API calls and nothing more. ------------------------------------------
     "cluster" holds the rules for cluster-scoped objects (always a ClusterRole); "namespaced" the
     rules for namespaced objects (in the ClusterRole when cluster-wide, else in a Role per namespace). */}}
{{- define "build-studio.rules.cluster" -}}
- apiGroups: ["buildstudio.dpf.dev"]
  resources: ["buildengines"]
  verbs: ["get", "list", "watch", "patch", "create"]
- apiGroups: ["buildstudio.dpf.dev"]
  resources: ["buildengines/status"]
  verbs: ["patch"]
# kopf scans CRDs to discover the resources it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if .Values.watchNamespaces }}
# Namespaced kopf follows namespaces to notice its namespaces coming and going (cluster-wide kopf
# does not: kopf/_core/reactor/observation.py, namespace_observer).
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- else if .Values.peering.enabled }}
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{- define "build-studio.rules.namespaced" -}}
# create: a BuildPipeline's steps are BuildDispatches the operator creates.
- apiGroups: ["buildstudio.dpf.dev"]
  resources: ["builddispatches"]
  verbs: ["get", "list", "watch", "patch", "delete", "create"]
- apiGroups: ["buildstudio.dpf.dev"]
  resources: ["builddispatches/status"]
  verbs: ["patch"]
- apiGroups: ["buildstudio.dpf.dev"]
  resources: ["buildpipelines"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["buildstudio.dpf.dev"]
  resources: ["buildpipelines/status"]
  verbs: ["patch"]
# The steps' owner references set blockOwnerDeletion (checked by OwnerReferencesPermissionEnforcement).
- apiGroups: ["buildstudio.dpf.dev"]
  resources: ["buildpipelines/finalizers"]
  verbs: ["update"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["create", "get", "list", "watch", "delete"]
# The runner's records come back through the pod log.
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
# Runner spec + opencode config, and the full patch of a finished dispatch (deleted with their
# dispatch by the garbage collector, through owner references).
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "get"]
# kopf posts core/v1 Events.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# The sandbox's egress policy (DNS, model service, git remote) and the namespace's deny-all baseline.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "get"]
{{- if and .Values.peering.enabled .Values.watchNamespaces }}
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
{{- end }}

{{/* Secrets only in the release namespace, in every mode: whether a cloud engine's credential Secret
     exists (metadata only), and a model service's apiKeySecret for the preflight probes (values are
     never written to status or logs). Sandbox pods read their Secrets themselves. */}}
{{- define "build-studio.rules.secrets" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}
