"""Run records: the software versions and timestamps a job records, and the one fingerprint
check that keeps outputs of different models or configurations apart (extraction outputs,
training run folders, index inputs)."""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any


class OutputMismatchError(ValueError):
    """An output holds work of another model or configuration than the one asked for."""


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def versions() -> dict[str, str]:
    """The versions of what decides a job's results, recorded beside them."""
    import pyarrow
    import ray
    import torch
    import webdataset

    import glam

    return {
        "glam-pipeline": glam.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": importlib.metadata.version("torchvision"),  # no import: seconds
        "ray": ray.__version__,
        "pyarrow": pyarrow.__version__,
        "webdataset": getattr(webdataset, "__version__", "unknown"),
    }


def differing_keys(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two fingerprints, sorted."""
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def check_fingerprint(
    what: str,
    stored: Mapping[str, Any] | None,
    expected: Mapping[str, Any],
    remedy: str = "use a new --output",
) -> None:
    """Refuse to add to ``what`` (an output, a shard, an index) when the fingerprint stored
    there is not ``expected``; nothing stored yet is fine."""
    if stored is None or dict(stored) == dict(expected):
        return
    diff = differing_keys(stored, expected)
    raise OutputMismatchError(
        f"{what} was made by a different model or configuration "
        f"(differs in: {', '.join(diff) or 'format'}); {remedy}"
    )
