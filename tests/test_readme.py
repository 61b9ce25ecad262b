"""The analyst guide's snippets (docs/analytics.md) run against a real output, and DuckDB answers
as documented; every job command in the README and the guides parses with its job's parser."""

from __future__ import annotations

import json
import re

import duckdb
import numpy as np
import pytest

from jobs.extract import main as extract_main
from pipeline.datasets.synthetic import BAD_KINDS, ODD_MODES, write_shards
from tests.support.extraction import IMAGE_SIZE, expected_keys
from tests.support.paths import REPO

QUERY_KEY = "s000000_00001"


@pytest.fixture(scope="module")
def output(ray_local, tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("readme")
    write_shards(str(root / "shards"), 3, 5, (96, 72), tuple(BAD_KINDS), ODD_MODES)
    out = str(root / "run")
    args = ["--input", f"{root}/shards/*.tar", "--output", out, "--image-size", str(IMAGE_SIZE)]
    assert extract_main(args) == 0
    return out


DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def readme_snippets() -> list[str]:
    text = (REPO / "docs" / "analytics.md").read_text()
    return re.findall(r"<!-- snippet -->\n```python\n(.*?)```", text, flags=re.S)


def test_readme_snippets_run(output: str) -> None:
    snippets = readme_snippets()
    assert len(snippets) == 3
    scope: dict = {"OUTPUT": output, "QUERY_KEY": QUERY_KEY}
    for code in snippets:
        exec(compile(code, "docs/analytics.md", "exec"), scope)
    n_ok = sum(len(expected_keys(s)[0]) for s in range(3))
    assert sum(n for _, n in scope["per_shard"]) == n_ok
    assert scope["top5"][0][0] == QUERY_KEY and scope["top5"][0][1] == pytest.approx(1, abs=1e-5)
    assert dict(scope["errors_by_type"]) == {
        "undecodable": 9,
        "empty": 3,
        "oversized": 3,
        "missing_image": 3,
    }
    assert scope["ranked"][0] == QUERY_KEY
    assert scope["X"].shape == (n_ok, 512)
    np.testing.assert_allclose(np.linalg.norm(scope["vectors"], axis=1), 1, rtol=1e-5)
    assert scope["scales"] == pytest.approx([2**-0.5, 1, 2**0.5])


def test_fingerprint_is_in_the_parquet_metadata(output: str) -> None:
    con = duckdb.connect()
    (value,) = con.execute(
        f"SELECT value FROM parquet_kv_metadata('{output}/descriptors/part-000000.parquet') "
        "WHERE key = 'fingerprint'"
    ).fetchone()
    assert json.loads(value)["image_size"] == IMAGE_SIZE


def readme_commands() -> list[list[str]]:
    """Every ``python …/jobs/<job>.py …`` command in the shell blocks of the README and the
    guides."""
    import shlex

    text = "\n".join(path.read_text() for path in DOCUMENTS)
    commands = []
    for lang, block in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        if lang:  # python, sql, ...: not shell commands
            continue
        for line in block.replace("\\\n", " ").splitlines():
            argv = shlex.split(line.split(" -- ", 1)[-1]) if "jobs/" in line else []
            for i, word in enumerate(argv):
                if re.search(r"jobs/\w+\.py$", word):
                    commands.append(argv[i:])
                    break
    return commands


def test_readme_job_commands_parse_with_the_jobs_own_parsers() -> None:
    import importlib

    checked = set()
    for argv in readme_commands():
        name = argv[0].rsplit("/", 1)[1][:-3]
        module = importlib.import_module(f"jobs.{name}")
        if hasattr(module, "build_parser"):
            module.build_parser().parse_args(argv[1:])  # SystemExit on an unknown flag
            checked.add(name)
    assert {"extract", "train", "prepare_gldv2"} <= checked
