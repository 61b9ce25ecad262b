"""revisitop ground-truth files (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``): the database
and query image lists and, per query, its bounding box and easy / hard / junk images. Loaded
with a restricted unpickler: a ground-truth file cannot run code."""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.io.storage import read_bytes

KINDS = ("easy", "hard", "junk")

_SAFE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _GndUnpickler(pickle.Unpickler):
    """Plain containers and numpy arrays only: a ground-truth file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing {module}.{name} in a ground-truth file")


@dataclass(frozen=True)
class QueryTruth:
    """One query's ground truth: database indices by kind, and its bounding box."""

    easy: np.ndarray  # int64 indices into imlist
    hard: np.ndarray
    junk: np.ndarray
    bbx: tuple[float, float, float, float] | None  # (x1, y1, x2, y2) in the query image

    def as_dict(self) -> dict[str, Any]:
        """revisitop's own form (``easy``, ``hard``, ``junk``), for the protocol."""
        return {"easy": self.easy, "hard": self.hard, "junk": self.junk}


@dataclass(frozen=True)
class GroundTruth:
    imlist: list[str]  # database image names
    qimlist: list[str]  # query image names, one per entry of ``queries``
    queries: list[QueryTruth]

    @property
    def gnd(self) -> list[dict[str, Any]]:
        return [q.as_dict() for q in self.queries]


def _indices(value: Any, n: int, what: str) -> np.ndarray:
    try:
        arr = np.asarray(value if value is not None else [], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{what} is not a list of image indices") from None
    if arr.size and (not np.all(arr == np.round(arr)) or arr.min() < 0 or arr.max() >= n):
        bad = [int(v) if v == round(v) else v for v in arr if not (0 <= v < n and v == round(v))]
        raise ValueError(f"{what} names images outside the {n} of imlist: {bad[:5]}")
    return arr.astype(np.int64)


def load_gnd(uri: str) -> GroundTruth:
    """A revisitop ground truth (``gnd_roxford5k.pkl`` format: imlist, qimlist, gnd), checked:
    one gnd entry per query, every index inside imlist."""
    try:
        cfg = _GndUnpickler(io.BytesIO(read_bytes(uri)), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise ValueError(f"{uri} is not a revisitop ground-truth pickle: {e}") from e
    if not isinstance(cfg, dict):
        raise ValueError(f"{uri} is not a revisitop ground-truth file (no dict inside)")
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in cfg]
    if missing:
        raise ValueError(f"{uri} lacks {missing}: not a revisitop ground-truth file")
    imlist, qimlist, entries = list(cfg["imlist"]), list(cfg["qimlist"]), list(cfg["gnd"])
    if len(entries) != len(qimlist):
        raise ValueError(
            f"{uri} has {len(entries)} gnd entries for {len(qimlist)} queries in qimlist: "
            "every query needs one (a truncated or mismatched file?)"
        )
    queries = []
    for q, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"{uri}: gnd entry {q} is not a dict")
        what = f"{uri}: gnd entry {q} ({qimlist[q]})"
        kinds = {k: _indices(entry.get(k), len(imlist), f"{what} '{k}'") for k in KINDS}
        bbx = entry.get("bbx")
        box = None
        if bbx is not None:
            values = np.asarray(bbx, dtype=np.float64).reshape(-1)
            if values.size != 4:
                raise ValueError(f"{what}: bbx must be 4 numbers, got {values.size}")
            box = (float(values[0]), float(values[1]), float(values[2]), float(values[3]))
        queries.append(QueryTruth(kinds["easy"], kinds["hard"], kinds["junk"], box))
    return GroundTruth([str(n) for n in imlist], [str(n) for n in qimlist], queries)
