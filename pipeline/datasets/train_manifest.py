"""The training dataset: its shards, sample count and class count, from the ``_dataset.json``
that ``jobs/prepare_gldv2.py`` writes beside the shards, or from flags for other shards."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.io.shards import list_shards
from pipeline.io.storage import join, read_json

DATASET_MANIFEST = "_dataset.json"
LABEL_MAP = "label_map.csv"
FORMAT = "glam-train-shards/1"


@dataclass(frozen=True)
class TrainDataset:
    shards: tuple[str, ...]
    num_classes: int
    num_samples: int


def load_dataset(
    pattern: str, num_classes: int | None = None, num_samples: int | None = None
) -> TrainDataset:
    """The shards of ``pattern`` with their class and sample counts: from the manifest in the
    shards' folder, or from the arguments (which override it)."""
    shards = list_shards(pattern)
    folder = shards[0].rsplit("/", 1)[0]
    manifest = read_json(join(folder, DATASET_MANIFEST))
    if manifest is not None:
        if manifest.get("format") != FORMAT:
            raise ValueError(f"{folder}/{DATASET_MANIFEST} is not a {FORMAT} manifest")
        counts = manifest["shards"]
        unknown = [s for s in shards if s.rsplit("/", 1)[1] not in counts]
        if unknown and num_samples is None:
            raise ValueError(f"{unknown[0]} is not in {folder}/{DATASET_MANIFEST}")
        if num_samples is None:
            num_samples = sum(int(counts[s.rsplit("/", 1)[1]]) for s in shards)
        if num_classes is None:
            num_classes = int(manifest["num_classes"])
    if num_classes is None or num_samples is None:
        raise ValueError(
            f"no {DATASET_MANIFEST} beside the shards in {folder}: pass --num-classes and "
            "--samples-per-epoch"
        )
    if num_classes <= 0 or num_samples <= 0:
        raise ValueError(f"need classes and samples, got {num_classes} and {num_samples}")
    return TrainDataset(tuple(shards), num_classes, num_samples)
