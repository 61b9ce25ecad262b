"""The output folder's layout (ARCHITECTURE.md): one descriptor and one error file per shard,
a commit marker per shard written last, and the job record."""

from __future__ import annotations

from pipeline.io.storage import join


def descriptors_uri(output: str, shard: str) -> str:
    return join(output, "descriptors", f"part-{shard}.parquet")


def errors_uri(output: str, shard: str) -> str:
    return join(output, "errors", f"part-{shard}.parquet")


def markers_folder(output: str) -> str:
    return join(output, "_shards")


def marker_uri(output: str, shard: str) -> str:
    return join(markers_folder(output), f"{shard}.json")


def job_uri(output: str) -> str:
    return join(output, "_job.json")
