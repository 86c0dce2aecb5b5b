"""Validate a kustomize build's custom resources, and make sure no object goes unchecked.

    kubectl kustomize deploy/k8s > build/k8s.yaml
    python deploy/k8s/validate_crds.py -k 1.27.0 -k 1.37.0 build/k8s.yaml

`kubernetes-validate --strict` knows only Kubernetes' own kinds: for a PodMonitor (a
Prometheus Operator CRD) it prints a warning and exits 0, so a typo there would pass.
This script validates each custom resource against a strict schema vendored in
schemas/ (the fields edgepop uses, as the CRD types them), and fails on any object whose
kind neither Kubernetes' schemas nor a vendored one covers. Core objects are validated
again here with kubernetes-validate's library, which is how their coverage is known.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from kubernetes_validate import utils as kubernetes_validate

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
# (apiVersion, kind) -> strict JSON schema file in schemas/.
VENDORED_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): "podmonitor-monitoring-v1.json",
}


def load_schema(api_version: str, kind: str) -> dict[str, Any] | None:
    name = VENDORED_SCHEMAS.get((api_version, kind))
    if name is None:
        return None
    schema: dict[str, Any] = json.loads((SCHEMA_DIR / name).read_text())
    return schema


def object_name(document: dict[str, Any]) -> str:
    return f"{document.get('kind')}/{document.get('metadata', {}).get('name')}"


def check(documents: list[dict[str, Any]], versions: list[str]) -> tuple[list[str], Counter[str]]:
    """Errors found, and how each kind was validated (for the summary)."""
    errors: list[str] = []
    checked: Counter[str] = Counter()
    for document in documents:
        api_version, kind = document.get("apiVersion", ""), document.get("kind", "")
        schema = load_schema(api_version, kind)
        if schema is not None:
            validator = jsonschema.Draft202012Validator(schema)
            found = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
            for error in found:
                where = ".".join(str(part) for part in error.path) or "(top)"
                errors.append(f"{object_name(document)}: {where}: {error.message}")
            if not found:
                checked[f"{kind} (vendored schema)"] += 1
            continue
        valid = True
        for version in versions:
            try:
                kubernetes_validate.validate(document, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(
                    f"{object_name(document)}: no schema for {api_version} {kind} in "
                    f"Kubernetes {version} and none vendored in {SCHEMA_DIR.name}/"
                )
                valid = False
                break
            except kubernetes_validate.ValidationError as error:
                where = ".".join(str(part) for part in error.path) or "(top)"
                errors.append(
                    f"{object_name(document)} (Kubernetes {version}): {where}: {error.message}"
                )
                valid = False
        if valid:
            checked[f"{kind} (Kubernetes {', '.join(versions)}, strict)"] += 1
    return errors, checked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="validate_crds.py", description=__doc__)
    parser.add_argument(
        "-k",
        "--kubernetes-version",
        action="append",
        dest="versions",
        help="Kubernetes version to validate core objects against (repeatable)",
    )
    parser.add_argument("file", type=Path, help="kustomize output ('-' for stdin)")
    args = parser.parse_args(argv)
    text = sys.stdin.read() if str(args.file) == "-" else args.file.read_text()
    documents = [doc for doc in yaml.safe_load_all(text) if doc]
    if not documents:
        # An empty build means kustomize failed upstream: never pass on nothing.
        print("validate_crds.py: no objects to validate", file=sys.stderr)
        return 1
    versions = args.versions or [kubernetes_validate.latest_version()]
    errors, checked = check(documents, versions)
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)
    for what, count in sorted(checked.items()):
        print(f"ok {count:3d} x {what}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
