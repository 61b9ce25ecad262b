"""The training recipe: config validation, the lr schedule, group-size sampling's groups, and
the augmentation (scaling, random crop, illumination)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from PIL import Image

from glam.augment import AugmentDraw, augment, draw, grayscale, illuminate, scale_and_crop
from glam.groups import AspectGroups
from glam.recipe import (
    DEFAULT_ASPECT_RATIOS,
    AugmentConfig,
    TrainConfig,
    autocast_dtype,
    build_optimizer,
    learning_rate,
)


def test_paper_defaults() -> None:
    cfg = TrainConfig()
    assert (cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (1e-3, 0.9, 1e-5, 64)
    assert cfg.arcface_margin == 0.3
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], cfg)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (1e-3, 0.9, 1e-5)


@pytest.mark.parametrize(
    "kw",
    [
        {"lr": 0.0},
        {"momentum": 1.0},
        {"batch_size": 0},
        {"arcface_margin": 2.0},
        {"image_size": 16},
        {"aspect_ratios": ()},
        {"lr_schedule": "step"},
        {"precision": "int8"},
    ],
)
def test_bad_config_is_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TrainConfig(**kw)  # type: ignore[arg-type]


def test_config_round_trips_through_json_types() -> None:
    cfg = TrainConfig(aspect_ratios=(1.0, 2.0), augment=AugmentConfig(max_zoom=1.5))
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"learning_rate": 1.0})


def test_cosine_schedule() -> None:
    cfg = TrainConfig(lr=0.2)
    assert learning_rate(cfg, 0, 100) == pytest.approx(0.2)
    assert learning_rate(cfg, 50, 100) == pytest.approx(0.1)
    assert learning_rate(cfg, 100, 100) == pytest.approx(0.0)
    lrs = [learning_rate(cfg, s, 100) for s in range(101)]
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert learning_rate(TrainConfig(lr=0.2, lr_schedule="constant"), 70, 100) == 0.2


def test_mixed_precision_only_on_gpus_by_default() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype(TrainConfig(), cpu) is None
    assert autocast_dtype(TrainConfig(precision="bf16"), cpu) == torch.bfloat16
    assert autocast_dtype(TrainConfig(precision="fp16"), cpu) == torch.float16


@pytest.mark.parametrize("size", [512, 224, 100])
def test_group_sizes(size: int) -> None:
    groups = AspectGroups(size, DEFAULT_ASPECT_RATIOS)
    for g, ratio in enumerate(DEFAULT_ASPECT_RATIOS):
        w, h = groups.size_of(g)
        assert w % 32 == 0 and h % 32 == 0
        assert max(w, h) == size // 32 * 32
        assert abs(math.log((w / h) / ratio)) < 0.35  # as close as a multiple of 32 allows
        assert (w >= h) == (ratio >= 1)


def test_group_of_is_the_nearest_ratio_in_log_space() -> None:
    groups = AspectGroups(512, (0.5, 1.0, 2.0))
    assert groups.group_of(100, 100) == 1
    assert groups.group_of(400, 200) == 2
    assert groups.group_of(200, 400) == 0
    # 1.41 is the geometric midpoint of 1 and 2: just below goes to 1:1, just above to 2:1.
    assert groups.group_of(140, 100) == 1
    assert groups.group_of(142, 100) == 2
    with pytest.raises(ValueError):
        groups.group_of(0, 10)


def gradient_image(w: int, h: int) -> Image.Image:
    xx, yy = np.meshgrid(np.linspace(0, 255, w), np.linspace(0, 255, h))
    return Image.fromarray(np.stack([xx, yy, 255 - xx], -1).astype(np.uint8))


NEUTRAL = AugmentDraw(
    zoom=1.0, crop_x=0.5, crop_y=0.5, brightness=1.0, contrast=1.0, saturation=1.0
)


def test_zoom_one_on_a_matching_aspect_is_a_plain_resize() -> None:
    img = gradient_image(200, 100)
    got = scale_and_crop(img, (64, 32), NEUTRAL)
    want = img.resize((64, 32), Image.Resampling.BILINEAR)
    assert np.abs(np.asarray(got, np.int16) - np.asarray(want, np.int16)).max() <= 1


def test_crop_covers_the_target_and_offsets_follow_the_draw() -> None:
    img = gradient_image(300, 100)  # 3:1 into a 1:1 group: only a window survives
    left = scale_and_crop(img, (64, 64), AugmentDraw(1.0, 0.0, 0.5, 1, 1, 1))
    right = scale_and_crop(img, (64, 64), AugmentDraw(1.0, 1.0, 0.5, 1, 1, 1))
    assert left.size == right.size == (64, 64)
    red = lambda im: np.asarray(im)[..., 0].mean()  # noqa: E731 - red grows left to right
    assert red(left) < 60 and red(right) > 195
    zoomed = scale_and_crop(img, (64, 64), AugmentDraw(2.0, 0.0, 0.0, 1, 1, 1))
    assert np.asarray(zoomed)[..., 1].max() < 140  # the top half only: green grows downwards


def test_illumination() -> None:
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(illuminate(x.clone(), torch.ones(2, 3)), x)
    darker = illuminate(x.clone(), torch.tensor([[0.5, 1, 1], [1, 1, 1]]))
    torch.testing.assert_close(darker, torch.stack([x[0] * 0.5, x[1]]))
    flat = illuminate(x.clone(), torch.tensor([[1.0, 0.0, 1.0], [1, 1, 0]]))
    torch.testing.assert_close(flat[0], grayscale(x[0]).mean().expand(3, 8, 8))  # contrast 0
    torch.testing.assert_close(flat[1, 0], flat[1, 1])  # saturation 0: no colour left


def test_draws_stay_in_range_and_augment_is_deterministic() -> None:
    cfg = AugmentConfig(max_zoom=1.3, brightness=0.2, contrast=0.1, saturation=0.3)
    rng = np.random.default_rng(0)
    draws = [draw(rng, cfg) for _ in range(500)]
    assert all(1.0 <= d.zoom <= 1.3 and 0.8 <= d.brightness <= 1.2 for d in draws)
    assert all(0.9 <= d.contrast <= 1.1 and 0.7 <= d.saturation <= 1.3 for d in draws)
    img = gradient_image(120, 90)
    a = augment(img, (96, 64), draws[0])
    assert a.shape == (3, 64, 96) and a.dtype == torch.float32
    torch.testing.assert_close(a, augment(img, (96, 64), draws[0]), rtol=0, atol=0)
    assert not torch.equal(a, augment(img, (96, 64), draws[1]))


def test_bad_augment_config_is_refused() -> None:
    with pytest.raises(ValueError):
        AugmentConfig(max_zoom=0.9)
    with pytest.raises(ValueError):
        AugmentConfig(brightness=1.0)
