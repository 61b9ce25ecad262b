"""Render the KubeRay / Kubernetes manifests from values.yaml (one place for bucket, image, GPU
count and schedule).

    .venv/bin/python infra/k8s/render.py infra/k8s/values.yaml --out infra/k8s/rendered
"""

from __future__ import annotations

import argparse
import copy
import string
import sys
from pathlib import Path
from typing import Any

import yaml

TEMPLATES = Path(__file__).resolve().parent / "templates"
RESOURCES = (
    "serviceaccount.yaml",
    "raycluster.yaml",
    "rayjob-extract.yaml",
    "rayjob-train.yaml",
    "raycronjob-build-index.yaml",
    "cronjob-build-index.yaml",
)


def _render(name: str, values: dict[str, Any]) -> Any:
    text = (TEMPLATES / name).read_text()
    try:
        return yaml.safe_load(string.Template(text).substitute(values))
    except KeyError as e:
        raise ValueError(f"{name} needs the value {e.args[0]!r} in values.yaml") from None


def render(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """File name -> manifest, with the shared Ray cluster spec filled in."""
    cluster = _render("ray-cluster-spec.yaml", values)
    out = {}
    for name in RESOURCES:
        doc = _render(name, values)
        if doc["kind"] == "RayCluster":
            doc["spec"] = copy.deepcopy(cluster)
        elif doc["kind"] == "RayJob":
            doc["spec"]["rayClusterSpec"] = copy.deepcopy(cluster)
        elif doc["kind"] == "RayCronJob":
            doc["spec"]["jobTemplate"]["rayClusterSpec"] = copy.deepcopy(cluster)
        out[name] = doc
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("values", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    values = yaml.safe_load(args.values.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    for name, doc in render(values).items():
        (args.out / name).write_text(yaml.safe_dump(doc, sort_keys=False))
    print(f"wrote {len(RESOURCES)} manifests to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
