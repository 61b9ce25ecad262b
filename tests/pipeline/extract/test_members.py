"""Every image member of a shard's samples ends in exactly one row of the shard's two files
(the worker end to end on a local tar shard, read back with pyarrow)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.datasets.synthetic import encode, image
from pipeline.extract.spec import ExtractionSpec
from pipeline.extract.worker import ShardWorker
from pipeline.io.layout import descriptors_uri, errors_uri
from pipeline.io.storage import write_bytes_atomic
from tests.support.extraction import IMAGE_SIZE
from tests.support.tars import tar_of

SPEC = ExtractionSpec(image_size=IMAGE_SIZE, batch_size=2, decode_workers=2, retry_backoff_s=0.0)


@pytest.fixture(scope="module")
def worker() -> Iterator[ShardWorker]:
    w = ShardWorker(SPEC, device="cpu", name="members")
    yield w
    w.close()


def test_every_image_member_lands_in_exactly_one_row(worker: ShardWorker, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)

    def jpeg(w: int, h: int) -> bytes:
        return encode(image(rng, w, h))

    members = [
        ("photo.2023.jpg", jpeg(80, 60)),  # two image members: one sample ``photo``
        ("photo.2024.jpg", jpeg(60, 80)),
        ("x.jpg", rng.bytes(2000)),  # corrupt, next to a valid PNG
        ("x.png", encode(image(rng, 72, 48), "PNG")),
        ("x.cls", b"3"),
        ("y.jpg", rng.bytes(2000)),  # no member decodes: one row for ``y``
        ("y.png", b""),
        ("z.jpg", jpeg(64, 64)),
        ("n.cls", b"1"),  # no image member at all
    ]
    shard = str(tmp_path / "000000.tar")
    write_bytes_atomic(shard, tar_of(*members))
    out = str(tmp_path / "run")
    stats = worker.process(shard, out)

    descriptors = pq.read_table(descriptors_uri(out, "000000")).to_pylist()
    errors = pq.read_table(errors_uri(out, "000000")).to_pylist()
    assert [(r["key"], r["width"], r["height"]) for r in descriptors] == [
        ("photo", 80, 60),  # the first image member gives the descriptor
        ("x", 72, 48),  # the PNG's, not an error row for ``x``
        ("z", 64, 64),
    ]
    assert [(r["key"], r["error"]) for r in errors] == [
        ("photo.2024.jpg", "extra_image"),
        ("x.jpg", "undecodable"),
        ("y", "undecodable"),
        ("n", "missing_image"),
    ]
    (y,) = (r for r in errors if r["key"] == "y")
    assert "jpg: undecodable" in y["message"] and "png: empty" in y["message"]
    # Each image member in one row: its sample's descriptor row, a row of its own, or (when no
    # member of its sample decoded) its sample's one error row; and no row for nothing.
    rows = Counter(r["key"] for r in descriptors + errors)
    assert set(rows.values()) == {1}
    row_of = {
        "photo.2023.jpg": "photo",
        "photo.2024.jpg": "photo.2024.jpg",
        "x.jpg": "x.jpg",
        "x.png": "x",
        "y.jpg": "y",
        "y.png": "y",
        "z.jpg": "z",
    }
    assert sorted(row_of) == sorted(name for name, _ in members if not name.endswith(".cls"))
    assert set(rows) == {*row_of.values(), "n"}
    assert (stats.ok, stats.errors, stats.samples) == (3, 4, 7)
    assert stats.errors_by_type == {"extra_image": 1, "undecodable": 2, "missing_image": 1}
