"""GLDv2-clean -> shuffled, labelled WebDataset training shards.

Input: ``train_clean.csv`` (``landmark_id,images`` with space-separated image ids; a per-image
table with ``id`` and ``landmark_id`` columns, like ``train.csv``, also works) and the images
folder of the download (``train/<a>/<b>/<c>/<id>.jpg``), local or on an object store.
Exclusion lists (CSV with a header) remove landmarks (a ``landmark_id`` column alone) or images
(an ``id``/``image_id`` column, or ``images`` as in ``train_clean.csv``) before the labels are
assigned: RGLDv2-clean (Song et al., CVPR 2024; dealicious-inc/RGLDv2-clean) removes the
landmarks that GLDv2-clean shares with Revisited Oxford and Paris.
Output: ``train-000000.tar``, ... (members ``jpg`` and ``cls``, the contiguous label), the label
map ``label_map.csv`` (label, landmark_id, images) and ``_dataset.json`` (shards, sample counts,
classes), written last: its presence means the dataset is complete.
"""

from __future__ import annotations

import csv
import io
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from hashlib import sha256

import numpy as np

from pipeline.datasets.train_manifest import DATASET_MANIFEST, FORMAT, LABEL_MAP
from pipeline.io.redact import redact_text
from pipeline.io.shard_writer import tar_bytes
from pipeline.io.storage import (
    check_output_folder,
    exists,
    filesystem,
    join,
    read_bytes,
    read_json,
    write_bytes_atomic,
    write_json_atomic,
)
from pipeline.runtime.progress import ProgressReporter

log = logging.getLogger(__name__)

PARAMS_FILE = "_prepare.json"


@dataclass(frozen=True)
class PrepareSpec:
    csv: str  # URI of train_clean.csv
    images: str  # URI of the folder holding <a>/<b>/<c>/<id>.jpg
    output: str  # URI of the shard folder
    shard_size: int = 1000  # samples per shard (~250 MB at GLDv2's image sizes)
    seed: int = 0
    # Missing image files are skipped and listed, up to this fraction of the dataset.
    max_missing_fraction: float = 0.01
    threads: int = 16  # concurrent image reads
    # URIs of exclusion lists (landmarks or images removed before labelling).
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_output_folder(self.output, self.images, "images")
        if self.shard_size <= 0 or self.threads <= 0:
            raise ValueError("shard_size and threads must be positive")
        if not 0.0 <= self.max_missing_fraction <= 1.0:
            raise ValueError("max_missing_fraction must be in [0, 1]")


def _landmark(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{where}: landmark_id {value!r} is not an integer") from None


def read_clean_csv(uri: str) -> list[tuple[str, int]]:
    """(image id, landmark id) pairs of a GLDv2 ``train_clean.csv`` (``landmark_id,images``),
    or of a per-image table with ``id`` and ``landmark_id`` columns, in file order."""
    text = read_bytes(uri).decode("utf-8")
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, None) or []]
    pairs: list[tuple[str, int]] = []
    if header[:2] == ["landmark_id", "images"]:
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2:
                raise ValueError(f"{uri}:{line_no}: expected 2 columns, got {len(row)}")
            landmark = _landmark(row[0], f"{uri}:{line_no}")
            pairs.extend((image_id, landmark) for image_id in row[1].split())
    elif "id" in header and "landmark_id" in header:
        i, lm = header.index("id"), header.index("landmark_id")
        for line_no, row in enumerate(reader, start=2):
            if row:
                pairs.append((row[i].strip(), _landmark(row[lm], f"{uri}:{line_no}")))
    else:
        raise ValueError(
            f"{uri}: expected the header 'landmark_id,images' (or columns id and landmark_id), "
            f"got {header}"
        )
    if not pairs:
        raise ValueError(f"{uri}: no images listed")
    ids = [p[0] for p in pairs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{uri}: some image ids are listed more than once")
    return pairs


@dataclass(frozen=True)
class Exclusion:
    """Landmarks and images to leave out, from one or more exclusion lists."""

    landmarks: frozenset[int] = frozenset()
    images: frozenset[str] = frozenset()

    def keeps(self, image_id: str, landmark: int) -> bool:
        return landmark not in self.landmarks and image_id not in self.images


def read_exclusion(uri: str) -> Exclusion:
    """An exclusion list: CSV with a header naming ``landmark_id`` (landmarks removed) or an
    image column (``id``, ``image_id``, or ``images`` with space-separated ids as in
    ``train_clean.csv``; images removed, whatever the landmark column says)."""
    text = read_bytes(uri).decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    header = [h.strip() for h in rows[0]] if rows else []
    body = [r for r in rows[1:] if r]
    image_col = next((c for c in ("id", "image_id", "images") if c in header), None)
    if image_col is not None:
        i = header.index(image_col)
        images = {image for r in body for image in r[i].split()}
        return Exclusion(images=frozenset(images))
    if "landmark_id" in header:
        i = header.index("landmark_id")
        landmarks = {_landmark(r[i], f"{uri}:{n}") for n, r in enumerate(body, start=2)}
        return Exclusion(landmarks=frozenset(landmarks))
    raise ValueError(
        f"{uri}: an exclusion list needs a header with landmark_id, or with id, image_id or "
        f"images; got {header}"
    )


def apply_exclusions(
    pairs: list[tuple[str, int]], uris: tuple[str, ...]
) -> tuple[list[tuple[str, int]], dict[str, object]]:
    """``pairs`` without the excluded landmarks and images, and what was removed."""
    if not uris:
        return pairs, {}
    lists = [read_exclusion(u) for u in uris]
    landmarks = frozenset().union(*(e.landmarks for e in lists))
    images = frozenset().union(*(e.images for e in lists))
    excluded = Exclusion(landmarks, images)
    kept = [(i, lm) for i, lm in pairs if excluded.keeps(i, lm)]
    before = {lm for _, lm in pairs}
    after = {lm for _, lm in kept}
    summary: dict[str, object] = {
        "lists": [redact_text(u) for u in uris],
        "images_removed": len(pairs) - len(kept),
        "landmarks_removed": len(before - after),
        "listed_but_absent": len(landmarks - before) + len(images - {i for i, _ in pairs}),
    }
    if not kept:
        raise ValueError("the exclusion lists remove every image")
    log.info(
        "exclusion lists remove %d images of %d landmarks entirely (%d listed ids not in the csv)",
        summary["images_removed"],
        summary["landmarks_removed"],
        summary["listed_but_absent"],
    )
    return kept, summary


def image_uri(images: str, image_id: str) -> str:
    """GLDv2's layout: the first three characters of the id name nested folders."""
    if len(image_id) < 3 or not image_id.isalnum():
        raise ValueError(f"image id {image_id!r} does not follow GLDv2's naming")
    return join(images, image_id[0], image_id[1], image_id[2], f"{image_id}.jpg")


def contiguous_labels(pairs: list[tuple[str, int]]) -> dict[int, int]:
    """Landmark id -> label 0..K-1 in increasing landmark id order."""
    return {lm: i for i, lm in enumerate(sorted({lm for _, lm in pairs}))}


def shard_name(index: int) -> str:
    return f"train-{index:06d}.tar"


def _read_or_none(uri: str) -> bytes | None:
    try:
        return read_bytes(uri)
    except FileNotFoundError:
        return None


def write_shard(
    spec: PrepareSpec, items: list[tuple[str, int]], name: str, pool: ThreadPoolExecutor
) -> tuple[int, list[str]]:
    """Write one shard of (image id, label); return (samples written, ids missing)."""
    datas = list(pool.map(lambda item: _read_or_none(image_uri(spec.images, item[0])), items))
    missing = [image_id for (image_id, _), d in zip(items, datas, strict=True) if d is None]
    samples = [
        (image_id, {"jpg": data, "cls": str(label).encode()})
        for (image_id, label), data in zip(items, datas, strict=True)
        if data is not None
    ]
    write_bytes_atomic(join(spec.output, name), tar_bytes(iter(samples)))
    return len(samples), missing


def prepare(spec: PrepareSpec) -> dict[str, object]:
    """Write the shards, label map and manifest; resumable (finished shards are kept) and
    idempotent (a complete dataset with the same parameters is left as it is)."""
    # What decides the shards' content (not where they go, nor how fast or how tolerant).
    ignored = ("output", "threads", "max_missing_fraction", "exclude")
    params = {k: v for k, v in asdict(spec).items() if k not in ignored}
    if spec.exclude:  # what the lists hold decides the shards, not where they are
        params["exclude_sha256"] = [sha256(read_bytes(u)).hexdigest() for u in spec.exclude]
    manifest_uri = join(spec.output, DATASET_MANIFEST)
    existing = read_json(manifest_uri)
    if existing is not None:
        if existing.get("params") != params:
            raise ValueError(
                f"{spec.output} holds a dataset prepared with {existing.get('params')}; "
                "use another --output"
            )
        log.info("%s is complete already: nothing to do", spec.output)
        return dict(existing)
    started = read_json(join(spec.output, PARAMS_FILE))
    if started is not None and started != params:
        raise ValueError(
            f"{spec.output} holds shards of an unfinished run with {started}; use another --output"
        )
    write_json_atomic(join(spec.output, PARAMS_FILE), params)

    pairs, excluded = apply_exclusions(read_clean_csv(spec.csv), spec.exclude)
    label_of = contiguous_labels(pairs)
    order = np.random.default_rng(spec.seed).permutation(len(pairs))
    items = [(pairs[i][0], label_of[pairs[i][1]]) for i in order]
    chunks = [items[i : i + spec.shard_size] for i in range(0, len(items), spec.shard_size)]
    log.info("%d images of %d landmarks -> %d shards", len(items), len(label_of), len(chunks))

    counts: dict[str, int] = {}
    missing: list[str] = []
    progress = ProgressReporter(len(chunks))  # a bar on a terminal, periodic log lines otherwise
    with ThreadPoolExecutor(spec.threads, thread_name_prefix="gldv2-read") as pool:
        for index, chunk in enumerate(chunks):
            name = shard_name(index)
            if exists(join(spec.output, name)):  # a finished shard of an interrupted run
                written, lost = _count_existing(spec, name, chunk)
            else:
                written, lost = write_shard(spec, chunk, name, pool)
            counts[name] = written
            missing.extend(lost)
            if len(missing) > spec.max_missing_fraction * len(items):
                raise ValueError(
                    f"{len(missing)} of {len(items)} images are missing under {spec.images} "
                    f"(first: {image_uri(spec.images, missing[0])}); is --images right?"
                )
            progress.update(written, len(lost))
    progress.close()

    per_label = np.bincount([label for _, label in items], minlength=len(label_of))
    rows = ["label,landmark_id,images"]
    rows += [f"{label},{lm},{per_label[label]}" for lm, label in sorted(label_of.items())]
    write_bytes_atomic(join(spec.output, LABEL_MAP), ("\n".join(rows) + "\n").encode())
    if missing:
        write_bytes_atomic(join(spec.output, "missing.txt"), ("\n".join(missing) + "\n").encode())
    manifest = {
        "format": FORMAT,
        "params": params,
        "num_classes": len(label_of),
        "num_samples": sum(counts.values()),
        "shards": counts,
        "missing": len(missing),
        "label_map": LABEL_MAP,
    }
    if excluded:
        manifest["excluded"] = excluded
    write_json_atomic(manifest_uri, manifest)
    log.info(
        "wrote %d samples in %d shards to %s (%d missing)",
        manifest["num_samples"],
        len(counts),
        spec.output,
        len(missing),
    )
    return manifest


def _count_existing(
    spec: PrepareSpec, name: str, chunk: list[tuple[str, int]]
) -> tuple[int, list[str]]:
    """Samples and missing ids of a shard written by an interrupted run (from its tar index)."""
    from pipeline.io.shard_reader import iter_shard

    keys = {raw.key for raw in iter_shard(join(spec.output, name))}
    return len(keys), [image_id for image_id, _ in chunk if image_id not in keys]


def load_label_map(folder: str) -> dict[int, int]:
    """label -> GLDv2 landmark id, from a prepared dataset's ``label_map.csv``."""
    fs, path = filesystem(join(folder, LABEL_MAP))
    with fs.open(path, "rt") as f:
        return {int(r["label"]): int(r["landmark_id"]) for r in csv.DictReader(f)}
