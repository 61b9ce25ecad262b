"""jobs/prepare_revisitop.py on a generated miniature in revisitop's download layout."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from jobs.prepare_revisitop import main as prepare_main
from pipeline.datasets.gnd import load_gnd
from pipeline.datasets.synthetic import write_revisitop_miniature
from pipeline.io.shard_reader import FULL_SIZE_TEXT, iter_shard
from pipeline.io.shards import list_shards


def samples(folder: str) -> dict[str, dict[str, bytes]]:
    return {s.key: s.members for uri in list_shards(f"{folder}/*.tar") for s in iter_shard(uri)}


def test_database_and_query_crops(s3_bucket: str) -> None:
    root, out = f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/shards/roxf"
    made = write_revisitop_miniature(root, classes=2, per_class=3)
    args = ["--root", root, "--dataset", "roxford5k", "--output", out, "--shard-size", "4"]
    assert prepare_main(args) == 0
    db = samples(f"{out}/database")
    assert sorted(db) == sorted(made["imlist"]) and len(list_shards(f"{out}/database/*.tar")) == 2
    queries = samples(f"{out}/queries")
    assert sorted(queries) == sorted(made["qimlist"])
    gnd = load_gnd(f"{root}/roxford5k/gnd_roxford5k.pkl")
    x1, y1, x2, y2 = gnd.queries[0].bbx
    crop = Image.open(io.BytesIO(queries["query_0"]["png"]))
    assert crop.size == (round(x2) - round(x1), round(y2) - round(y1))
    full = Image.open(io.BytesIO(db_or_query_image(root, "query_0")))
    assert crop.info[FULL_SIZE_TEXT] == f"{full.size[0]}x{full.size[1]}"  # for the scaling


def db_or_query_image(root: str, name: str) -> bytes:
    from pipeline.io.storage import read_bytes

    return read_bytes(f"{root}/roxford5k/jpg/{name}.jpg")


@pytest.mark.parametrize("archives", [False, True])
def test_distractors_from_folder_or_archives(tmp_path, archives: bool) -> None:
    root, out = str(tmp_path / "data"), str(tmp_path / "shards")
    made = write_revisitop_miniature(root, distractors=5, archives=archives)
    assert (
        prepare_main(
            ["--root", root, "--dataset", "revisitop1m", "--output", out, "--shard-size", "2"]
        )
        == 0
    )
    got = samples(f"{out}/distractors")
    assert sorted(got) == made["distractors"]
    assert all(Image.open(io.BytesIO(m["jpg"])).size == (160, 120) for m in got.values())


def test_missing_layout_is_a_clear_error(tmp_path, capsys) -> None:
    assert (
        prepare_main(
            ["--root", str(tmp_path), "--dataset", "revisitop1m", "--output", str(tmp_path / "o")]
        )
        == 1
    )
    assert "revisitop1m.N.tar.gz" in capsys.readouterr().err
