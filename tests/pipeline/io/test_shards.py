from __future__ import annotations

import pytest

from pipeline.io.shards import expand_braces, list_shards, shard_id
from pipeline.io.storage import write_bytes_atomic


def test_brace_ranges_keep_padding_and_lists_expand() -> None:
    assert expand_braces("s3://b/{000008..000011}.tar") == [
        f"s3://b/{i:06d}.tar" for i in range(8, 12)
    ]
    assert expand_braces("d/{a,b}/{1..2}.tar") == [
        "d/a/1.tar",
        "d/a/2.tar",
        "d/b/1.tar",
        "d/b/2.tar",
    ]
    assert expand_braces("plain.tar") == ["plain.tar"]


@pytest.mark.parametrize("bad", ["x/{5..1}.tar", "x/{abc}.tar"])
def test_bad_brace_groups(bad: str) -> None:
    with pytest.raises(ValueError):
        expand_braces(bad)


def test_glob_on_local_folder(tmp_path) -> None:
    for name in ("000001.tar", "000000.tar", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert list_shards(str(tmp_path / "*")) == [
        str(tmp_path / "000000.tar"),
        str(tmp_path / "000001.tar"),
    ]
    with pytest.raises(ValueError, match="no shards match"):
        list_shards(str(tmp_path / "*.tgz"))


def test_glob_on_s3_keeps_the_protocol(s3_bucket: str) -> None:
    for i in (2, 0, 1):
        write_bytes_atomic(f"s3://{s3_bucket}/shards/{i:06d}.tar", b"x")
    assert list_shards(f"s3://{s3_bucket}/shards/*.tar") == [
        f"s3://{s3_bucket}/shards/{i:06d}.tar" for i in range(3)
    ]


def test_shard_ids_must_be_unique() -> None:
    assert shard_id("s3://b/x/000123.tar") == "000123"
    assert shard_id("/d/part.tar.gz") == "part"
    with pytest.raises(ValueError, match="share the names"):
        list_shards("{a,b}/000000.tar")


def test_a_large_shard_pattern_is_listed_and_its_duplicates_found() -> None:
    """Linear in the shard count (the duplicate check once counted each id over all ids: an
    hour at 200k shards, days at a million); names shared between two folders are named."""
    shards = list_shards("s3://b/shards/{0000000..0199999}.tar")
    assert len(shards) == 200_000 and shards[123_456] == "s3://b/shards/0123456.tar"
    with pytest.raises(ValueError, match=r"share the names \['0000000', '0000001', '0000002'"):
        list_shards("s3://b/{day1,day2}/{0000000..0099999}.tar")
