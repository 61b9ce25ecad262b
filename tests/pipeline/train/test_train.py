"""jobs/train.py end to end on a real local Ray cluster (two CPU workers, gloo) with shards on
the moto S3 server: the loss falls and retrieval mAP on held-out images rises over the
untrained model; the exported checkpoint gives, through jobs/extract.py --weights, the
descriptors of the trained model; a killed run resumes from its checkpoint, and a group whose
worker died restarts from it, each to exactly the weights and optimiser state of an
uninterrupted run (of one epoch: recovery needs no learning); re-runs and changed configs are
handled.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from glam.builder import build_glam
from glam.config import ExtractConfig, GlamConfig
from glam.extract import GlamExtractor
from glam.model import GLAM
from glam.preprocess import decode_image, preprocess
from glam.weights import load_checkpoint
from jobs.extract import main as extract_main
from jobs.prepare_gldv2 import main as prepare_main
from jobs.train import main as train_main
from pipeline.datasets.synthetic import class_samples, write_gldv2_miniature
from pipeline.evaluate.protocol import evaluate_positions, protocol_ground_truth
from pipeline.evaluate.ranking import RankingModel
from pipeline.extract.summary import summarize
from pipeline.io.shard_writer import write_sharded
from pipeline.io.storage import WEIGHTS_STORE, filesystem, read_json
from pipeline.train.state import glam_from_state, read_state
from tests.support.extraction import output_listing

CLASSES = 4
SIZE = 96
CONFIG = GlamConfig(backbone="resnet18", dim=64, reduced_channels=64)
TRAIN_ARGS = [
    "--weights", "random", "--backbone", "resnet18", "--dim", "64",
    "--glam-config", '{"reduced_channels": 64}', "--image-size", str(SIZE),
    "--batch-size", "16", "--epochs", "5", "--lr", "0.002", "--workers", "2",
    "--log-every", "8", "--checkpoint-every", "40", "--keep-checkpoints", "2",
    "--shuffle-buffer", "16", "--max-failures", "0",
]  # fmt: skip
STEPS = 5 * (CLASSES * 96 // 16)  # 5 epochs of 24 steps
# The recovery tests' configuration: one epoch of half the samples at 64 px, a checkpoint every
# 4 steps (a run of its own, far cheaper than the five epochs the learning needs, with the same
# resume path: recovery needs no learning).
SHORT_ARGS = [
    *TRAIN_ARGS, "--epochs", "1", "--checkpoint-every", "4", "--image-size", "64",
    "--samples-per-epoch", str(CLASSES * 48),
]  # fmt: skip
SHORT_STEPS = CLASSES * 48 // 16
FAIL_AT_STEP = 10  # after the checkpoints at 4 and 8


@dataclass(frozen=True)
class Shards:
    bucket: str
    input: str  # the training shard pattern


@dataclass(frozen=True)
class Trained(Shards):
    output: str  # the reference run's folder


@pytest.fixture(scope="module")
def training_shards(
    ray_local: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Shards:
    """GLDv2-style miniature -> prepare_gldv2.py -> S3 shards."""
    import boto3

    bucket = f"train-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    raw = str(tmp_path_factory.mktemp("gldv2"))
    write_gldv2_miniature(raw, classes=CLASSES, per_class=96)
    shards = f"s3://{bucket}/gldv2-shards"
    prepare = ["--csv", f"{raw}/train_clean.csv", "--images", f"{raw}/train"]
    assert prepare_main([*prepare, "--output", shards, "--shard-size", "48"]) == 0
    return Shards(bucket, f"{shards}/train-{{000000..000007}}.tar")


@pytest.fixture(scope="module")
def trained(training_shards: Shards) -> Iterator[Trained]:
    """One uninterrupted run of the learning configuration."""
    output = f"s3://{training_shards.bucket}/runs/reference"
    assert train_main(["--input", training_shards.input, "--output", output, *TRAIN_ARGS]) == 0
    yield Trained(training_shards.bucket, training_shards.input, output)


@pytest.fixture(scope="module")
def short_run(training_shards: Shards) -> str:
    """An uninterrupted run of the recovery tests' configuration; returns its folder."""
    output = f"s3://{training_shards.bucket}/runs/short"
    args = ["--input", training_shards.input, "--output", output, *SHORT_ARGS]
    assert train_main(args) == 0
    return output


def assert_same_training_state(got_output: str, want_output: str) -> None:
    """Same step count, weights and optimiser state (momentum buffers)."""
    got, want = final_state(got_output), final_state(want_output)
    assert got["step"] == want["step"]
    for key, value in want["model"].items():
        torch.testing.assert_close(got["model"][key], value, rtol=0, atol=1e-6, msg=key)
    got_opt, want_opt = got["optimizer"]["state"], want["optimizer"]["state"]
    assert got_opt.keys() == want_opt.keys()
    for key, value in want_opt.items():
        torch.testing.assert_close(
            got_opt[key]["momentum_buffer"], value["momentum_buffer"], rtol=0, atol=1e-6
        )


def final_state(output: str) -> dict:
    record = read_json(f"{output}/_train.json")
    return read_state(f"{output}/checkpoints/step-{record['steps']:08d}")


def held_out(per_class: int = 10) -> list[tuple[str, int, bytes]]:
    """New images of the training classes (another seed than the training set's)."""
    return class_samples(CLASSES, per_class, seed=99, key_prefix="held")


def retrieval_map(model: GLAM) -> float:
    """Medium mAP (revisitop protocol code) with the first image of each class as its query
    and the other held-out images as the database."""
    samples = held_out()
    x = GlamExtractor(model, ExtractConfig(scales=(1.0,)))(
        [preprocess(decode_image(data), SIZE) for _, _, data in samples], batch_size=8
    ).numpy()
    labels = np.array([label for _, label, _ in samples])
    queries = [int(np.flatnonzero(labels == c)[0]) for c in range(CLASSES)]
    database = [i for i in range(len(samples)) if i not in queries]
    gnd = [
        {"easy": [j for j, i in enumerate(database) if labels[i] == labels[q]], "hard": []}
        for q in queries
    ]
    ranking = RankingModel(x[queries] @ x[database].T)
    return evaluate_positions(ranking.positions_of, protocol_ground_truth(gnd, "medium")).map


def test_loss_falls_and_the_run_is_recorded(trained: Trained) -> None:
    record = read_json(f"{trained.output}/_train.json")
    assert record["status"] == "succeeded" and record["steps"] == STEPS
    assert record["workers"] == 2 and record["use_gpu"] is False
    history = record["history"]
    assert [h["step"] for h in history] == sorted(
        {*range(8, STEPS + 1, 8), *range(24, STEPS + 1, 24)}
    )
    first, last = history[0], history[-1]
    assert last["loss"] < 0.7 * first["loss"], (first, last)
    assert last["accuracy"] > first["accuracy"] + 0.2, (first, last)
    assert all(len(h["images_per_s_per_worker"]) == 2 for h in history)
    assert record["resumed_from"] == []
    # The model file: a GLAM checkpoint with its architecture and training recorded.
    checkpoint = load_checkpoint(f"{trained.output}/glam.safetensors", WEIGHTS_STORE)
    assert checkpoint.config == CONFIG
    assert checkpoint.sha256 == record["model_sha256"]
    assert '"arcface_margin": 0.3' in checkpoint.metadata["training"]
    assert checkpoint.metadata["steps"] == str(STEPS)
    # Only the last --keep-checkpoints checkpoints stay.
    fs, path = filesystem(f"{trained.output}/checkpoints")
    kept = sorted(p.rsplit("/", 1)[1] for p in fs.ls(path) if "/step-" in p)
    assert kept == [f"step-{STEPS - 24:08d}", f"step-{STEPS:08d}"]


def test_retrieval_map_improves_over_the_untrained_model(trained: Trained) -> None:
    untrained = retrieval_map(build_glam("random", CONFIG, seed=0))  # the run's starting point
    after = retrieval_map(build_glam(f"{trained.output}/glam.safetensors", store=WEIGHTS_STORE))
    assert after > untrained + 0.15, (untrained, after)


def test_extract_with_the_checkpoint_gives_the_trained_models_descriptors(
    trained: Trained,
) -> None:
    samples = held_out(per_class=3)
    shards = f"s3://{trained.bucket}/held-out"
    write_sharded(shards, [(key, {"jpg": data}) for key, _, data in samples], 6)
    out = f"s3://{trained.bucket}/descriptors"
    args = ["--input", f"{shards}/{{000000..000001}}.tar", "--output", out]
    weights = f"{trained.output}/glam.safetensors"
    extra = ["--image-size", str(SIZE), "--scales", "1", "--batch-size", "4", "--precision", "fp32"]
    assert extract_main([*args, "--weights", weights, *extra]) == 0
    fs, path = filesystem(out)
    table = ds.dataset(f"{path}/descriptors", filesystem=fs, format="parquet").to_table()
    got = dict(zip(table["key"].to_pylist(), table["descriptor"].to_pylist(), strict=True))
    # The trained model as the last training checkpoint holds it (the workers' memory).
    in_memory = glam_from_state(final_state(trained.output), CONFIG)
    want = GlamExtractor(in_memory, ExtractConfig(scales=(1.0,)))(
        [preprocess(decode_image(data), SIZE) for _, _, data in samples]
    )
    assert sorted(got) == sorted(key for key, _, _ in samples)
    summary = summarize(out)  # jobs/inspect_output.py: DuckDB casts to this model's dim
    assert (summary.dim, summary.descriptors) == (64, len(samples))
    assert abs(summary.first_norm - 1.0) < 1e-5
    for i, (key, _, _) in enumerate(samples):
        torch.testing.assert_close(torch.tensor(got[key]), want[i], rtol=0, atol=2e-5)


def test_killed_run_resumes_to_the_uninterrupted_result(
    training_shards: Shards,
    short_run: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys,
) -> None:
    output = f"s3://{training_shards.bucket}/runs/killed"
    monkeypatch.setenv("GLAM_FAILPOINTS", f"train_worker_exit_at_step={FAIL_AT_STEP}")
    monkeypatch.setenv("GLAM_FAILPOINT_DIR", str(tmp_path))
    args = ["--input", training_shards.input, "--output", output, *SHORT_ARGS]
    assert train_main(args) == 1
    err = capsys.readouterr().err
    assert "re-running the same command resumes" in err and "Traceback" not in err
    assert (tmp_path / f"train_worker_exit_at_step-{FAIL_AT_STEP}.fired").exists()
    assert read_json(f"{output}/_train.json")["status"] == "failed"

    assert train_main(args) == 0  # the same command resumes
    record = read_json(f"{output}/_train.json")
    assert record["status"] == "succeeded" and record["steps"] == SHORT_STEPS
    (resumed,) = record["resumed_from"]
    assert resumed in (4, 8)  # the last checkpoint registered before the crash
    steps = [h["step"] for h in record["history"]]
    assert steps == sorted(set(steps)) and steps[-1] == SHORT_STEPS  # continues, no step twice
    # Same step count, weights and optimiser state as the run that was never killed.
    assert_same_training_state(output, short_run)


def test_rerun_is_a_no_op_and_a_changed_config_is_refused(trained: Trained, capsys) -> None:
    before = output_listing(trained.output)
    args = ["--input", trained.input, "--output", trained.output, *TRAIN_ARGS]
    assert train_main(args) == 0
    assert "already trained" in capsys.readouterr().out
    assert output_listing(trained.output) == before  # nothing written
    assert train_main([*args, "--lr", "0.01"]) == 1
    err = capsys.readouterr().err
    assert "differs in: train_config" in err and "use a new --output" in err


def test_checkpoint_holds_the_whole_training_state(trained: Trained) -> None:
    state = final_state(trained.output)  # read with weights_only=True
    assert {"model", "optimizer", "scaler", "step", "history", "meta"} <= set(state)
    heads = [k for k in state["model"] if k.startswith("head.")]
    assert heads == ["head.weight"] and state["model"]["head.weight"].shape == (CLASSES, 64)
    assert state["meta"]["world"] == 2
    assert set(state["meta"]) == {"job", "dataset", "world"}  # nothing run-scoped, e.g. actors


def test_worker_death_inside_a_run_restarts_the_group_from_the_checkpoint(
    training_shards: Shards, short_run: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    output = f"s3://{training_shards.bucket}/runs/worker-died"
    monkeypatch.setenv("GLAM_FAILPOINTS", f"train_worker_exit_at_step={FAIL_AT_STEP}")
    monkeypatch.setenv("GLAM_FAILPOINT_DIR", str(tmp_path))
    args = [*SHORT_ARGS, "--max-failures", "1"]
    assert train_main(["--input", training_shards.input, "--output", output, *args]) == 0
    assert (tmp_path / f"train_worker_exit_at_step-{FAIL_AT_STEP}.fired").exists()
    record = read_json(f"{output}/_train.json")
    assert record["status"] == "succeeded" and record["steps"] == SHORT_STEPS
    (resumed,) = record["resumed_from"]  # one restart, from a checkpoint before the failure
    assert resumed in (4, 8)
    # The restarted group ends where the run that never failed ended.
    assert_same_training_state(output, short_run)
