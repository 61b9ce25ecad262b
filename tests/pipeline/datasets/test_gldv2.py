"""jobs/prepare_gldv2.py on a generated GLDv2-clean miniature in the download's layout, on the
moto S3 server: contiguous labels, every image exactly once, shuffled, resumable, idempotent,
missing files reported, bad input refused."""

from __future__ import annotations

import json

import pytest

from jobs.prepare_gldv2 import main as prepare_main
from pipeline.datasets.gldv2 import image_uri, load_label_map
from pipeline.datasets.synthetic import write_gldv2_miniature
from pipeline.datasets.train_manifest import load_dataset
from pipeline.io.shard_reader import iter_shard
from pipeline.io.shards import list_shards
from pipeline.io.storage import filesystem, read_json, write_bytes_atomic
from tests.support.extraction import output_listing


def args(root: str, out: str, *extra: str) -> list[str]:
    return [
        "--csv", f"{root}/train_clean.csv", "--images", f"{root}/train", "--output", out,
        "--shard-size", "5", *extra,
    ]  # fmt: skip


def read_all(out: str) -> dict[str, tuple[int, bytes]]:
    found: dict[str, tuple[int, bytes]] = {}
    for uri in list_shards(f"{out}/train-*.tar"):
        for s in iter_shard(uri):
            assert s.key not in found, f"{s.key} twice"
            found[s.key] = (int(s.members["cls"]), s.members["jpg"])
    return found


def test_shards_labels_and_label_map(s3_bucket: str, capsys) -> None:
    root, out = f"s3://{s3_bucket}/gldv2", f"s3://{s3_bucket}/gldv2-shards"
    truth = write_gldv2_miniature(root, classes=3, per_class=6)
    assert prepare_main(args(root, out)) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {
        "num_samples": 18, "num_classes": 3, "shards": 4, "missing": 0,
    }  # fmt: skip
    found = read_all(out)
    assert set(found) == set(truth)
    label_map = load_label_map(out)
    assert sorted(label_map) == [0, 1, 2]
    assert sorted(label_map.values()) == sorted(set(truth.values()))  # ascending landmark ids
    assert all(label_map[label] == truth[key] for key, (label, _) in found.items())
    fs, path = filesystem(image_uri(f"{root}/train", next(iter(truth))))
    assert fs.cat_file(path) == found[next(iter(truth))][1]  # the file's bytes, untouched
    order = [found[k][0] for s in list_shards(f"{out}/train-*.tar") for k in _keys(s)]
    assert order != sorted(order)  # shuffled, not in class order
    ds = load_dataset(f"{out}/train-{{000000..000003}}.tar")
    assert (ds.num_classes, ds.num_samples) == (3, 18)


def _keys(uri: str) -> list[str]:
    return [s.key for s in iter_shard(uri)]


def test_rerun_is_idempotent_and_other_parameters_are_refused(s3_bucket: str, capsys) -> None:
    root, out = f"s3://{s3_bucket}/gldv2", f"s3://{s3_bucket}/gldv2-shards"
    write_gldv2_miniature(root, classes=2, per_class=5)
    assert prepare_main(args(root, out)) == 0
    before = output_listing(out)
    assert prepare_main(args(root, out)) == 0
    assert output_listing(out) == before  # nothing written
    assert prepare_main(args(root, out, "--seed", "1")) == 1
    assert "use another --output" in capsys.readouterr().err


def test_interrupted_run_resumes_to_the_same_shards(tmp_path) -> None:
    root, out = str(tmp_path / "gldv2"), str(tmp_path / "shards")
    write_gldv2_miniature(root, classes=2, per_class=6)
    assert prepare_main(args(root, out)) == 0
    complete = {p.name: p.read_bytes() for p in (tmp_path / "shards").glob("train-*.tar")}
    # As if it died before its last shards and the manifest.
    (tmp_path / "shards" / "_dataset.json").unlink()
    (tmp_path / "shards" / "train-000001.tar").unlink()
    assert prepare_main(args(root, out)) == 0
    again = {p.name: p.read_bytes() for p in (tmp_path / "shards").glob("train-*.tar")}
    assert again == complete
    assert read_json(str(tmp_path / "shards" / "_dataset.json"))["num_samples"] == 12


def test_missing_images_are_listed_up_to_the_limit(tmp_path, capsys) -> None:
    root, out = str(tmp_path / "gldv2"), str(tmp_path / "shards")
    truth = write_gldv2_miniature(root, classes=2, per_class=10)
    gone = sorted(truth)[0]
    filesystem(root)[0].rm(image_uri(f"{root}/train", gone))
    assert prepare_main(args(root, out, "--max-missing-fraction", "0.1")) == 0
    assert (tmp_path / "shards" / "missing.txt").read_text().split() == [gone]
    assert read_json(f"{out}/_dataset.json")["num_samples"] == 19
    # A wrong --images finds nothing: a clear error, not empty shards.
    wrong = ["--csv", f"{root}/train_clean.csv", "--images", str(tmp_path / "nowhere")]
    assert prepare_main([*wrong, "--output", str(tmp_path / "o2")]) == 1
    assert "is --images right?" in capsys.readouterr().err


@pytest.mark.parametrize(
    "csv,message",
    [
        ("id,url\n1,a\n", "expected the header"),
        ("landmark_id,images\nx,abc\n", "not an integer"),
        ("landmark_id,images\n", "no images"),
        ("landmark_id,images\n1,abcdef abcdef\n", "more than once"),
    ],
)
def test_bad_csv_is_a_clear_error(tmp_path, capsys, csv: str, message: str) -> None:
    write_bytes_atomic(str(tmp_path / "train_clean.csv"), csv.encode())
    assert prepare_main(args(str(tmp_path), str(tmp_path / "o"))) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_exclusion_lists_remove_landmarks_and_images(tmp_path, capsys) -> None:
    """RGLDv2-clean style: the listed landmarks (or images) are gone before labelling."""
    root = str(tmp_path / "gldv2")
    truth = write_gldv2_miniature(root, classes=4, per_class=5)
    landmarks = sorted(set(truth.values()))
    removed_landmark = landmarks[1]
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "overlap.csv").write_text(f"landmark_id\n{removed_landmark}\n999999999\n")
    one_image = sorted(i for i, lm in truth.items() if lm == landmarks[3])[0]
    (lists / "images.csv").write_text(f"landmark_id,images\n{landmarks[3]},{one_image}\n")
    out = str(tmp_path / "rgldv2")
    extra = ["--exclude", str(lists / "overlap.csv"), "--exclude", str(lists / "images.csv")]
    assert prepare_main(args(root, out, *extra)) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["num_samples"] == 20 - 5 - 1 and summary["num_classes"] == 3
    excluded = summary["excluded"]
    assert (excluded["images_removed"], excluded["landmarks_removed"]) == (6, 1)
    assert excluded["listed_but_absent"] == 1  # 999999999 is not in the csv
    found = read_all(out)
    assert one_image not in found
    assert all(truth[key] != removed_landmark for key in found)
    label_map = load_label_map(out)
    assert sorted(label_map) == [0, 1, 2]  # contiguous without the removed landmark
    assert removed_landmark not in label_map.values()
    assert read_json(f"{out}/_dataset.json")["excluded"]["lists"][0].endswith("overlap.csv")
    # The same output with another exclusion list is refused; without any, too.
    (lists / "overlap.csv").write_text(f"landmark_id\n{landmarks[0]}\n")
    assert prepare_main(args(root, out, *extra)) == 1
    assert prepare_main(args(root, out)) == 1
    assert "use another --output" in capsys.readouterr().err


def test_per_image_csv_and_bad_exclusion_lists(tmp_path, capsys) -> None:
    root = str(tmp_path / "gldv2")
    truth = write_gldv2_miniature(root, classes=2, per_class=4)
    rows = ["id,url,landmark_id", *(f"{i},http://x/{i}.jpg,{lm}" for i, lm in truth.items())]
    (tmp_path / "rgldv2.csv").write_text("\n".join(rows) + "\n")
    per_image = ["--csv", str(tmp_path / "rgldv2.csv"), "--images", f"{root}/train"]
    assert prepare_main([*per_image, "--output", str(tmp_path / "o1"), "--shard-size", "3"]) == 0
    assert set(read_all(str(tmp_path / "o1"))) == set(truth)
    (tmp_path / "bad.csv").write_text("gid\n12\n")
    extra = ["--exclude", str(tmp_path / "bad.csv")]
    assert prepare_main(args(root, str(tmp_path / "o2"), *extra)) == 1
    assert "an exclusion list needs a header" in capsys.readouterr().err
