"""Training batches from labelled WebDataset shards: each worker streams its own split of the
shards, shuffles through a buffer, forms group-size batches (one aspect-ratio group each) and
decodes + augments them on a thread pool ahead of the model.

Everything is a function of (seed, epoch, rank, step): a resumed run rebuilds the epoch's
batch plan from the start, skips the steps already done without decoding them, and then sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import io
import itertools
import logging
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from glam.augment import AugmentDraw, crop_uint8, draw, illumination_factors
from glam.groups import AspectGroups
from glam.preprocess import ImageDecodeError, decode_image, to_rgb
from glam.recipe import AugmentConfig
from pipeline.io.shard_reader import RawSample, iter_shard
from pipeline.runtime.producer import Producer

log = logging.getLogger(__name__)

LABEL_MEMBERS = ("cls", "label", "class")
# EXIF orientations that swap width and height (rotated by 90 or 270 degrees).
_TRANSPOSED_ORIENTATIONS = {5, 6, 7, 8}


@dataclass(frozen=True)
class TrainSample:
    key: str
    label: int
    data: bytes  # the encoded image
    width: int  # displayed size (EXIF orientation applied), read from the header only
    height: int


@dataclass(frozen=True)
class BatchPlan:
    """One step's samples, chosen before any pixel is decoded."""

    step: int  # 0-based step within the epoch
    group: int
    samples: tuple[TrainSample, ...]


@dataclass
class Batch:
    step: int
    # uint8 (B, 3, H, W) after scaling and cropping; glam.augment.photometric(images,
    # factors) on the training device finishes the augmentation and normalises.
    images: torch.Tensor
    factors: torch.Tensor  # (B, 3) illumination factors
    labels: torch.Tensor  # (B,) int64
    keys: list[str]
    # Samples that failed to decode, replaced by a copy of another sample of the batch.
    replaced: int = 0


@dataclass(frozen=True)
class LoaderConfig:
    batch_size: int  # per worker
    groups: AspectGroups
    augment: AugmentConfig
    num_classes: int
    max_pixels: int
    # NOTE: not in paper: shuffling beyond the prepared shards' global shuffle; a buffer of
    # encoded images (about 250 MB at GLDv2's ~250 kB per image).
    shuffle_buffer: int = 1000
    decode_threads: int = 2
    prefetch_batches: int = 4
    # Page-locked batches, so that the copy to a GPU overlaps with compute.
    pin_memory: bool = False

    def __post_init__(self) -> None:
        for name in ("batch_size", "num_classes", "max_pixels", "decode_threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.shuffle_buffer < 0 or self.prefetch_batches <= 0:
            raise ValueError("shuffle_buffer must be >= 0 and prefetch_batches > 0")


@dataclass
class SkipCounts:
    """Samples left out of training, by reason (logged, reported with the metrics)."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        self.counts[reason] += 1


def worker_shards(shards: list[str], epoch: int, rank: int, world: int, seed: int) -> list[str]:
    """This worker's shards for ``epoch``: all shards shuffled by (seed, epoch), every
    ``world``-th from position ``rank``, so the workers' splits are disjoint."""
    if world <= 0 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world}")
    if len(shards) < world:
        raise ValueError(f"{len(shards)} shards cannot be split over {world} workers")
    order = np.random.default_rng([seed, epoch]).permutation(len(shards))
    return [shards[i] for i in order[rank::world]]


def parse_label(raw: RawSample) -> int | None:
    for name in LABEL_MEMBERS:
        if name in raw.members:
            try:
                return int(raw.members[name].decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                return None
    return None


def header_size(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """(W, H) as displayed, from the header alone; None when unreadable or over the limit."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112) if img.format in ("JPEG", "TIFF") else None
    except Exception:  # any parser failure means an unusable sample
        return None
    if w <= 0 or h <= 0 or w * h > max_pixels:
        return None
    return (h, w) if orientation in _TRANSPOSED_ORIENTATIONS else (w, h)


def labelled_samples(
    shards: list[str], config: LoaderConfig, rng: np.random.Generator, skipped: SkipCounts
) -> Iterator[TrainSample]:
    """Usable samples of ``shards``, cycling through them (reshuffled each pass) for ever."""
    for cycle in itertools.count():
        order = shards if cycle == 0 else [shards[i] for i in rng.permutation(len(shards))]
        for uri in order:
            for raw in iter_shard(uri):
                if raw.problem is not None:  # a member the reader could not use
                    skipped.add(raw.problem[0])
                    continue
                label = parse_label(raw)
                if label is None or not 0 <= label < config.num_classes:
                    skipped.add("bad_label")
                    continue
                data = raw.image_member()
                size = header_size(data, config.max_pixels) if data else None
                if data is None or size is None:
                    skipped.add("bad_image")
                    continue
                yield TrainSample(raw.key, label, data, *size)


def shuffled(
    items: Iterator[TrainSample], buffer_size: int, rng: np.random.Generator
) -> Iterator[TrainSample]:
    """A shuffle buffer: each item leaves from a random slot of the ``buffer_size`` held."""
    if buffer_size <= 1:
        yield from items
        return
    buffer: list[TrainSample] = []
    for item in items:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        j = int(rng.integers(buffer_size))
        yield buffer[j]
        buffer[j] = item
    for j in rng.permutation(len(buffer)):
        yield buffer[j]


def group_batches(
    samples: Iterator[TrainSample], groups: AspectGroups, batch_size: int
) -> Iterator[tuple[int, tuple[TrainSample, ...]]]:
    """Group-size sampling: a batch is yielded when its aspect-ratio group has filled up."""
    pending: dict[int, list[TrainSample]] = defaultdict(list)
    for s in samples:
        g = groups.group_of(s.width, s.height)
        pending[g].append(s)
        if len(pending[g]) == batch_size:
            yield g, tuple(pending.pop(g))


class TrainLoader:
    """The batches of one worker; deterministic in (seed, epoch, rank, step)."""

    def __init__(
        self, shards: list[str], rank: int, world: int, seed: int, config: LoaderConfig
    ) -> None:
        worker_shards(shards, 0, rank, world, seed)  # validates the split
        self.shards, self.rank, self.world, self.seed = shards, rank, world, seed
        self.config = config
        self.skipped = SkipCounts()

    def plans(self, epoch: int) -> Iterator[BatchPlan]:
        """The epoch's batch plans, without decoding any pixel; endless (the caller stops)."""
        cfg = self.config
        rng = np.random.default_rng([self.seed, epoch, self.rank, 1])
        mine = worker_shards(self.shards, epoch, self.rank, self.world, self.seed)
        stream = shuffled(labelled_samples(mine, cfg, rng, self.skipped), cfg.shuffle_buffer, rng)
        for step, (group, samples) in enumerate(group_batches(stream, cfg.groups, cfg.batch_size)):
            yield BatchPlan(step, group, samples)

    def materialise(self, plan: BatchPlan, epoch: int) -> Batch:
        """Decode, scale and crop a plan's images; runs on the decode threads."""
        size = self.config.groups.size_of(plan.group)
        rng = np.random.default_rng([self.seed, epoch, self.rank, plan.step, 2])
        draws = [draw(rng, self.config.augment) for _ in plan.samples]
        images: list[torch.Tensor | None] = [
            self._image(s, size, d) for s, d in zip(plan.samples, draws, strict=True)
        ]
        good = [i for i, x in enumerate(images) if x is not None]
        if not good:
            keys = ", ".join(s.key for s in plan.samples[:5])
            raise ValueError(f"no image of a batch could be decoded ({keys}, ...)")
        # NOTE: not in paper: a sample whose header parsed but whose pixels do not decode is
        # replaced by another sample of its batch, so every worker keeps the same step count.
        index = [i if x is not None else good[i % len(good)] for i, x in enumerate(images)]
        replaced = len(images) - len(good)
        if replaced:
            self.skipped.counts["undecodable"] += replaced
        stacked = torch.stack([images[i] for i in index])  # type: ignore[misc]
        return Batch(
            step=plan.step,
            images=stacked.pin_memory() if self.config.pin_memory else stacked,
            factors=illumination_factors([draws[i] for i in index]),
            labels=torch.tensor([plan.samples[i].label for i in index], dtype=torch.int64),
            keys=[plan.samples[i].key for i in index],
            replaced=replaced,
        )

    def _image(self, s: TrainSample, size: tuple[int, int], d: AugmentDraw) -> torch.Tensor | None:
        # Decode at the smallest JPEG scale that still covers the scaled image.
        scale = max(size[0] / s.width, size[1] / s.height) * d.zoom
        draft = (max(1, int(s.width * scale)), max(1, int(s.height * scale))) if scale < 1 else None
        try:
            img = to_rgb(decode_image(s.data, self.config.max_pixels, draft=draft))
            return crop_uint8(img, size, d)
        except (ImageDecodeError, ValueError, MemoryError) as e:
            log.warning("sample %s: %s", s.key, str(e)[:200])
            return None

    def batches(self, epoch: int, start: int, stop: int) -> Iterator[Batch]:
        """Steps ``start`` .. ``stop - 1`` of ``epoch``, decoded ahead on the thread pool."""
        if not 0 <= start <= stop:
            raise ValueError(f"bad step range {start}..{stop}")
        if start == stop:
            return
        pool = ThreadPoolExecutor(self.config.decode_threads, thread_name_prefix="decode")

        def submitted() -> Iterator[Future[Batch]]:
            for plan in itertools.islice(self.plans(epoch), start, stop):
                yield pool.submit(self.materialise, plan, epoch)

        planner = Producer(submitted, depth=self.config.prefetch_batches, name="batch-planner")
        try:
            for future in planner:
                yield future.result()
        finally:
            planner.close()
            pool.shutdown(wait=True, cancel_futures=True)
