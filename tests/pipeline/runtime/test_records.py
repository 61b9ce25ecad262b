"""The one fingerprint check that guards extraction outputs, run folders and indexes."""

from __future__ import annotations

import pytest

from pipeline.runtime.records import OutputMismatchError, check_fingerprint, versions

FP = {"model": "GLAM", "image_size": 1024, "scales": [1.0]}


def test_nothing_stored_or_the_same_fingerprint_passes() -> None:
    check_fingerprint("s3://b/run", None, FP)
    check_fingerprint("s3://b/run", dict(FP), FP)


def test_a_different_fingerprint_names_what_differs_and_the_remedy() -> None:
    with pytest.raises(OutputMismatchError) as e:
        check_fingerprint("s3://b/run", {**FP, "image_size": 512, "extra": 1}, FP)
    message = str(e.value)
    assert message.startswith("s3://b/run was made by a different model or configuration")
    assert "(differs in: extra, image_size)" in message and message.endswith("use a new --output")
    assert isinstance(e.value, ValueError)  # jobs print it as one line


def test_versions_name_the_software() -> None:
    assert {"glam-pipeline", "torch", "ray", "pyarrow"} <= set(versions())
