"""Where search by image finds the index's model: the descriptors' Parquet metadata, else the
extraction's _job.json (outputs written before the location was recorded), else an error that
says what to pass. (The whole path, image to ranking, is in tests/test_worked_example.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.index.build_record import extraction_record
from pipeline.index.query_image import extraction_of, load_query_model
from pipeline.index.versions import IndexManifest
from pipeline.io.descriptor_reader import list_descriptor_files
from pipeline.io.storage import write_json_atomic
from tests.support.descriptors import unit, write_descriptor_file


def folder_with_descriptors(root: str) -> str:
    write_descriptor_file(f"{root}/descriptors/part-0.parquet", ["a", "b"], unit(np.eye(2, 32)))
    return root


def test_weights_from_the_extraction_record_when_the_parquet_has_none(tmp_path) -> None:
    root = folder_with_descriptors(str(tmp_path / "run"))
    write_json_atomic(
        f"{root}/_job.json", {"config": {"weights": "s3://b/glam.safetensors", "seed": 7}}
    )
    record = extraction_record(root, list_descriptor_files(f"{root}/descriptors"))
    assert record is not None
    assert (record.weights, record.seed, record.image_size) == ("s3://b/glam.safetensors", 7, 1024)
    assert record.weights_sha256 == "a" * 64 and record.glam_config["dim"] == 32


def test_unknown_weights_location_asks_for_weights(tmp_path) -> None:
    root = folder_with_descriptors(str(tmp_path / "plain"))
    record = extraction_record(root, list_descriptor_files(f"{root}/descriptors"))
    assert record is not None and record.weights is None
    with pytest.raises(
        ValueError, match=r"does not record where its weights are .*: pass --weights"
    ):
        load_query_model(record)


def test_an_index_without_an_extraction_record_is_a_clear_error() -> None:
    manifest = IndexManifest.from_dict(
        {
            "version": "v1",
            "signature": "s",
            "factory": "Flat",
            "dim": 8,
            "metric": "ip",
            "shards": 1,
            "shard_counts": [1],
            "count": 1,
            "config": {},
            "inputs": [],
            "descriptor_model": {},
            "created_at": "",
            "faiss": "",
        }
    )
    with pytest.raises(ValueError, match="does not record how its descriptors were extracted"):
        extraction_of(manifest)


def test_a_query_image_is_resized_with_the_descriptors_filter(tmp_path) -> None:
    """The record carries the extraction's resize filter (absent in files written before
    it: bilinear), which search by image applies to the query image."""
    from pipeline.extract.spec import ExtractionSpec, fingerprint
    from pipeline.io.descriptor_writer import descriptor_table, file_metadata, parquet_bytes
    from pipeline.io.storage import write_bytes_atomic

    cfg = {"backbone": "resnet18", "dim": 32}
    root = str(tmp_path / "lanczos")
    meta = file_metadata(fingerprint(ExtractionSpec(resize="lanczos-shrink"), cfg, "a" * 64), "t")
    uri = f"{root}/descriptors/000000.parquet"
    write_bytes_atomic(uri, parquet_bytes(descriptor_table(["a"], uri, unit(np.eye(1, 32)),
                                                           [1], [1], meta)))  # fmt: skip
    record = extraction_record(root, list_descriptor_files(f"{root}/descriptors"))
    assert record is not None and record.resize == "lanczos-shrink"
    old = extraction_record(
        folder_with_descriptors(str(tmp_path / "old")),
        list_descriptor_files(f"{tmp_path}/old/descriptors"),
    )
    assert old is not None and old.resize == "bilinear"


@pytest.mark.parametrize(
    "settings",
    [{}, {"resize": "lanczos-shrink", "jpeg_draft": False}, {"max_pixels": 500_000}],
    ids=["draft-bilinear", "lanczos", "pixel-limit"],
)
def test_a_query_image_gets_its_own_row_from_the_output_it_came_from(tmp_path, settings) -> None:
    """A photo large enough for the JPEG draft decode, extracted into an output, then searched
    by image with the settings that output recorded: the same descriptor (cosine >= 0.99999),
    through the same decode path; an image extraction refuses is refused alike."""
    from pipeline.datasets.synthetic import encode, photo
    from pipeline.extract.spec import ExtractionSpec
    from pipeline.extract.worker import ShardWorker
    from pipeline.index.query_image import describe_as_extracted
    from pipeline.io.descriptor_reader import read_descriptors
    from tests.support.tars import tar_of

    spec = ExtractionSpec(image_size=64, scales=(1.0,), precision="fp32", **settings)
    images = {
        "wide": encode(photo(np.random.default_rng(1), 400, 300), quality=90),  # draft: 1/4
        "tall": encode(photo(np.random.default_rng(2), 150, 260), quality=90),  # draft: 1/2
        "huge": encode(photo(np.random.default_rng(3), 900, 700), quality=90),  # 630k pixels
    }
    shard = tmp_path / "shards" / "000000.tar"
    shard.parent.mkdir()
    shard.write_bytes(tar_of(*[(f"{k}.jpg", data) for k, data in images.items()]))
    out = str(tmp_path / "out")
    stats = ShardWorker(spec, device="cpu", name="test").process(str(shard), out)
    assert stats.status == "committed"
    record = extraction_record(out, list_descriptor_files(f"{out}/descriptors"))
    assert record is not None and record.jpeg_draft == spec.jpeg_draft
    keys, x, _ = read_descriptors(out)
    paths = {}
    for key, data in images.items():
        paths[key] = tmp_path / f"{key}.jpg"
        paths[key].write_bytes(data)
    extractor = load_query_model(record)
    for key in keys:
        (got,) = describe_as_extracted(record, extractor, [str(paths[key])])
        cosine = float(got @ x[keys.index(key)])
        assert cosine >= 0.99999, (key, cosine)
    if "max_pixels" in settings:
        assert "huge" not in keys
        with pytest.raises(ValueError, match=r"huge.jpg: image of 900x700 = 630000 pixels"):
            describe_as_extracted(record, extractor, [str(paths["huge"])])
    else:
        assert sorted(keys) == sorted(images)
