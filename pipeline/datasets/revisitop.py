"""Revisitop data preparation: the download layout -> WebDataset shards for jobs/extract.py.

ROOT/roxford5k/jpg/<name>.jpg + ROOT/roxford5k/gnd_roxford5k.pkl (likewise rparis6k):
database images keyed by their ``imlist`` names, query crops (the ``bbx`` of each query, as
lossless PNG) keyed by their ``qimlist`` names, in separate shard folders.
ROOT/revisitop1m/: ``revisitop1m.N.tar.gz`` archives, or an extracted ``jpg/`` folder listed in
``revisitop1m.txt``: distractors keyed by their file name without extension.
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections.abc import Iterable, Iterator

from PIL import Image, PngImagePlugin

from pipeline.datasets.gnd import load_gnd
from pipeline.io.shard_reader import FULL_SIZE_TEXT
from pipeline.io.shard_writer import write_sharded
from pipeline.io.storage import exists, filesystem, join, read_bytes, unstrip

log = logging.getLogger(__name__)


def _crop_png(data: bytes, bbx: Iterable[float]) -> bytes:
    """The query's bounding box (x1, y1, x2, y2) of the image, as lossless PNG, with the full
    image's size in a text chunk (``FULL_SIZE_TEXT``): the protocol scales a query crop by
    the full image's factor (cirtorch: ``imsize * max(crop) / max(full)``), so extraction
    needs it."""
    x1, y1, x2, y2 = (float(v) for v in bbx)
    img = Image.open(io.BytesIO(data))
    img.load()
    info = PngImagePlugin.PngInfo()
    info.add_text(FULL_SIZE_TEXT, f"{img.size[0]}x{img.size[1]}")
    buf = io.BytesIO()
    img.crop((x1, y1, x2, y2)).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _box(name: str, bbx: tuple[float, float, float, float] | None) -> Iterable[float]:
    if bbx is None:
        raise ValueError(f"query {name} has no bbx in the ground truth: cannot crop it")
    return bbx


def prepare_dataset(root: str, dataset: str, output: str, shard_size: int = 1000) -> dict[str, int]:
    """Write OUTPUT/database/*.tar and OUTPUT/queries/*.tar for roxford5k or rparis6k."""
    base = join(root, dataset)
    truth = load_gnd(join(base, f"gnd_{dataset}.pkl"))
    image = lambda name: read_bytes(join(base, "jpg", f"{name}.jpg"))  # noqa: E731

    database = ((name, {"jpg": image(name)}) for name in truth.imlist)
    queries = (
        (name, {"png": _crop_png(image(name), _box(name, q.bbx))})
        for name, q in zip(truth.qimlist, truth.queries, strict=True)
    )
    n_db = write_sharded(join(output, "database"), database, shard_size)
    n_q = write_sharded(join(output, "queries"), queries, shard_size)
    log.info("%s: %d database images, %d query crops", dataset, n_db, n_q)
    return {"database": n_db, "queries": n_q}


def _distractor_samples(base: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    listing = join(base, "revisitop1m.txt")
    if exists(listing):
        for line in read_bytes(listing).decode().splitlines():
            name = line.strip()
            if name:
                key = name.rsplit(".", 1)[0]
                yield key, {"jpg": read_bytes(join(base, "jpg", name))}
        return
    fs, path = filesystem(base)
    archives = sorted(
        fs.glob(join(path, "revisitop1m.*.tar.gz")), key=lambda p: int(p.rsplit(".", 3)[-3])
    )
    if not archives:
        raise ValueError(f"{base} has neither revisitop1m.txt with jpg/ nor revisitop1m.N.tar.gz")
    for archive in archives:
        with fs.open(archive, "rb") as f, tarfile.open(fileobj=f, mode="r|gz") as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(".jpg"):
                    data = tar.extractfile(member)
                    if data is not None:
                        key = member.name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
                        yield key, {"jpg": data.read()}
        log.info("read %s", unstrip(fs, archive, base))


def prepare_distractors(root: str, output: str, shard_size: int = 1000) -> dict[str, int]:
    """Write OUTPUT/distractors/*.tar from ROOT/revisitop1m."""
    n = write_sharded(
        join(output, "distractors"), _distractor_samples(join(root, "revisitop1m")), shard_size
    )
    return {"distractors": n}
