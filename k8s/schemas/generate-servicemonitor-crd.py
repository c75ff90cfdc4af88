#!/usr/bin/env python3
"""Writes monitoring.coreos.com_servicemonitors.yaml beside this file: the
ServiceMonitor CustomResourceDefinition's openAPIV3Schema of Prometheus
Operator v0.80.1, which scripts/validate-k8s.sh validates the ServiceMonitor
component against.

The upstream CRD file (example/prometheus-operator-crd/ in the Prometheus
Operator repository) ships in no package registry the project's machines
reach (crates.io, PyPI, npm, Debian). PyPI's
cloudcoil-models-prometheus-operator 0.80.1.0 (Apache-2.0) holds pydantic
models generated from that CRD; this script turns their JSON schema back into
an openAPIV3Schema: every field, type, enum, pattern, bound, required list
and map type, without the descriptions.

    python3 -m venv /tmp/crd-venv
    /tmp/crd-venv/bin/pip install 'cloudcoil-models-prometheus-operator==0.80.1.0' pyyaml
    /tmp/crd-venv/bin/python k8s/schemas/generate-servicemonitor-crd.py
"""

import importlib.metadata
import os
import sys

import yaml
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

PACKAGE = "cloudcoil-models-prometheus-operator"
UPSTREAM_VERSION = "v0.80.1"
UPSTREAM_URL = (
    "https://github.com/prometheus-operator/prometheus-operator/blob/"
    f"{UPSTREAM_VERSION}/example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml"
)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "monitoring.coreos.com_servicemonitors.yaml")

# JSON-schema keywords copied as they are; anything else is an error, so no
# constraint is dropped silently.
COPIED = ("type", "required", "enum", "pattern", "format", "minimum", "maximum",
          "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
          "minItems", "maxItems", "uniqueItems", "minProperties", "maxProperties")
DROPPED = ("title", "description")


def deref(node, defs):
    """The definition a bare {"$ref": ...} points at (other nodes as they are)."""
    if set(node) == {"$ref"}:
        return defs[node["$ref"].rsplit("/", 1)[-1]]
    return node


def convert(node, defs, stack=()):
    """One pydantic JSON-schema node -> one OpenAPI v3 (structural) node."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        if name in stack:
            sys.exit(f"recursive schema at {name}: not expressible as a CRD schema")
        out = convert(defs[name], defs, stack + (name,))
        rest = {k: v for k, v in node.items() if k != "$ref"}
        return {**out, **convert(rest, defs, stack)} if rest else out
    if "anyOf" in node:
        alts = [deref(a, defs) for a in node["anyOf"] if a != {"type": "null"}]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        types = sorted(a.get("type", "") for a in alts)
        if len(alts) == 1:
            out = convert(alts[0], defs, stack)
        elif types == ["integer", "string"]:
            out = {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True}
            for a in alts:
                if "pattern" in a:
                    out["pattern"] = a["pattern"]
        else:
            sys.exit(f"unsupported anyOf: {node['anyOf']}")
        extra = convert(rest, defs, stack) if rest else {}
        return {**out, **extra}
    out = {}
    for key, value in node.items():
        if key in DROPPED:
            continue
        if key in COPIED:
            out[key] = value
        elif key == "const":
            out["enum"] = [value]
        elif key == "default":
            if value is not None:
                out["default"] = value
        elif key == "properties":
            out["properties"] = {k: convert(v, defs, stack) for k, v in value.items()}
        elif key == "items":
            out["items"] = convert(value, defs, stack)
        elif key == "additionalProperties":
            out[key] = convert(value, defs, stack) if isinstance(value, dict) else value
        else:
            sys.exit(f"unsupported keyword {key!r} in {node}")
    return ordered(out)


def ordered(node):
    """type first and properties/items last, as CRD files read."""
    first = {k: node[k] for k in ("type", "required") if k in node}
    last = {k: node[k] for k in ("properties", "items", "additionalProperties") if k in node}
    return {**first, **{k: v for k, v in node.items() if k not in first and k not in last}, **last}


def main():
    schema = ServiceMonitor.model_json_schema(by_alias=True, mode="validation")
    defs = schema.get("$defs", {})
    spec = convert(schema["properties"]["spec"], defs)
    root = {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec,
        },
    }
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "servicemonitors.monitoring.coreos.com",
            "annotations": {"operator.prometheus.io/version": UPSTREAM_VERSION.lstrip("v")},
        },
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": "ServiceMonitor", "listKind": "ServiceMonitorList",
                      "plural": "servicemonitors", "singular": "servicemonitor"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": root}}],
        },
    }
    version = importlib.metadata.version(PACKAGE)
    header = f"""\
# ServiceMonitor (monitoring.coreos.com/v1) schema of Prometheus Operator
# {UPSTREAM_VERSION}, for offline validation only (scripts/validate-k8s.sh).
# Do not apply it: install the operator's own CRDs in a cluster.
#
# Upstream: {UPSTREAM_URL}
# Written by k8s/schemas/generate-servicemonitor-crd.py from PyPI's
# {PACKAGE} {version} (Apache-2.0), models generated from
# that CRD: the same fields, types, enums, patterns and required lists,
# without descriptions.
"""
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(header)
        yaml.safe_dump(crd, f, sort_keys=False, width=120)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
