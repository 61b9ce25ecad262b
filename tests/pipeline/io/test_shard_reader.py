"""The shard reader groups members into samples as WebDataset does, and accounts for every
member: problems come out as samples with a typed problem, never silently dropped; a tar
that cannot be parsed is a format error (not retried), a stream that breaks a storage one."""

from __future__ import annotations

import pytest

from pipeline.io.shard_reader import ShardFormatError, iter_shard, split_name
from pipeline.io.storage import write_bytes_atomic
from tests.support.tars import JPEG, tar_of


def read(tmp_path, data: bytes) -> list[tuple[str, list[str], str | None]]:
    uri = str(tmp_path / "000000.tar")
    write_bytes_atomic(uri, data)
    return [
        (s.key, sorted(s.members), s.problem[0] if s.problem else None) for s in iter_shard(uri)
    ]


def test_names_split_at_the_first_dot_of_the_file_name() -> None:
    assert split_name("dir/photo.2023.JPG") == ("dir/photo", "2023.jpg")
    assert split_name("a.b/c.png") == ("a.b/c", "png")
    assert split_name("noext") is None and split_name("dir/.hidden") is None


def test_every_member_is_a_sample_or_a_typed_problem(tmp_path) -> None:
    got = read(
        tmp_path,
        tar_of(
            ("photo.2023.jpg", JPEG),
            ("photo.2024.jpg", JPEG),  # same key: one sample with two image members
            ("a.jpg", JPEG),
            ("a.cls", b"3"),
            ("a.jpg", JPEG),  # the same name again within the sample
            ("README", b"no extension"),
            ("._a.jpg", b"macOS metadata"),
            ("b.__key__", b"crafted"),
            ("c.jpg", "->a.jpg"),
            ("d.jpg", "=>a.jpg"),
            ("e.jpg", JPEG),
            ("photo.jpg", JPEG),  # photo again, not consecutive: a duplicate key
        ),
    )
    assert got == [
        ("photo", ["2023.jpg", "2024.jpg"], None),
        ("a.jpg", [], "duplicate_member"),
        ("a", ["cls", "jpg"], None),
        ("README", [], "no_extension"),
        ("._a.jpg", [], "hidden_member"),
        ("b.__key__", [], "reserved_member"),
        ("c.jpg", [], "link_member"),
        ("d.jpg", [], "link_member"),
        ("e", ["jpg"], None),
        ("photo", [], "duplicate_key"),
    ]


def test_image_members_come_in_a_stable_order(tmp_path) -> None:
    uri = str(tmp_path / "000000.tar")
    write_bytes_atomic(uri, tar_of(("x.png", b"P"), ("x.txt", b"t"), ("x.jpg", b"J")))
    (sample,) = iter_shard(uri)
    assert [ext for ext, _ in sample.image_members()] == ["jpg", "png"]
    assert sample.image_member() == b"J"


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00not a tar at all" * 100, tar_of(("a.jpg", JPEG * 500))[:700]],
    ids=["empty", "garbage", "truncated"],
)
def test_unparseable_bytes_are_a_format_error_with_a_clean_message(tmp_path, data) -> None:
    with pytest.raises(ShardFormatError) as e:
        read(tmp_path, data)
    assert "000000.tar" in str(e.value) and "object at 0x" not in str(e.value)


def test_a_missing_shard_is_a_format_error(tmp_path) -> None:
    with pytest.raises(ShardFormatError, match="does not exist"):
        list(iter_shard(str(tmp_path / "nothing.tar")))
