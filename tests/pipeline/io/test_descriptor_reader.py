from __future__ import annotations

import numpy as np
import pytest

from pipeline.io.descriptor_reader import read_descriptors
from tests.support.descriptors import unit, write_descriptor_file


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_descriptors_are_refused_naming_the_file_and_key(tmp_path, bad) -> None:
    x = unit(np.random.default_rng(0).normal(size=(6, 8))).astype(np.float32)
    x[4, 2] = bad
    uri = str(tmp_path / "descriptors" / "000000.parquet")
    write_descriptor_file(uri, [f"k{i}" for i in range(6)], x)
    with pytest.raises(
        ValueError, match=r"000000\.parquet: 1 descriptors hold NaN or infinite.*'k4'"
    ):
        read_descriptors(str(tmp_path))


def test_a_ray_task_failure_is_reported_by_its_cause_without_colours(capsys) -> None:
    from ray.exceptions import RayTaskError

    from jobs._cli import run_main

    cause = RuntimeError("Error: 'nx >= k' failed: please provide at least as many points")
    wrapped = RayTaskError("train_index", "\x1b[36mray::train_index()\x1b[39m (pid=1)", cause)

    def fails() -> int:
        raise wrapped.as_instanceof_cause()

    assert run_main(fails) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"error: RuntimeError: {cause}"


def test_a_local_file_replaced_keeping_its_size_and_mtime_is_seen_as_changed(tmp_path) -> None:
    """``cp -p`` / ``rsync -a`` of other descriptors of the same size over a file keep its
    size and mtime; the version tag still changes (an index rebuild must not say up to
    date)."""
    import os
    import shutil

    from pipeline.io.descriptor_reader import list_descriptor_files

    rng = np.random.default_rng(1)
    keys = [f"k{i}" for i in range(6)]
    uri = tmp_path / "data" / "descriptors" / "000000.parquet"
    x = unit(rng.normal(size=(6, 8))).astype(np.float32)
    other = tmp_path / "other.parquet"
    write_descriptor_file(str(uri), keys, x[::-1].copy())  # other rows for the same keys
    os.replace(uri, other)
    write_descriptor_file(str(uri), keys, x)
    (before,) = list_descriptor_files(str(tmp_path / "data"))
    assert other.stat().st_size == uri.stat().st_size
    stat = uri.stat()
    shutil.copy2(other, uri)  # cp -p: content replaced in place ...
    os.utime(uri, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # ... mtime kept
    (after,) = list_descriptor_files(str(tmp_path / "data"))
    assert (after.size, uri.stat().st_mtime_ns) == (before.size, stat.st_mtime_ns)
    assert after.etag != before.etag


@pytest.mark.parametrize(
    "change", [{"jpeg_draft": False}, {"max_pixels": 1000}, {"resize": "lanczos-shrink"}]
)
def test_files_decoded_under_other_settings_are_not_mixed(tmp_path, change) -> None:
    """The pixel limit, the draft decode and the resize filter change descriptors (and which
    samples error): files that differ in them are refused together, as other configurations
    are."""
    from pipeline.extract.spec import ExtractionSpec, fingerprint
    from pipeline.io.descriptor_reader import check_same_model, list_descriptor_files
    from pipeline.io.descriptor_writer import descriptor_table, file_metadata, parquet_bytes
    from pipeline.io.storage import write_bytes_atomic

    x = unit(np.random.default_rng(2).normal(size=(3, 8))).astype(np.float32)
    cfg = {"backbone": "resnet101", "dim": 8}
    for name, spec in (("000000", ExtractionSpec()), ("000001", ExtractionSpec(**change))):
        meta = file_metadata(fingerprint(spec, cfg, "a" * 64), "test")
        uri = str(tmp_path / "descriptors" / f"{name}.parquet")
        table = descriptor_table(["a", "b", "c"], uri, x, [1] * 3, [1] * 3, meta)
        write_bytes_atomic(uri, parquet_bytes(table))
    with pytest.raises(ValueError, match=f"differ in: {next(iter(change))}"):
        check_same_model(list_descriptor_files(str(tmp_path)))


def test_files_written_before_the_resize_key_mix_with_bilinear_ones(tmp_path) -> None:
    """A file without ``resize`` in its metadata was resized bilinearly (the only filter then):
    it mixes with new bilinear files and is refused beside lanczos-shrink ones."""
    from pipeline.extract.spec import ExtractionSpec, fingerprint
    from pipeline.io.descriptor_reader import check_same_model, list_descriptor_files
    from pipeline.io.descriptor_writer import descriptor_table, file_metadata, parquet_bytes
    from pipeline.io.storage import write_bytes_atomic

    x = unit(np.random.default_rng(3).normal(size=(3, 8))).astype(np.float32)
    cfg = {"backbone": "resnet101", "dim": 8}

    def write(folder: str, name: str, spec: ExtractionSpec, old: bool = False) -> None:
        meta = file_metadata(fingerprint(spec, cfg, "a" * 64), "test")
        if old:
            del meta[b"resize"]
        uri = str(tmp_path / folder / "descriptors" / f"{name}.parquet")
        table = descriptor_table(["a", "b", "c"], uri, x, [1] * 3, [1] * 3, meta)
        write_bytes_atomic(uri, parquet_bytes(table))

    write("same", "000000", ExtractionSpec(), old=True)
    write("same", "000001", ExtractionSpec())
    check_same_model(list_descriptor_files(str(tmp_path / "same")))
    write("other", "000000", ExtractionSpec(), old=True)
    write("other", "000001", ExtractionSpec(resize="lanczos-shrink"))
    with pytest.raises(ValueError, match="differ in: resize"):
        check_same_model(list_descriptor_files(str(tmp_path / "other")))


def test_a_stored_fingerprint_is_completed_with_the_keys_added_since() -> None:
    """Outputs written before ``resize`` and ``query_crop_scale`` existed were made bilinearly
    with crops sized like any image: a stored fingerprint without them reads as such."""
    from pipeline.extract.spec import ExtractionSpec, fingerprint, stored_fingerprint

    now = fingerprint(ExtractionSpec(query_crop_scale="crop"), {"dim": 8}, "a" * 64)
    before = {k: v for k, v in now.items() if k not in ("resize", "query_crop_scale")}
    assert stored_fingerprint(before) == now
    assert stored_fingerprint({}) == {}
    lanczos = fingerprint(ExtractionSpec(resize="lanczos-shrink"), {"dim": 8}, "a" * 64)
    assert stored_fingerprint(lanczos) == lanczos
