"""jobs/convert_weights.py: checkpoints built here in each source layout (cirtorch, CVNet's
pycls) convert to GLAM checkpoints whose descriptor equals the source network's own GeM (+
whitening) computation (tests/support/foreign_networks.py); mismatches name the layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glam import build_glam, load_checkpoint
from glam.convert import ConversionOptions, convert
from glam.weights import CheckpointError, load_foreign_checkpoint
from jobs.convert_weights import main as convert_main
from tests.support.foreign_networks import (
    CirtorchGeM,
    PyclsResNet,
    cirtorch_checkpoint,
    cirtorch_whitenapply,
    cvnet_checkpoint,
    cvnet_input,
    imagenet_input,
)

LW = "retrieval-SfM-120k"


def images(seed: int = 0, n: int = 2, h: int = 72, w: int = 96) -> torch.Tensor:
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)).double()


def lw_entry(dim: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"m": rng.normal(size=(dim, 1)) * 0.01, "P": rng.normal(size=(dim, dim)) / dim**0.5}


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal up to the float32 rounding of the stored weights (a wrong mapping is off by ~0.1)."""
    torch.testing.assert_close(got, want.to(got.dtype), rtol=1e-5, atol=1e-6)


def write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def convert_to(tmp_path, source: str, fmt: str, *extra: str) -> torch.nn.Module:
    out = str(tmp_path / "converted.safetensors")
    assert convert_main(["--source", source, "--format", fmt, "--output", out, *extra]) == 0
    return build_glam(out).double()


def test_cirtorch_with_end_to_end_whitening(tmp_path, capsys) -> None:
    net = CirtorchGeM("resnet18", whiten=True, seed=1).double()
    src = write(tmp_path, "rSfM120k-tl-resnet18-gem-w.pth", cirtorch_checkpoint(net, "resnet18"))
    model = convert_to(tmp_path, src, "cirtorch")
    img = images()
    with torch.no_grad():
        close(model(imagenet_input(img)), net(imagenet_input(img)))
    cfg = model.config
    assert (cfg.attention, cfg.dim, cfg.head_prenorm, cfg.fc_bias) == ("none", 512, True, True)
    assert "head: whiten layer" in capsys.readouterr().out
    record = load_checkpoint(str(tmp_path / "converted.safetensors")).metadata["converted"]
    assert '"source_format": "cirtorch"' in record and "source_sha256" in record


@pytest.mark.parametrize("mode,dim", [("ss", 200), ("ms", 512)])
def test_cirtorch_learned_whitening_becomes_the_fc(tmp_path, mode: str, dim: int) -> None:
    net = CirtorchGeM("resnet18", whiten=False, seed=2).double()
    lw = {LW: {"ss": lw_entry(512, 3), "ms": lw_entry(512, 4)}}
    src = write(tmp_path, "gem.pth", cirtorch_checkpoint(net, "resnet18", Lw=lw))
    extra = ["--whitening", LW, "--whitening-mode", mode, "--dim", str(dim)]
    model = convert_to(tmp_path, src, "cirtorch", *extra)
    img = images(1)
    with torch.no_grad():
        expected = cirtorch_whitenapply(net(imagenet_input(img)), **_mp(lw[LW][mode]), dims=dim)
        close(model(imagenet_input(img)), expected)
    assert model.config.dim == dim


def _mp(entry: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"m": entry["m"], "p": entry["P"]}


def test_cirtorch_without_whitening_is_plain_gem(tmp_path) -> None:
    net = CirtorchGeM("resnet18", whiten=False, seed=5).double()
    model = convert_to(
        tmp_path, write(tmp_path, "g.pth", cirtorch_checkpoint(net, "resnet18")), "cirtorch"
    )
    img = images(2)
    with torch.no_grad():
        close(model(imagenet_input(img)), net(imagenet_input(img)))
    assert model.config.dim == 512 and not model.config.fc_bias


def test_cirtorch_own_normalisation_travels_with_the_checkpoint(tmp_path) -> None:
    """meta mean/std other than ImageNet's: extraction still feeds ImageNet-normalised RGB."""
    mean, std = [0.5, 0.45, 0.4], [0.25, 0.3, 0.2]
    net = CirtorchGeM("resnet18", whiten=True, seed=6).double()
    src = write(tmp_path, "n.pth", cirtorch_checkpoint(net, "resnet18", mean=mean, std=std))
    model = convert_to(tmp_path, src, "cirtorch")
    assert model.config.input_mean == tuple(mean) and model.config.input_std == tuple(std)
    img = images(3)
    own = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        close(model(imagenet_input(img)), net(own.double()))


def test_cvnet_pycls_resnet(tmp_path, capsys) -> None:
    net = PyclsResNet(seed=7).double()
    src = write(tmp_path, "CVPR2022_CVNet_R50.pyth", cvnet_checkpoint(net))
    model = convert_to(tmp_path, src, "cvnet")
    img = images(4, h=64, w=80)
    with torch.no_grad():
        close(model(imagenet_input(img)), net(cvnet_input(img)))
    cfg = model.config
    assert (cfg.backbone, cfg.attention, cfg.dim, cfg.fc_bias) == ("resnet50", "none", 2048, True)
    assert cfg.input_mean is None  # the channel order is folded into the first convolution
    assert "resnet50 (head: fc (trained))" in capsys.readouterr().out


def cirtorch_obj(tmp_path, **meta: object) -> tuple[dict, str]:
    net = CirtorchGeM("resnet18", whiten=True, seed=8)
    src = write(tmp_path, "c.pth", cirtorch_checkpoint(net, "resnet18", **meta))
    return load_foreign_checkpoint(src).obj, src


def test_missing_and_unexpected_keys_name_the_source_layout(tmp_path) -> None:
    obj, src = cirtorch_obj(tmp_path)
    del obj["state_dict"]["features.7.1.conv2.weight"]
    obj["state_dict"]["lwhiten.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError) as e:
        convert(obj, ConversionOptions("cirtorch"), src)
    message = str(e.value)
    assert "(cirtorch layout)" in message
    assert "missing keys: backbone.layer4.1.conv2.weight" in message
    assert "unexpected keys: lwhiten.weight" in message
    pycls = load_foreign_checkpoint(write(tmp_path, "p.pth", cvnet_checkpoint(PyclsResNet())))
    pycls.obj["model_state"]["encoder_q.s4.b3.f.q.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"\(pycls \(CVNet\) layout\).*s4.b3.f.q.weight"):
        convert(pycls.obj, ConversionOptions("cvnet"), "cvnet.pyth")


@pytest.mark.parametrize(
    "meta,opts,message",
    [
        ({"architecture": "vgg16"}, {}, "is not a torchvision ResNet"),
        ({"pooling": "rmac"}, {}, "only 'gem' converts"),
        ({"regional": True}, {}, "with regional do not convert"),
        ({}, {"dim": 256}, "cannot be cut to dim 256"),
        ({}, {"whitening": LW}, "convert without --whitening"),
    ],
)
def test_unsupported_sources_are_clear_errors(tmp_path, meta, opts, message) -> None:
    obj, src = cirtorch_obj(tmp_path, **meta)
    with pytest.raises(ValueError, match=message):
        convert(obj, ConversionOptions("cirtorch", **opts), src)


def test_unknown_learned_whitening_lists_the_ones_there(tmp_path, capsys) -> None:
    net = CirtorchGeM("resnet18", whiten=False)
    lw = {LW: {"ss": lw_entry(512, 1), "ms": lw_entry(512, 2)}}
    src = write(tmp_path, "g.pth", cirtorch_checkpoint(net, "resnet18", Lw=lw))
    out = str(tmp_path / "x.safetensors")
    args = ["--source", src, "--format", "cirtorch", "--output", out, "--whitening", "gl18"]
    assert convert_main(args) == 1
    err = capsys.readouterr().err
    assert "no learned whitening 'gl18'" in err and LW in err and "Traceback" not in err
    assert convert_main([*args[:-1], LW, "--dim", "9999"]) == 1
    assert "has 512 rows, fewer than dim 9999" in capsys.readouterr().err


def test_source_read_from_s3(s3_bucket: str, capsys) -> None:
    from pipeline.io.storage import WEIGHTS_STORE, write_bytes_atomic

    net = CirtorchGeM("resnet18", whiten=True, seed=9)
    src = f"s3://{s3_bucket}/models/gl18-tl-resnet18-gem-w.pth"
    write_bytes_atomic(src, cirtorch_checkpoint(net, "resnet18"))
    out = f"s3://{s3_bucket}/models/converted.safetensors"
    assert convert_main(["--source", src, "--format", "cirtorch", "--output", out]) == 0
    img = images(5).float()
    with torch.no_grad():
        close(build_glam(out, store=WEIGHTS_STORE)(imagenet_input(img)), net(imagenet_input(img)))
    assert "sha256" in capsys.readouterr().out


def test_a_malformed_checkpoint_is_a_checkpoint_error_not_a_crash(tmp_path, capsys) -> None:
    obj, src = cirtorch_obj(tmp_path)
    obj["state_dict"][next(iter(obj["state_dict"]))] = "not a tensor"
    with pytest.raises(CheckpointError, match=r"c\.pth: not a cirtorch checkpoint \(Attr"):
        convert(obj, ConversionOptions("cirtorch"), src)
