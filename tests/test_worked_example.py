"""The worked example of docs/retrieval_quality.md, "from a downloaded cirtorch checkpoint to an
evaluated index", on generated stand-ins (a cirtorch-layout ResNet18 with random weights, the
revisitop miniature), with the same jobs: convert -> prepare -> extract -> learn whitening ->
index with whitening and DBA -> evaluate with αQE and re-ranking -> search by image. Also the
errors of search by image when the index's weights are not where the extraction read them."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from jobs.build_index import main as build_main
from jobs.convert_weights import main as convert_main
from jobs.evaluate import main as evaluate_main
from jobs.extract import main as extract_main
from jobs.learn_whitening import main as learn_main
from jobs.prepare_revisitop import main as prepare_main
from jobs.search_index import main as search_main
from pipeline.datasets.synthetic import write_revisitop_miniature
from pipeline.index.search import ShardedIndex
from pipeline.io.descriptor_reader import read_descriptors
from tests.support.foreign_networks import CirtorchGeM, cirtorch_checkpoint

SIZE = "96"


@dataclass(frozen=True)
class Example:
    root: Path
    weights: str  # the converted checkpoint
    index: str  # the distractor index (whitening + DBA)
    report: dict


@pytest.fixture(scope="module")
def example(ray_local, tmp_path_factory) -> Example:
    root = tmp_path_factory.mktemp("worked")
    # 1. "Download" a cirtorch network and convert it.
    net = CirtorchGeM("resnet18", whiten=True, seed=3)
    (root / "gl18-tl-resnet18-gem-w.pth").write_bytes(cirtorch_checkpoint(net, "resnet18"))
    weights = str(root / "models" / "gl18-r18.safetensors")
    source = str(root / "gl18-tl-resnet18-gem-w.pth")
    assert convert_main(["--source", source, "--format", "cirtorch", "--output", weights]) == 0
    # 2. revisitop's layout -> shards -> descriptors with the converted weights.
    data = str(root / "revisitop")
    write_revisitop_miniature(data, classes=3, per_class=4, distractors=16)
    shards = str(root / "shards")
    assert (
        prepare_main(["--root", data, "--dataset", "roxford5k", "--output", f"{shards}/roxf"]) == 0
    )
    assert (
        prepare_main(["--root", data, "--dataset", "revisitop1m", "--output", f"{shards}/r1m"]) == 0
    )
    for part in ("roxf/database", "roxf/queries", "r1m/distractors"):
        args = ["--input", f"{shards}/{part}/*.tar", "--output", str(root / "runs" / part)]
        args += ["--weights", weights, "--image-size", SIZE, "--scales", "1", "--batch-size", "4"]
        assert extract_main(args) == 0
    # 3. A whitening (here fitted on the distractors), the index, the evaluation.
    wfile = str(root / "whitening.safetensors")
    runs = root / "runs"
    assert learn_main(["--descriptors", str(runs / "r1m/distractors"), "--output", wfile]) == 0
    index = str(root / "indexes" / "r1m")
    build = ["--descriptors", str(runs / "r1m/distractors"), "--output", index, "--shards", "2"]
    assert build_main([*build, "--whitening", wfile, "--dba", "2"]) == 0
    report_path = root / "report.json"
    args = ["--gnd", f"{data}/roxford5k/gnd_roxford5k.pkl", "--queries", str(runs / "roxf/queries")]
    args += ["--database", str(runs / "roxf/database"), "--distractors", index]
    args += ["--report", str(report_path), "--dba", "2", "--aqe", "1", "--rerank"]
    assert evaluate_main(args) == 0
    return Example(root, weights, index, json.loads(report_path.read_text()))


def test_the_index_is_evaluated_with_every_step(example: Example) -> None:
    report = example.report
    assert report["distractors"] == 16 and report["exact"]
    steps = [s.split(" ")[0] for s in report["postprocessing"]]
    assert steps == ["whitening", "DBA", "alpha-QE", "re-ranking"]
    for p in ("easy", "medium", "hard"):
        assert 0 <= report[p]["mAP"] <= 1
    manifest = ShardedIndex.load(example.index).manifest
    assert manifest.extraction is not None and manifest.extraction.weights == example.weights
    assert manifest.dba is not None and manifest.whitening is not None


def distractor_image(example: Example) -> tuple[str, str]:
    jpg = example.root / "revisitop" / "revisitop1m" / "jpg"
    name = sorted(os.listdir(jpg))[5]
    return str(jpg / name), name[: -len(".jpg")]


def test_search_by_image_finds_the_image_itself(example: Example, capsys) -> None:
    path, key = distractor_image(example)
    assert search_main(["--index", example.index, "--image", path, "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert "post-processing: whitening" in out and "DBA k=2" in out
    first = out.split(f"query {path}")[1].splitlines()[1].split()
    assert first[2] == key  # rank 1 is the image itself
    # Its descriptor is the one the extraction pipeline wrote (same model, same treatment).
    from pipeline.index.query_image import describe_images

    keys, x, _ = read_descriptors(str(example.root / "runs" / "r1m" / "distractors"))
    got = describe_images(ShardedIndex.load(example.index).manifest, [path])
    np.testing.assert_allclose(got[0], x[keys.index(key)], rtol=0, atol=2e-5)


def test_unreachable_weights_are_named_and_a_copy_can_be_given(example: Example, capsys) -> None:
    path, key = distractor_image(example)
    moved = example.weights + ".moved"
    shutil.move(example.weights, moved)
    try:
        assert search_main(["--index", example.index, "--image", path]) == 1
        err = capsys.readouterr().err
        assert f"the index's weights are not reachable at {example.weights}" in err
        assert "pass --weights" in err and "Traceback" not in err
        assert search_main(["--index", example.index, "--image", path, "--weights", moved]) == 0
        assert key in capsys.readouterr().out
    finally:
        shutil.move(moved, example.weights)
    other = str(example.root / "other.safetensors")
    net = CirtorchGeM("resnet18", whiten=True, seed=4)
    (example.root / "other.pth").write_bytes(cirtorch_checkpoint(net, "resnet18"))
    args = ["--source", str(example.root / "other.pth"), "--format", "cirtorch"]
    assert convert_main([*args, "--output", other]) == 0
    assert search_main(["--index", example.index, "--image", path, "--weights", other]) == 1
    assert "are not the ones the index's descriptors were extracted with" in (
        capsys.readouterr().err
    )
