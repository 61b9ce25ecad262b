"""The paper's Table 4 variants as configurations: which modules exist, what each computes
(against closed forms written here), what checkpoints record, and that the paper's model keeps
its identity."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
import torch.nn.functional as Fn
import torchvision

from glam import GlamConfig, build_glam, load_checkpoint, save_checkpoint
from glam.fusion import GlobalLocalFusion
from glam.global_channel import GlobalChannelAttention
from glam.global_spatial import GlobalSpatialAttention
from glam.local_channel import LocalChannelAttention
from glam.local_spatial import LocalSpatialAttention
from pipeline.io.storage import WEIGHTS_STORE
from tests.support.glam_reference import (
    ref_global_channel,
    ref_global_spatial,
    ref_local_channel,
    ref_local_spatial_map,
)

SMALL = {"backbone": "resnet18", "dim": 32, "reduced_channels": 16}
ATTENTION_MODULES = (
    LocalChannelAttention,
    LocalSpatialAttention,
    GlobalChannelAttention,
    GlobalSpatialAttention,
    GlobalLocalFusion,
)


def kinds(model: torch.nn.Module) -> set[type]:
    return {type(m) for m in model.modules() if isinstance(m, ATTENTION_MODULES)}


@pytest.mark.parametrize(
    "attention,fusion,expected",
    [
        ("none", "residual", set()),
        ("local", "residual", {LocalChannelAttention, LocalSpatialAttention, GlobalLocalFusion}),
        ("local", "stream", {LocalChannelAttention, LocalSpatialAttention}),
        ("global", "residual", {GlobalChannelAttention, GlobalSpatialAttention, GlobalLocalFusion}),
        ("global-local", "residual", set(ATTENTION_MODULES)),
    ],
)
def test_each_variant_has_only_its_modules(attention: str, fusion: str, expected: set) -> None:
    cfg = GlamConfig(**SMALL, attention=attention, single_stream_fusion=fusion)
    model = build_glam(config=cfg)
    assert kinds(model) == expected
    if attention == "none":
        assert {k.split(".")[0] for k in model.state_dict()} == {"backbone", "pool", "fc", "bn"}


def randomize_head(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.startswith(("bn.", "fc.")) and t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)


def test_none_is_gem_fc_bn_l2_on_the_backbone() -> None:
    """Closed form on a torchvision ResNet18 holding the same weights, in float64."""
    model = build_glam(config=GlamConfig(**SMALL, attention="none"), seed=1).double()
    randomize_head(model, 2)
    with torch.no_grad():
        model.pool.p.fill_(2.5)
    resnet = torchvision.models.resnet18().double().eval()
    trunk_state = dict(model.backbone.state_dict())
    classifier = {"fc.weight": resnet.fc.weight, "fc.bias": resnet.fc.bias}
    resnet.load_state_dict({**trunk_state, **classifier})
    x = torch.rand(2, 3, 70, 90, dtype=torch.float64)
    with torch.no_grad():
        trunk = torch.nn.Sequential(*list(resnet.children())[:-2])
        f = trunk(x)  # (2, 512, 3, 3)
        gem = f.clamp(min=1e-6).pow(2.5).mean(dim=(2, 3)).pow(1 / 2.5)  # GeM
        y = gem @ model.fc.weight.T  # FC (no bias)
        bn = model.bn
        y = (y - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        expected = y / y.norm(dim=1, keepdim=True)
        torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-12)


def attention_inputs(attention: str, fusion: str):
    cfg = GlamConfig(**SMALL, attention=attention, single_stream_fusion=fusion)
    model = build_glam(config=cfg, seed=4).double()
    with torch.no_grad():
        if model.fusion is not None:
            model.fusion.logits.copy_(torch.linspace(0.4, -0.3, len(model.fusion.logits)))
        if cfg.uses_global:
            for p in model.global_spatial.parameters():
                p.mul_(0.05)  # A_s^g away from one-hot
    return model, torch.rand(1, 512, 3, 4, dtype=torch.float64)


def ref_local(model, f):
    f_cl = ref_local_channel(f, model.local_channel.conv.weight.flatten().tolist())
    return f_cl * ref_local_spatial_map(f, model.local_spatial, model.config.dilations) + f_cl


def ref_global(model, f):
    f_cg = ref_global_channel(
        f,
        model.global_channel.conv_q.weight.flatten().tolist(),
        model.global_channel.conv_k.weight.flatten().tolist(),
    )
    return f_cg * ref_global_spatial(f, model.global_spatial) + f_cg


@pytest.mark.parametrize("attention", ["local", "global"])
def test_single_stream_residual_is_eq7_without_the_absent_term(attention: str) -> None:
    model, f = attention_inputs(attention, "residual")
    stream = ref_local(model, f) if attention == "local" else ref_global(model, f)
    w = torch.softmax(torch.tensor([0.4, -0.3], dtype=torch.float64), 0)
    with torch.no_grad():
        got = model.forward_attention(f)
    torch.testing.assert_close(got, w[0] * stream + w[1] * f, rtol=1e-7, atol=1e-7)


@pytest.mark.parametrize("attention", ["local", "global"])
def test_single_stream_alone(attention: str) -> None:
    model, f = attention_inputs(attention, "stream")
    stream = ref_local(model, f) if attention == "local" else ref_global(model, f)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_attention(f), stream, rtol=1e-7, atol=1e-7)


def test_the_papers_model_keeps_its_identity() -> None:
    """Configs of models made before the variants existed serialise exactly as they did."""
    before = {
        "backbone", "dim", "reduced_channels", "local_channel_kernel", "global_channel_kernel",
        "dilations", "local_spatial_activation", "channel_softmax_scale",
        "spatial_softmax_scale", "gem_p", "gem_eps", "dropout",
    }  # fmt: skip
    assert set(GlamConfig().to_dict()) == before
    assert GlamConfig.from_dict(GlamConfig().to_dict()) == GlamConfig()
    assert GlamConfig(attention="none").to_dict()["attention"] == "none"


def test_old_checkpoint_without_the_field_loads_as_global_local(tmp_path) -> None:
    model = build_glam(config=GlamConfig(**SMALL))
    config = {k: v for k, v in model.config.to_dict().items() if k != "attention"}
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "old.safetensors"
    safetensors.torch.save_file(state, path, metadata={"config": json.dumps(config)})
    loaded = build_glam(str(path))
    assert loaded.config.attention == "global-local" and kinds(loaded) == set(ATTENTION_MODULES)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoints_record_their_variant(tmp_path, suffix: str) -> None:
    model = build_glam(config=GlamConfig(**SMALL, attention="none"))
    uri = str(tmp_path / f"none{suffix}")
    save_checkpoint(model, uri, store=WEIGHTS_STORE)
    checkpoint = load_checkpoint(uri)
    assert checkpoint.config is not None and checkpoint.config.attention == "none"
    assert checkpoint.metadata["attention"] == "none"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(build_glam(uri)(x), model(x))


def test_bad_variant_is_refused() -> None:
    with pytest.raises(ValueError, match="attention must be one of"):
        GlamConfig(attention="channel")


def test_input_normalisation_maps_imagenet_input_to_the_weights_own() -> None:
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.25)
    plain = build_glam(config=GlamConfig(**SMALL, attention="none"), seed=5)
    adapted = build_glam(
        config=GlamConfig(**SMALL, attention="none", input_mean=mean, input_std=std), seed=5
    )
    img = torch.rand(1, 3, 64, 80)  # [0, 1] RGB
    imagenet = (img - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    own = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(adapted(imagenet), plain(own), rtol=1e-5, atol=1e-6)
    assert set(adapted.state_dict()) == set(plain.state_dict())  # nothing extra saved


def test_head_prenorm_and_fc_bias() -> None:
    cfg = GlamConfig(**SMALL, attention="none", head_prenorm=True, fc_bias=True)
    model = build_glam(config=cfg, seed=6).double()
    randomize_head(model, 7)
    f = torch.rand(2, 512, 3, 3, dtype=torch.float64)
    with torch.no_grad():
        g = f.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
        g = g / g.norm(dim=1, keepdim=True)
        y = model.bn(model.fc(g))
        torch.testing.assert_close(model.forward_head(f), Fn.normalize(y, dim=1))
    assert model.fc.bias is not None
