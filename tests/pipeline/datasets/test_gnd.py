"""Ground-truth files are checked when loaded: a bad one is one clear error, never an
IndexError deep in scoring or a silent evaluation over fewer queries."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from jobs.evaluate import main as evaluate_main
from pipeline.datasets.gnd import load_gnd

IMLIST = [f"db{i}" for i in range(5)]


def write(tmp_path, gnd: list, qimlist: list[str] | None = None) -> str:
    path = tmp_path / "gnd.pkl"
    qimlist = qimlist if qimlist is not None else [f"q{i}" for i in range(len(gnd))]
    path.write_bytes(pickle.dumps({"imlist": IMLIST, "qimlist": qimlist, "gnd": gnd}))
    return str(path)


def test_a_good_file_loads_typed(tmp_path) -> None:
    entry = {"bbx": [1, 2, 30.5, 40], "easy": np.array([0, 1]), "hard": [4], "junk": []}
    truth = load_gnd(write(tmp_path, [entry]))
    assert truth.imlist == IMLIST and truth.qimlist == ["q0"]
    (q,) = truth.queries
    assert q.easy.tolist() == [0, 1] and q.hard.tolist() == [4] and q.junk.size == 0
    assert q.bbx == (1.0, 2.0, 30.5, 40.0)
    assert truth.gnd[0]["easy"].dtype == np.int64


@pytest.mark.parametrize(
    "entry,message",
    [
        ({"easy": [0, 5]}, r"'easy' names images outside the 5 of imlist: \[5\]"),
        ({"hard": [-1]}, r"'hard' names images outside the 5 of imlist: \[-1\]"),
        ({"junk": [1.5]}, r"'junk' names images outside"),
        ({"easy": "abc"}, "not a list of image indices"),
        ({"easy": [0], "bbx": [1, 2]}, "bbx must be 4 numbers"),
    ],
)
def test_bad_entries_are_named(tmp_path, entry: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_gnd(write(tmp_path, [entry]))


def test_fewer_entries_than_queries_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="has 1 gnd entries for 3 queries"):
        load_gnd(write(tmp_path, [{"easy": [0]}], qimlist=["a", "b", "c"]))


def test_the_evaluate_job_says_it_in_one_line(tmp_path, capsys) -> None:
    gnd = write(tmp_path, [{"easy": [0, 9]}])
    args = ["--gnd", gnd, "--queries", str(tmp_path), "--database", str(tmp_path)]
    assert evaluate_main([*args, "--report", str(tmp_path / "r.json")]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: ValueError: ")
    assert "names images outside the 5 of imlist: [9]" in err and "Traceback" not in err
    assert not (tmp_path / "r.json").exists()
