"""Checkpoint I/O: round trips on a local path and on s3:// (moto server) through the store the
pipeline passes, on bytes, and clear errors."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from glam import (
    CheckpointError,
    GlamConfig,
    build_glam,
    checkpoint_bytes,
    load_checkpoint,
    parse_checkpoint,
    save_checkpoint,
)
from glam.weights import WeightsUnavailableError, imagenet_weights, sha256_hex
from pipeline.io.storage import WEIGHTS_STORE

SMALL = GlamConfig(backbone="resnet50", reduced_channels=32, dim=64)


@pytest.fixture(scope="module")
def model():
    return build_glam(config=SMALL, seed=11)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_local_round_trip(model, tmp_path, suffix: str) -> None:
    uri = str(tmp_path / f"glam{suffix}")
    digest = save_checkpoint(model, uri, metadata={"note": "test"}, store=WEIGHTS_STORE)
    assert digest == sha256_hex(Path(uri).read_bytes())
    loaded = build_glam(weights=uri)
    assert loaded.config == SMALL
    assert same_weights(model, loaded)
    assert loaded.weights_sha256 == digest and loaded.weights_source == uri
    assert load_checkpoint(uri).metadata["note"] == "test"
    assert [p for p in os.listdir(tmp_path) if ".tmp-" in p] == []


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_s3_round_trip(model, s3_bucket: str, suffix: str) -> None:
    uri = f"s3://{s3_bucket}/models/glam{suffix}"
    digest = save_checkpoint(model, uri, store=WEIGHTS_STORE)
    loaded = build_glam(weights=uri, store=WEIGHTS_STORE)
    assert same_weights(model, loaded) and loaded.weights_sha256 == digest


def test_bytes_round_trip(model) -> None:
    """The store-free core: a checkpoint to bytes and back, the format from the name."""
    for name in ("glam.safetensors", "glam.pt"):
        data = checkpoint_bytes(model, name, {"note": "bytes"})
        checkpoint = parse_checkpoint(data, name)
        assert checkpoint.config == SMALL and checkpoint.sha256 == sha256_hex(data)
        assert checkpoint.metadata["note"] == "bytes"
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in checkpoint.state_dict.items())


def test_a_uri_without_a_store_is_refused() -> None:
    """glam reads local paths only by itself: an object store is the store's to read."""
    with pytest.raises(ValueError, match="pass a WeightsStore"):
        build_glam(weights="s3://bucket/models/glam.safetensors")


def test_requested_config_must_match_checkpoint(model, tmp_path) -> None:
    uri = str(tmp_path / "glam.safetensors")
    save_checkpoint(model, uri, store=WEIGHTS_STORE)
    with pytest.raises(CheckpointError, match="differs from the requested"):
        build_glam(weights=uri, config=GlamConfig(backbone="resnet50"))


def test_missing_file(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        build_glam(weights=str(tmp_path / "absent.safetensors"))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_truncated_checkpoint(model, tmp_path, suffix: str) -> None:
    uri = str(tmp_path / f"glam{suffix}")
    save_checkpoint(model, uri, store=WEIGHTS_STORE)
    data = Path(uri).read_bytes()
    with open(uri, "wb") as f:
        f.write(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable"):
        build_glam(weights=uri)


@pytest.mark.parametrize("seed", range(20))
def test_corrupted_checkpoint(tmp_path, seed: int) -> None:
    uri = str(tmp_path / "glam.pt")
    Path(uri).write_bytes(np.random.default_rng(seed).bytes(4096))
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(uri)


@pytest.mark.parametrize("seed", range(20))
def test_corrupted_pickle_stream(model, tmp_path, seed: int) -> None:
    """Random bytes after a valid pickle protocol header reach deep into the unpickler."""
    uri = str(tmp_path / "glam.pt")
    Path(uri).write_bytes(b"\x80\x02" + np.random.default_rng(seed).bytes(512))
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(uri)


def test_pickled_code_is_refused(tmp_path) -> None:
    uri = str(tmp_path / "evil.pt")
    # Arbitrary objects need pickle. (Not ``print``: Ray's progress bars replace it in
    # builtins for the rest of a test session.)
    torch.save({"state_dict": {}, "hook": os.system}, uri)
    with pytest.raises(CheckpointError, match=r"refused: it holds Python objects \(.*system\)"):
        load_checkpoint(uri)
    try:
        load_checkpoint(uri)
    except CheckpointError as e:  # never torch's advice to load it with weights_only=False
        assert "weights_only" not in str(e) and e.__cause__ is None


def test_wrong_shape_names_the_keys(model, tmp_path) -> None:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["fc.weight"] = torch.zeros(32, 2048)
    uri = str(tmp_path / "bad.pt")
    torch.save(state, uri)  # a bare state dict: no config recorded
    with pytest.raises(CheckpointError, match=r"1 mis-shaped keys: fc.weight \(32, 2048\)"):
        build_glam(weights=uri, config=SMALL)


def test_foreign_checkpoint_names_missing_and_unexpected(tmp_path) -> None:
    uri = str(tmp_path / "resnet18.pth")
    torch.save(torchvision.models.resnet18().state_dict(), uri)
    with pytest.raises(CheckpointError) as err:
        build_glam(weights=uri, config=SMALL)
    msg = str(err.value)
    assert "missing keys: " in msg and "mis-shaped keys: " in msg
    assert "backbone.layer2.0.downsample.1.weight (128,) vs model (512,)" in msg


def test_ddp_prefix_is_stripped(model, tmp_path) -> None:
    uri = str(tmp_path / "ddp.pt")
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, uri)
    assert same_weights(build_glam(weights=uri, config=SMALL), model)


def test_unknown_suffix_is_refused(model, tmp_path) -> None:
    with pytest.raises(ValueError, match="checkpoint format"):
        save_checkpoint(model, str(tmp_path / "glam.weights"), store=WEIGHTS_STORE)


def test_imagenet_backbone_from_torch_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = imagenet_weights("resnet50")
    with pytest.raises(WeightsUnavailableError, match=os.path.basename(weights.url)):
        build_glam(weights="imagenet", config=SMALL)
    # The file a user places in the cache is what gets loaded.
    reference = torchvision.models.resnet50()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(reference.state_dict(), buf)
    (cache / os.path.basename(weights.url)).write_bytes(buf.getvalue())
    model = build_glam(weights="imagenet", config=SMALL)
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.backbone.layer4[2].bn3.weight, reference.layer4[2].bn3.weight)
