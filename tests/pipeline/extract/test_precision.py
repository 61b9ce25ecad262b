"""``--precision auto`` against an output: resolved on the actors, recorded resolved, never
mixed with descriptors of another precision (no Ray: the driver's checks on a local output)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.extract.actors import ActorInfo
from pipeline.extract.driver import resolved_fingerprint
from pipeline.extract.resume import check_output
from pipeline.extract.spec import ExtractionSpec, fingerprint
from pipeline.io.layout import job_uri, marker_uri
from pipeline.io.storage import write_json_atomic
from pipeline.runtime.records import OutputMismatchError

CONFIG = {"backbone": "resnet101", "dim": 512}


def fp(precision: str) -> dict:
    return fingerprint(ExtractionSpec(precision="auto"), CONFIG, "abc", precision)


def actor(precision: str) -> ActorInfo:
    return ActorInfo(1, "h", "cpu", None, [], fp(precision), "cpu", 2, 2.0)


def output_made_in(tmp_path: Path, precision: str) -> str:
    out = str(tmp_path / "out")
    write_json_atomic(job_uri(out), {"fingerprint": fp(precision)})
    marker = {"shard": "000000", "source": "s/000000.tar", "fingerprint": fp(precision)}
    write_json_atomic(marker_uri(out, "000000"), marker)
    return out


def test_auto_accepts_any_stored_precision_until_the_actors_resolve_it(tmp_path: Path) -> None:
    out = output_made_in(tmp_path, "bf16")
    previous, committed, precisions = check_output(
        out, fp("auto"), ["s/000000.tar", "s/000001.tar"]
    )
    assert previous is not None and list(committed) == ["000000"] and precisions == {"bf16"}
    assert resolved_fingerprint(out, fp("auto"), [actor("bf16")] * 2, precisions) == fp("bf16")
    with pytest.raises(OutputMismatchError, match=r"precision.*bf16.*resolves to fp32"):
        resolved_fingerprint(out, fp("auto"), [actor("fp32")], precisions)


def test_explicit_precision_must_match_the_output(tmp_path: Path) -> None:
    out = output_made_in(tmp_path, "bf16")
    with pytest.raises(OutputMismatchError, match="differs in: precision"):
        check_output(out, fp("fp32"), ["s/000000.tar"])
    check_output(out, fp("bf16"), ["s/000000.tar"])


def test_auto_is_bound_to_the_precision_of_shards_another_input_committed(tmp_path) -> None:
    """Run 1 committed shard 0 in fp32; run 2 with auto gives shards 1-2 only: the output's
    precision still binds it (its markers are not among run 2's shards)."""
    out = output_made_in(tmp_path, "fp32")
    _, committed, precisions = check_output(out, fp("auto"), ["s/000001.tar", "s/000002.tar"])
    assert committed == {} and precisions == {"fp32"}


def test_a_shard_of_the_same_name_from_another_folder_is_refused(tmp_path) -> None:
    out = output_made_in(tmp_path, "bf16")  # s/000000.tar committed
    with pytest.raises(
        OutputMismatchError, match=r"000000 \(committed from s/000000.tar, given day2/000000.tar\)"
    ):
        check_output(out, fp("bf16"), ["day2/000000.tar"])
    same = str(Path("s/000000.tar").resolve())  # the same file, spelled absolutely
    assert list(check_output(out, fp("bf16"), [same])[1]) == ["000000"]


def test_actors_that_resolve_differently_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="differently"):
        resolved_fingerprint(str(tmp_path), fp("auto"), [actor("bf16"), actor("fp32")], set())


def test_the_fingerprint_records_the_resolved_precision_and_the_draft_switch() -> None:
    spec = ExtractionSpec(precision="auto", jpeg_draft=False)
    assert fingerprint(spec, CONFIG, "abc", "fp32")["precision"] == "fp32"
    assert fingerprint(spec, CONFIG, "abc")["jpeg_draft"] is False
    assert fp("bf16") != fp("fp32")
