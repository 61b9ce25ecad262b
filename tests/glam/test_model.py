"""The whole GLAM model: composition of the blocks (Eq. 1-7), head, batch invariance, sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as Fn

from glam import ExtractConfig, GlamConfig, GlamExtractor, build_glam
from glam.config import DEFAULT_SCALES
from glam.extract import rescale
from tests.support.glam_reference import (
    ref_global_channel,
    ref_global_spatial,
    ref_local_channel,
    ref_local_spatial_map,
)


@pytest.fixture(scope="module")
def model():
    return build_glam(config=GlamConfig(backbone="resnet50"), seed=3)


@pytest.fixture(scope="module")
def small_model():
    """ResNet18-GLAM (c = 512): the same equations at a quarter of the channels, so the
    pure-Python float64 references stay quick."""
    return build_glam(config=GlamConfig(backbone="resnet18"), seed=3)


@pytest.mark.slow  # a float64 GLAM forward against pure-Python references
def test_attention_composition_matches_paper(small_model) -> None:
    """F^gl = w_l F^l + w_g F^g + w F with F^l (Eq. 2), F^g = F_c^g ⊙ G_s + F_c^g (Eq. 6)."""
    m = small_model.double()
    try:
        with torch.no_grad():
            m.fusion.logits.copy_(torch.tensor([0.5, -0.25, 0.1]))
            for p in m.global_spatial.parameters():
                p.mul_(0.05)  # keep A_s^g away from one-hot so the test is sensitive
        f = torch.rand(1, m.config.channels, 3, 5, dtype=torch.float64)
        f_cl = ref_local_channel(f, m.local_channel.conv.weight.flatten().tolist())
        a_sl = ref_local_spatial_map(f, m.local_spatial, m.config.dilations)
        f_l = f_cl * a_sl + f_cl
        f_cg = ref_global_channel(
            f,
            m.global_channel.conv_q.weight.flatten().tolist(),
            m.global_channel.conv_k.weight.flatten().tolist(),
        )
        g_s = ref_global_spatial(f, m.global_spatial)
        f_g = f_cg * g_s + f_cg
        w = torch.softmax(torch.tensor([0.5, -0.25, 0.1], dtype=torch.float64), 0)
        expected = w[0] * f_l + w[1] * f_g + w[2] * f
        with torch.no_grad():
            torch.testing.assert_close(m.forward_attention(f), expected, rtol=1e-9, atol=1e-9)
            # Head: GeM -> FC -> BN (running stats) -> L2.
            gem = expected.clamp(min=1e-6).pow(3).mean((-2, -1)).pow(1 / 3)
            y = gem @ m.fc.weight.T
            y = (y - m.bn.running_mean) / torch.sqrt(m.bn.running_var + m.bn.eps)
            y = y * m.bn.weight + m.bn.bias
            torch.testing.assert_close(m.forward_head(expected).double(), Fn.normalize(y, dim=-1))
    finally:
        m.float()


@pytest.mark.parametrize("h,w", [(64, 64), (96, 40), (33, 47), (200, 128)])
def test_any_input_size_gives_unit_descriptor(model, h: int, w: int) -> None:
    with torch.inference_mode():
        d = model(torch.randn(2, 3, h, w))
    assert d.shape == (2, 512)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(2))


def test_descriptor_is_batch_invariant(model) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 3, 96, 128, generator=g)
    with torch.inference_mode():
        batched = model(x)
        alone = torch.cat([model(x[i : i + 1]) for i in range(5)])
        shuffled = model(x.flip(0)).flip(0)
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batched, shuffled, rtol=1e-4, atol=1e-5)


def test_multiscale_is_mean_of_scales_renormalised(model) -> None:
    cfg = ExtractConfig(scales=DEFAULT_SCALES, channels_last=False)
    ex = GlamExtractor(model, cfg, device="cpu")
    x = torch.randn(3, 96, 128)
    with torch.inference_mode():
        per_scale = [model(rescale(x[None], s)) for s in DEFAULT_SCALES]
    expected = Fn.normalize(sum(per_scale), dim=-1)[0]
    torch.testing.assert_close(ex([x])[0], expected, rtol=1e-4, atol=1e-5)
    assert [rescale(x[None], s).shape[-1] for s in DEFAULT_SCALES] == [91, 128, 181]


def test_extractor_batches_mixed_sizes_in_input_order(model) -> None:
    ex = GlamExtractor(model, ExtractConfig(scales=(1.0,)), device="cpu")
    imgs = [torch.randn(3, 96, 64), torch.randn(3, 64, 96), torch.randn(3, 96, 64)]
    together = ex(imgs, batch_size=2)
    one_by_one = torch.cat([ex([im]) for im in imgs])
    torch.testing.assert_close(together, one_by_one, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        ex(imgs, batch_size=0)


def test_bf16_descriptor_close_to_fp32(model) -> None:
    x = torch.randn(3, 96, 128)
    fp32 = GlamExtractor(model, ExtractConfig(scales=(1.0,)), device="cpu")
    bf16 = GlamExtractor(model, ExtractConfig(scales=(1.0,), precision="bf16"), device="cpu")
    a, b = fp32([x])[0], bf16([x])[0]
    assert b.dtype == torch.float32
    assert float(a @ b) > 0.98


def test_same_seed_same_model_and_hash() -> None:
    cfg = GlamConfig(backbone="resnet50", reduced_channels=64)
    a, b = build_glam(config=cfg, seed=1), build_glam(config=cfg, seed=1)
    c = build_glam(config=cfg, seed=2)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    torch.testing.assert_close(a.fc.weight, b.fc.weight)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"backbone": "vgg16"},
        {"dim": 0},
        {"local_channel_kernel": 4},
        {"dilations": ()},
        {"local_spatial_activation": "relu"},
        {"spatial_softmax_scale": 0.0},
        {"dropout": 1.0},
    ],
)
def test_bad_config_is_a_value_error(kwargs) -> None:
    with pytest.raises(ValueError):
        GlamConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"scales": ()}, {"scales": (1.0, -1.0)}, {"precision": "fp8"}])
def test_bad_extract_config_is_a_value_error(kwargs) -> None:
    with pytest.raises(ValueError):
        ExtractConfig(**kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
def test_cuda_matches_cpu(model) -> None:
    x = torch.randn(3, 96, 128)
    cfg = ExtractConfig(scales=(1.0,))
    cpu = GlamExtractor(model, cfg, device="cpu")([x])
    gpu = GlamExtractor(build_glam(config=model.config, seed=3), cfg, device="cuda")([x])
    torch.testing.assert_close(cpu, gpu, rtol=1e-3, atol=1e-3)
