"""revisitop ground-truth files (``gnd_roxford5k.pkl``, ``gnd_rparis6k.pkl``): the database
and query image lists and, per query, its bounding box and easy / hard / junk images. Loaded
with a restricted unpickler: a ground-truth file cannot run code."""

from __future__ import annotations

import io
import pickle
from typing import Any

from pipeline.io.storage import read_bytes

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


def load_gnd(uri: str) -> dict[str, Any]:
    """A revisitop ground truth (``gnd_roxford5k.pkl`` format): imlist, qimlist, gnd."""
    try:
        cfg = _GndUnpickler(io.BytesIO(read_bytes(uri)), encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise ValueError(f"{uri} is not a revisitop ground-truth pickle: {e}") from e
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in cfg]
    if missing:
        raise ValueError(f"{uri} lacks {missing}: not a revisitop ground-truth file")
    return dict(cfg)
