#!/usr/bin/env python3
"""Validates one `helm template` rendering (scripts/chart-check.sh runs it from the test venv).

Kubernetes kinds go through `kubernetes-validate --strict` (unknown fields refused) against every
Kubernetes version given; kinds kubernetes-validate has no schema for (the Prometheus Operator's
CRDs) must have a JSON schema of our own in --crd-schemas, named
<kind>-<api group>-<version>.json, and are validated against it. A kind with neither fails: no
document is ever skipped silently. Prints one summary line:

  <label>: <n> documents, <m> validated by kubernetes-validate --strict (Kubernetes 1.37.0, 1.25.0),
  <k> by our CRD schemas (PodMonitor, PrometheusRule)
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate.utils as kv
import yaml


def crd_schema_path(directory, doc):
    group_version = doc.get("apiVersion", "")
    if "/" not in group_version:
        return None
    group, version = group_version.split("/", 1)
    path = os.path.join(directory, f"{doc.get('kind', '').lower()}-{group}-{version}.json")
    return path if os.path.exists(path) else None


def has_kubernetes_schema(doc, version):
    try:
        kv.validate(doc, version, strict=True)
    except kv.SchemaNotFoundError:
        return False
    except Exception:  # a validation error: the schema exists; the CLI run below reports it
        return True
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rendering", help="output of helm template")
    parser.add_argument("--label", required=True, help="name of the rendering in the summary")
    parser.add_argument("--kube-version", action="append", required=True, dest="versions")
    parser.add_argument("--crd-schemas", required=True, help="directory of our CRD schemas")
    parser.add_argument("--kubernetes-validate", default="kubernetes-validate",
                        help="the kubernetes-validate executable")
    args = parser.parse_args()

    with open(args.rendering) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if not docs:
        sys.exit(f"{args.label}: the rendering holds no document")

    failures = []
    kube_docs, crd_kinds = [], []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        schema_path = crd_schema_path(args.crd_schemas, doc)
        if schema_path:
            with open(schema_path) as f:
                schema = json.load(f)
            errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(doc), key=str)
            for e in errors:
                where = ".".join(str(p) for p in e.absolute_path) or "(document)"
                failures.append(f"{name}: {where}: {e.message} ({os.path.basename(schema_path)})")
            crd_kinds.append(doc["kind"])
        elif all(has_kubernetes_schema(doc, v) for v in args.versions):
            kube_docs.append(doc)
        else:
            failures.append(
                f"{name}: no schema for {doc.get('apiVersion')} {doc.get('kind')} in kubernetes-validate "
                f"{kv.__version__} for Kubernetes {', '.join(args.versions)}, and none of ours in "
                f"{args.crd_schemas}: add one (refusing to skip it)")

    if kube_docs:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump_all(kube_docs, f)
            path = f.name
        try:
            cmd = [args.kubernetes_validate, "--strict", "--quiet"]
            for v in args.versions:
                cmd += ["-k", v]
            run = subprocess.run(cmd + [path], capture_output=True, text=True)
        finally:
            os.unlink(path)
        out = (run.stdout + run.stderr).replace(path, args.label)
        # --quiet prints only problems; a WARN (no schema) counts as one too.
        problems = [line for line in out.splitlines() if line.strip()]
        if run.returncode != 0 or problems:
            failures.extend(problems or [f"kubernetes-validate exited {run.returncode}"])

    crd_note = ""
    if crd_kinds:
        crd_note = f", {len(crd_kinds)} by our CRD schemas ({', '.join(sorted(set(crd_kinds)))})"
    if failures:
        print(f"{args.label}: {len(docs)} documents, INVALID:")
        for failure in failures:
            print(f"  {failure}")
        sys.exit(1)
    print(f"{args.label}: {len(docs)} documents, {len(kube_docs)} validated by kubernetes-validate "
          f"--strict (Kubernetes {', '.join(args.versions)}){crd_note}")


if __name__ == "__main__":
    main()
