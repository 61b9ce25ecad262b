"""Deployment files: the Kustomize overlays build with `kubectl kustomize` and every value of the
one-place values component reaches the fields it should, manifests validate (Kubernetes schemas;
KubeRay's required fields), every entrypoint parses with the job's own argument parser, the
image installs the lock file's set, and no credential appears in any of them."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
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
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())


def kubectl_kustomize(overlay: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("kubectl") is None:
        pytest.fail(
            "kubectl not found on PATH: the manifests in infra/k8s/overlays are rendered with "
            "`kubectl kustomize` (kubectl >= 1.27, kustomize v5); install kubectl to run these "
            "tests",
            pytrace=False,
        )
    return subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )


@functools.cache
def kustomize(overlay: Path) -> str:
    """`kubectl kustomize overlay`: the YAML stream `kubectl apply -k overlay` applies."""
    run = kubectl_kustomize(overlay)
    assert run.returncode == 0, f"kubectl kustomize {overlay} failed:\n{run.stderr}"
    return run.stdout


def rendered(k8s: Path = K8S) -> dict[str, dict[str, Any]]:
    """Every overlay's manifests by "overlay/Kind/name" (fresh copies: tests may edit them)."""
    out = {}
    for overlay in sorted((k8s / "overlays").iterdir()):
        for doc in yaml.safe_load_all(kustomize(overlay)):
            out[f"{overlay.name}/{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def values(k8s: Path = K8S) -> dict[str, str]:
    """The one-place values (values/kustomization.yaml): the ConfigMap literals that
    values/replacements.yaml writes into the manifests, the namespace and the image."""
    component = yaml.safe_load((k8s / "values" / "kustomization.yaml").read_text())
    (generator,) = component["configMapGenerator"]
    (image,) = component["images"]
    out = dict(literal.split("=", 1) for literal in generator["literals"])
    out["namespace"] = component["namespace"]
    out["image"] = f"{image['newName']}:{image['newTag']}"
    return out


def command_line(text: str) -> list[str] | None:
    """The `python /app/jobs/...` argv in an entrypoint or in the CronJob's `ray job submit`."""
    if "python /app/jobs/" not in text:
        return None
    argv = shlex.split(text)
    return argv[argv.index("python") :]


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


def cluster_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec", {})
    return {
        "RayCluster": spec,
        "RayJob": spec.get("rayClusterSpec"),
        "RayCronJob": spec.get("jobTemplate", {}).get("rayClusterSpec"),
    }.get(doc["kind"])


def pod_templates(doc: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = cluster_spec(doc)
    if cluster is None:
        return []
    return [cluster["headGroupSpec"]["template"]] + [
        g["template"] for g in cluster["workerGroupSpecs"]
    ]


def documents(overlay: str, k8s: Path = K8S) -> list[dict[str, Any]]:
    return [doc for key, doc in rendered(k8s).items() if key.startswith(f"{overlay}/")]


def leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(keys leading to it, value) for every scalar; list items share their list's keys."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from leaves(value, (*path, str(key)))
    elif isinstance(node, list):
        for value in node:
            yield from leaves(value, path)
    else:
        yield path, node


def images(doc: dict[str, Any]) -> list[str]:
    return [value for path, value in leaves(doc) if path[-2:] == ("containers", "image")]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_with_every_value_filled_in(overlay: str) -> None:
    docs = documents(overlay)
    assert any(doc["kind"] in ("RayJob", "RayCronJob", "CronJob") for doc in docs), overlay
    one_place = values()
    for doc in docs:
        name = f"{overlay}/{doc['kind']}/{doc['metadata']['name']}"
        assert doc["metadata"]["namespace"] == one_place["namespace"], name
        assert "config.kubernetes.io/local-config" not in doc["metadata"].get("annotations", {})
        assert set(images(doc)) <= {one_place["image"]}, name
        for _, leaf in leaves(doc):  # the placeholders are the values' names
            words = (isinstance(leaf, str) and command_line(leaf)) or []
            assert leaf not in one_place and not set(words) & set(one_place), (name, leaf)


def test_resources_shared_by_overlays_render_the_same_in_each() -> None:
    """Applying one overlay must not change what another applied (the service account)."""
    by_id: dict[str, list[dict[str, Any]]] = {}
    for key, doc in rendered().items():
        by_id.setdefault(key.split("/", 1)[1], []).append(doc)
    assert len(by_id["ServiceAccount/" + values()["serviceAccount"]]) == len(OVERLAYS)
    for key, docs in by_id.items():
        assert all(doc == docs[0] for doc in docs), key


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_manifest_validates(overlay: str) -> None:
    for doc in documents(overlay):
        assert doc["metadata"]["namespace"] == values()["namespace"]
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
    clusters = [c for doc in rendered().values() if (c := cluster_spec(doc)) is not None]
    assert len(clusters) == len(OVERLAYS)  # one Ray cluster per overlay
    for cluster in clusters:
        assert cluster["enableInTreeAutoscaling"] is True
        (group,) = cluster["workerGroupSpecs"]
        assert group["minReplicas"] < group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == 1 and int(limits["cpu"]) >= 4


def test_jobs_fit_the_cluster_they_run_on() -> None:
    """Extraction starts one GPU actor per GPU worker the cluster can grow to; a training worker
    takes a GPU worker's CPUs, and there are no more of them than GPU workers."""
    docs = rendered()
    for key in ("extract/RayJob/glam-extract", "train/RayJob/glam-train"):
        spec = docs[key]["spec"]
        (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
        cpus = int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
        argv = command_line(spec["entrypoint"])
        assert argv is not None
        args = PARSERS[argv[1].rsplit("/", 1)[1]]().parse_args(argv[2:])
        if key.startswith("extract/"):
            assert args.actors == group["maxReplicas"] and args.cpus_per_actor == cpus
        else:
            assert args.cpus_per_worker == cpus and args.workers <= group["maxReplicas"]


def test_broken_manifest_is_caught() -> None:
    doc = rendered()["extract/RayJob/glam-extract"]
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


def entrypoints(overlay: str) -> list[tuple[str, str]]:
    out = []
    for doc in documents(overlay):
        name, spec = doc["metadata"]["name"], doc.get("spec", {})
        if doc["kind"] == "RayJob":
            out.append((name, spec["entrypoint"]))
        elif doc["kind"] == "RayCronJob":
            out.append((name, spec["jobTemplate"]["entrypoint"]))
        elif doc["kind"] == "CronJob":
            container = spec["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
            out.append((name, container["args"][0].split(" -- ", 1)[1]))
    return out


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_entrypoints_parse_with_the_jobs_own_parser(overlay: str) -> None:
    assert entrypoints(overlay), f"{overlay} runs no job"
    for name, entrypoint in entrypoints(overlay):
        argv = shlex.split(entrypoint)
        assert argv[0] == "python" and argv[1].startswith("/app/jobs/"), name
        script = argv[1].rsplit("/", 1)[1]
        args = PARSERS[script]().parse_args(argv[2:])  # SystemExit on an unknown flag
        assert args is not None


def test_plain_cronjob_uses_a_dated_submission_id() -> None:
    cronjob = rendered()["rebuild-cronjob/CronJob/glam-build-index-submit"]
    container = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert '--submission-id "build-index-$(date -u +%Y%m%dT%H%M%S)"' in container["args"][0]


EVERY = ("extract", "train", "rebuild", "rebuild-cronjob")  # each runs the shared Ray cluster
REBUILDS = ("rebuild", "rebuild-cronjob")


def at(overlays: str | tuple[str, ...], *fields: str) -> dict[str, set[str]]:
    return {name: set(fields) for name in ((overlays,) if isinstance(overlays, str) else overlays)}


def merged(*parts: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for part in parts:
        for name, fields in part.items():
            out.setdefault(name, set()).update(fields)
    return out


# value -> overlay -> where the value must show up: "parent.key" of a field, or a job's flag
WHERE = {
    "namespace": at(EVERY, "metadata.namespace"),
    "image": at(EVERY, "containers.image"),
    "serviceAccount": at(EVERY, "metadata.name", "spec.serviceAccountName"),
    "awsRoleArn": at(EVERY, "annotations.eks.amazonaws.com/role-arn"),
    "gcpServiceAccount": at(EVERY, "annotations.iam.gke.io/gcp-service-account"),
    "awsRegion": at(EVERY, "env.value"),
    "input": at("extract", "--input"),
    "output": merged(at("extract", "--output"), at(REBUILDS, "--descriptors")),
    "weights": at("extract", "--weights"),
    "precision": at("extract", "--precision"),
    "batchSize": at("extract", "--batch-size"),
    "indexOutput": at(REBUILDS, "--output"),
    "indexShards": at(REBUILDS, "--shards"),
    "indexFactory": at(REBUILDS, "--factory"),
    "schedule": at(REBUILDS, "spec.schedule"),
    "timeZone": at(REBUILDS, "spec.timeZone"),
    "gpuWorkersMin": at(EVERY, "workerGroupSpecs.replicas", "workerGroupSpecs.minReplicas"),
    "gpuWorkersMax": merged(at(EVERY, "workerGroupSpecs.maxReplicas"), at("extract", "--actors")),
    "cpusPerGpu": merged(
        at(EVERY, "requests.cpu", "limits.cpu"),
        at("train", "--cpus-per-worker"),
        at("extract", "--cpus-per-actor"),
    ),
    "memoryPerGpu": at(EVERY, "requests.memory", "limits.memory"),
    "headCpus": at(EVERY, "requests.cpu", "limits.cpu"),
    "headMemory": at(EVERY, "requests.memory", "limits.memory"),
    "activeDeadlineSeconds": merged(
        at(("extract", "rebuild-cronjob"), "spec.activeDeadlineSeconds"),
        at("rebuild", "jobTemplate.activeDeadlineSeconds"),
    ),
    "backoffLimit": merged(
        at(("extract", "train", "rebuild-cronjob"), "spec.backoffLimit"),
        at("rebuild", "jobTemplate.backoffLimit"),
    ),
    "ttlSecondsAfterFinished": merged(
        at(("extract", "train"), "spec.ttlSecondsAfterFinished"),
        at("rebuild", "jobTemplate.ttlSecondsAfterFinished"),
    ),
    "trainInput": at("train", "--input"),
    "trainOutput": at("train", "--output"),
    "trainWorkers": at("train", "--workers"),
    "trainEpochs": at("train", "--epochs"),
    "checkpointEvery": at("train", "--checkpoint-every"),
    "trainDeadlineSeconds": at("train", "spec.activeDeadlineSeconds"),
}


def fields_holding(docs: list[dict[str, Any]], value: str) -> set[str]:
    """Where value shows up: "parent.key" of a field equal to it, or the flag it follows on a
    job's command line."""
    out = set()
    for doc in docs:
        for path, leaf in leaves(doc):
            if str(leaf) == value:
                out.add(".".join(path[-2:]))
            elif isinstance(leaf, str) and (argv := command_line(leaf)):
                pairs = zip(argv[2::2], argv[3::2], strict=False)
                out.update(flag for flag, arg in pairs if arg == value)
    return out


def set_values(k8s: Path, new: dict[str, str]) -> None:
    path = k8s / "values" / "kustomization.yaml"
    component = yaml.safe_load(path.read_text())
    component["namespace"] = new["namespace"]
    image_name, image_tag = new["image"].rsplit(":", 1)
    component["images"][0].update(newName=image_name, newTag=image_tag)
    literals = [k for k in new if k not in ("namespace", "image")]
    component["configMapGenerator"][0]["literals"] = [f"{k}={new[k]}" for k in literals]
    path.write_text(yaml.safe_dump(component, sort_keys=False))


def test_each_value_reaches_the_fields_that_carry_it(tmp_path: Path) -> None:
    """In a copy of infra/k8s, give every one-place value a new value of its own: each must show
    up in every overlay and field listed in WHERE and nowhere else, and no address (URI, image,
    role) of the old values may be left behind anywhere."""
    old = values()
    assert sorted(WHERE) == sorted(old), "values/kustomization.yaml and WHERE list other values"
    assert sorted(EVERY) == OVERLAYS, "an overlay WHERE does not know"
    new = {
        name: str(900_001 + i) if value.isdigit() else f"new-{name}"
        for i, (name, value) in enumerate(sorted(old.items()))
    }
    new["image"] = "registry.test/new-image:new-tag"
    k8s = tmp_path / "k8s"
    shutil.copytree(K8S, k8s)
    set_values(k8s, new)
    assert values(k8s) == new
    for name, value in new.items():
        found = {
            o: fields for o in OVERLAYS if (fields := fields_holding(documents(o, k8s), value))
        }
        assert found == WHERE[name], name
    text = "".join(kustomize(overlay) for overlay in sorted((k8s / "overlays").iterdir()))
    for name, value in old.items():
        assert "/" not in value or value not in text, f"{name}'s old value {value} left behind"


def test_a_value_missing_from_the_one_place_fails_the_build(tmp_path: Path) -> None:
    k8s = tmp_path / "k8s"
    shutil.copytree(K8S, k8s)
    new = values()
    del new["weights"]
    set_values(k8s, new)
    run = kubectl_kustomize(k8s / "overlays" / "extract")
    assert run.returncode != 0 and "data.weights" in run.stderr


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
    from pipeline.runtime import metrics

    dashboard = json.loads((REPO / "infra" / "grafana" / "glam-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    source = (REPO / "pipeline" / "runtime" / "metrics.py").read_text()
    for name in re.findall(r'"(glam_[a-z_]+)"', source):
        assert f"ray_{name}" in exprs, name
    assert metrics is not None


def test_ray_up_config_has_gpu_workers_and_no_keys() -> None:
    cfg = yaml.safe_load((REPO / "infra" / "ray" / "cluster-aws.yaml").read_text())
    assert cfg["provider"]["type"] == "aws"
    worker = cfg["available_node_types"]["gpu_worker"]
    assert worker["max_workers"] >= 1 and "IamInstanceProfile" in worker["node_config"]
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert cfg["docker"]["image"] == values()["image"]  # the one-place image
