"""Training batches: disjoint worker splits, group-size batches, bad samples left out, and
the property resumption rests on: steps a..b of an epoch are the same batches whether or not
the steps before them were decoded."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from glam.groups import AspectGroups
from glam.recipe import AugmentConfig
from pipeline.datasets.synthetic import class_samples, encode, image
from pipeline.datasets.train_manifest import load_dataset
from pipeline.io.shard_writer import write_sharded
from pipeline.train.data import LoaderConfig, TrainLoader, header_size, worker_shards

GROUPS = AspectGroups(64, (0.75, 1.0, 4 / 3))


def config(**kw: object) -> LoaderConfig:
    base = {
        "batch_size": 4,
        "groups": GROUPS,
        "augment": AugmentConfig(),
        "num_classes": 3,
        "max_pixels": 10**7,
        "shuffle_buffer": 8,
    }
    return LoaderConfig(**{**base, **kw})  # type: ignore[arg-type]


@pytest.fixture
def labelled(tmp_path: Path) -> list[str]:
    samples = [
        (key, {"jpg": data, "cls": str(label).encode()})
        for key, label, data in class_samples(3, 8, seed=1)
    ]
    np.random.default_rng(0).shuffle(samples)  # type: ignore[arg-type]
    n = write_sharded(str(tmp_path / "shards"), samples, 6)
    assert n == 24
    return sorted(str(p) for p in (tmp_path / "shards").glob("*.tar"))


def test_worker_shards_are_disjoint_cover_all_and_change_per_epoch() -> None:
    shards = [f"s{i}" for i in range(7)]
    for epoch in range(3):
        splits = [worker_shards(shards, epoch, r, 3, seed=5) for r in range(3)]
        flat = list(itertools.chain(*splits))
        assert sorted(flat) == shards and len(flat) == len(set(flat))
        assert splits == [worker_shards(shards, epoch, r, 3, seed=5) for r in range(3)]
    assert worker_shards(shards, 0, 0, 3, 5) != worker_shards(shards, 1, 0, 3, 5)
    with pytest.raises(ValueError, match="cannot be split"):
        worker_shards(shards[:2], 0, 0, 3, 5)


def test_batches_are_one_group_and_labels_match_the_samples(labelled: list[str]) -> None:
    loader = TrainLoader(labelled, 0, 1, seed=0, config=config())
    truth = {key: label for key, label, _ in class_samples(3, 8, seed=1)}
    for batch in loader.batches(epoch=0, start=0, stop=8):
        assert batch.images.shape[0] == 4 and batch.images.shape[2:] in {
            (h, w) for w, h in (GROUPS.size_of(g) for g in range(3))
        }
        assert batch.labels.tolist() == [truth[k] for k in batch.keys]


def test_resumed_steps_equal_the_uninterrupted_ones(labelled: list[str]) -> None:
    loader = TrainLoader(labelled, 1, 2, seed=3, config=config(batch_size=2))
    whole = list(loader.batches(epoch=2, start=0, stop=7))
    resumed = list(TrainLoader(labelled, 1, 2, 3, config(batch_size=2)).batches(2, 4, 7))
    assert [b.step for b in resumed] == [4, 5, 6]
    for a, b in zip(whole[4:], resumed, strict=True):
        assert a.keys == b.keys
        torch.testing.assert_close(a.images, b.images, rtol=0, atol=0)
    # Another epoch or seed gives other batches.
    other = list(TrainLoader(labelled, 1, 2, 4, config(batch_size=2)).batches(2, 0, 7))
    assert [b.keys for b in other] != [b.keys for b in whole]


def test_the_split_cycles_when_an_epoch_needs_more_samples(labelled: list[str]) -> None:
    # 4 shards x 6 samples over 2 workers: 12 each, but 10 steps of 4 need 40.
    batches = list(TrainLoader(labelled, 0, 2, 0, config()).batches(0, 0, 10))
    assert len(batches) == 10


def test_bad_samples_are_left_out_or_replaced(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = [(f"ok{i}", {"jpg": encode(image(rng, 64, 64)), "cls": b"1"}) for i in range(6)]
    full = encode(image(rng, 64, 64))
    bad = [
        ("nolabel", {"jpg": full}),
        ("badlabel", {"jpg": full, "cls": b"seven"}),
        ("outofrange", {"jpg": full, "cls": b"3"}),
        ("noimage", {"cls": b"1"}),
        ("garbage", {"jpg": b"not an image", "cls": b"1"}),
        ("truncated", {"jpg": full[: len(full) // 2], "cls": b"1"}),  # header fine, pixels not
    ]
    write_sharded(str(tmp_path), bad + good, 100)
    loader = TrainLoader([str(tmp_path / "000000.tar")], 0, 1, 0, config(shuffle_buffer=0))
    batches = list(loader.batches(0, 0, 1))  # 4 samples: the first pass over the shard
    keys = set(itertools.chain(*(b.keys for b in batches)))
    assert keys <= {"truncated", *(k for k, _ in good)}
    assert "truncated" not in keys  # replaced by a good sample of its batch
    assert sum(b.replaced for b in batches) == 1
    counts = loader.skipped.counts
    assert counts["bad_label"] == 3 and counts["bad_image"] == 2 and counts["undecodable"] == 1


def test_header_size_applies_exif_rotation() -> None:
    img = image(np.random.default_rng(0), 80, 40)
    exif = img.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: displayed as 40 x 80
    rotated = encode(img, exif=exif.tobytes())
    assert header_size(rotated, 10**7) == (40, 80)
    assert header_size(encode(img), 10**7) == (80, 40)
    assert header_size(encode(img), 1000) is None  # over the pixel limit
    assert header_size(b"junk", 10**7) is None


def test_dataset_from_manifest_or_flags(tmp_path: Path) -> None:
    write_sharded(str(tmp_path), [(f"k{i}", {"cls": b"0"}) for i in range(3)], 1)
    pattern = str(tmp_path / "{000000..000002}.tar")
    with pytest.raises(ValueError, match="--num-classes"):
        load_dataset(pattern)
    ds = load_dataset(pattern, num_classes=4, num_samples=3)
    assert (len(ds.shards), ds.num_classes, ds.num_samples) == (3, 4, 3)


def test_skipped_samples_reach_the_reported_metrics(tmp_path: Path) -> None:
    """The loader's counts travel in every log point (and so into _train.json and the log)."""
    from pipeline.train.progress import LogPoint, describe
    from pipeline.train.worker import Meter

    rng = np.random.default_rng(0)
    good = [(f"ok{i}", {"jpg": encode(image(rng, 64, 64)), "cls": b"1"}) for i in range(6)]
    write_sharded(str(tmp_path), [("nolabel", {"jpg": good[0][1]["jpg"]}), *good], 100)
    loader = TrainLoader([str(tmp_path / "000000.tar")], 0, 1, 0, config(shuffle_buffer=0))
    list(loader.batches(0, 0, 1))
    meter = Meter(torch.device("cpu"))  # world of one: no process group needed
    point = meter.combine(step=1, epoch=0, lr=0.1, skipped=loader.skipped.counts)
    assert point.skipped == {"bad_label": 1}
    assert point.reported()["skipped_samples"] == 1
    assert describe(LogPoint(point), 10).endswith("; skipped bad_label 1")
