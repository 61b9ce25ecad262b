"""Deployment files: manifests validate (Kubernetes schemas; KubeRay's required fields), every
entrypoint parses with the job's own argument parser, the image installs the lock file's set,
and no credential appears in any of them."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from jobs.build_index import build_parser as build_index_parser
from jobs.extract import build_parser as extract_parser
from jobs.train import build_parser as train_parser

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
K8S_VERSION = "1.30"
PARSERS = {
    "extract.py": extract_parser,
    "build_index.py": build_index_parser,
    "train.py": train_parser,
}


def rendered() -> dict[str, dict[str, Any]]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("render", K8S / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    values = yaml.safe_load((K8S / "values.yaml").read_text())
    return module.render(values)


POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {"spec": {"type": "object", "required": ["containers"]}},
}
CLUSTER_SPEC = {
    "type": "object",
    "required": ["headGroupSpec", "workerGroupSpecs"],
    "properties": {
        "headGroupSpec": {
            "type": "object",
            "required": ["rayStartParams", "template"],
            "properties": {"template": POD_TEMPLATE},
        },
        "workerGroupSpecs": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": [
                    "groupName",
                    "minReplicas",
                    "maxReplicas",
                    "rayStartParams",
                    "template",
                ],
                "properties": {
                    "template": POD_TEMPLATE,
                    "minReplicas": {"type": "integer", "minimum": 0},
                    "maxReplicas": {"type": "integer", "minimum": 1},
                },
            },
        },
    },
}
JOB_SPEC = {
    "type": "object",
    "required": [
        "entrypoint",
        "rayClusterSpec",
        "shutdownAfterJobFinishes",
        "ttlSecondsAfterFinished",
        "backoffLimit",
        "activeDeadlineSeconds",
    ],
    "properties": {
        "entrypoint": {"type": "string"},
        "rayClusterSpec": CLUSTER_SPEC,
        "shutdownAfterJobFinishes": {"const": True},
    },
}
KUBERAY = {  # the fields the KubeRay operator requires or that this deployment relies on
    "RayCluster": {"type": "object", "properties": {"spec": CLUSTER_SPEC}},
    "RayJob": {"type": "object", "properties": {"spec": JOB_SPEC}},
    "RayCronJob": {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["schedule", "jobTemplate"],
                "properties": {"jobTemplate": JOB_SPEC},
            }
        },
    },
}


def pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    cluster = {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayCronJob": spec.get("jobTemplate", {}).get("rayClusterSpec"),
    }.get(doc["kind"])
    if cluster is None:
        return []
    return [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]


@pytest.mark.parametrize("name", sorted(rendered()))
def test_manifest_validates(name: str) -> None:
    doc = rendered()[name]
    assert doc["metadata"]["namespace"] == "glam"  # from values.yaml
    if doc["apiVersion"] == "ray.io/v1":
        jsonschema.validate(doc, KUBERAY[doc["kind"]])
        for template in pod_templates(doc):  # the pods KubeRay creates, against Kubernetes
            pod = {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "x", **template.get("metadata", {})},
                "spec": template["spec"],
            }
            kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_gpu_workers_request_one_gpu_and_autoscale() -> None:
    cluster = rendered()["raycluster.yaml"]["spec"]
    assert cluster["enableInTreeAutoscaling"] is True
    (group,) = cluster["workerGroupSpecs"]
    assert group["minReplicas"] < group["maxReplicas"]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1 and int(limits["cpu"]) >= 4


def test_broken_manifest_is_caught() -> None:
    doc = rendered()["rayjob-extract.yaml"]
    del doc["spec"]["entrypoint"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, KUBERAY["RayJob"])
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "a", "image": "b", "resourcez": {}}]},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def entrypoints() -> list[tuple[str, str]]:
    out = []
    for name, doc in rendered().items():
        spec = doc.get("spec", {})
        if doc["kind"] == "RayJob":
            out.append((name, spec["entrypoint"]))
        elif doc["kind"] == "RayCronJob":
            out.append((name, spec["jobTemplate"]["entrypoint"]))
        elif doc["kind"] == "CronJob":
            container = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
            out.append((name, container["args"][0].split(" -- ", 1)[1]))
    return out


@pytest.mark.parametrize("name,entrypoint", entrypoints())
def test_entrypoints_parse_with_the_jobs_own_parser(name: str, entrypoint: str) -> None:
    argv = shlex.split(entrypoint)
    assert argv[0] == "python" and argv[1].startswith("/app/jobs/")
    script = argv[1].rsplit("/", 1)[1]
    args = PARSERS[script]().parse_args(argv[2:])  # SystemExit on an unknown flag
    assert args is not None


def test_plain_cronjob_uses_a_dated_submission_id() -> None:
    container = rendered()["cronjob-build-index.yaml"]["spec"]["jobTemplate"]["spec"]["template"][
        "spec"
    ]["containers"][0]
    assert '--submission-id "build-index-$(date -u +%Y%m%dT%H%M%S)"' in container["args"][0]


def test_committed_manifests_are_rendered_from_the_templates() -> None:
    for name, doc in rendered().items():
        assert yaml.safe_load((K8S / "rendered" / name).read_text()) == doc, name


def constraints() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version.strip()
    return pins


def test_dockerfile_installs_the_lock_files_set() -> None:
    text = (REPO / "infra" / "docker" / "Dockerfile").read_text()
    installs = [
        line
        for line in re.split(r"&&|\n(?=RUN)", text.replace("\\\n", " "))
        if "pip install" in line
    ]
    assert installs
    pins = constraints()
    for line in installs:
        assert "-c constraints.txt" in line, line
        for name, version in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s'\"]*)", line):
            assert pins[name.lower()] == version, f"{name}=={version} vs constraints.txt"
    assert "'.[gpu]'" in text and "faiss-gpu" in pins and "faiss-cpu" in pins
    assert re.search(r"^USER (?!root)\w+", text, re.M)
    assert "COPY --chown=ray:ray pyproject.toml constraints.txt" in text


SECRET_PATTERNS = [
    r"AWS_SECRET_ACCESS_KEY",
    r"aws_secret_access_key",
    r"AKIA[0-9A-Z]{16}",
    r"password",
    r"BEGIN [A-Z ]*PRIVATE KEY",
]


@pytest.mark.parametrize(
    "path",
    sorted(
        p
        for p in (REPO / "infra").rglob("*")
        if p.is_file()
        and p.suffix in (".yaml", ".yml", ".json", ".sh", "")
        and "__pycache__" not in str(p)
    ),
)
def test_no_credentials_in_deployment_files(path: Path) -> None:
    text = path.read_text()
    if path.parent.name == "local":  # the dev stack's fixed moto credentials, never real ones
        assert "AWS_SECRET_ACCESS_KEY=local" in text or "AWS_SECRET" not in text
        return
    for pattern in SECRET_PATTERNS:
        assert not re.search(pattern, text), f"{pattern} in {path}"


def test_grafana_dashboard_queries_the_exported_metrics() -> None:
    from pipeline import metrics

    dashboard = json.loads((REPO / "infra" / "grafana" / "glam-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    source = (REPO / "pipeline" / "metrics.py").read_text()
    for name in re.findall(r'"(glam_[a-z_]+)"', source):
        assert f"ray_{name}" in exprs, name
    assert metrics is not None


def test_ray_up_config_has_gpu_workers_and_no_keys() -> None:
    cfg = yaml.safe_load((REPO / "infra" / "ray" / "cluster-aws.yaml").read_text())
    assert cfg["provider"]["type"] == "aws"
    worker = cfg["available_node_types"]["gpu_worker"]
    assert worker["max_workers"] >= 1 and "IamInstanceProfile" in worker["node_config"]
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert cfg["docker"]["image"] == yaml.safe_load((K8S / "values.yaml").read_text())["image"]
