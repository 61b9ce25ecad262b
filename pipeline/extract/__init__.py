"""Extraction: WebDataset shards -> GLAM descriptors in Parquet, exactly once per shard.

| module | job |
| --- | --- |
| ``spec`` | the job and spec dataclasses; the fingerprint that guards an output |
| ``decode`` | one sample -> an image or a typed error row, and a row per other image member |
| ``batching`` | size buckets: only equal-size images share a batch |
| ``worker`` | ``ShardWorker``: read/decode thread -> buckets -> GLAM -> Parquet -> marker |
| ``stats`` | ``ShardStats`` (the commit marker's body), totals, metrics |
| ``actors`` | the Ray actor around the worker |
| ``driver`` | list, skip committed, schedule, re-queue after actor death, ``_job.json`` |
| ``summary`` | an output read back through DuckDB |

Per shard: descriptors file, errors file (both atomic), then the marker ``_shards/<id>.json``
(stats + fingerprint). A shard is done iff its marker exists with the job's fingerprint.
"""
