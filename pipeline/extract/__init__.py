"""Extraction: WebDataset shards -> GLAM descriptors in Parquet, exactly once per shard.

| module | job |
| --- | --- |
| ``spec`` | the job and spec dataclasses; the fingerprint that guards an output |
| ``decode`` | one sample -> an image or a typed error row, and a row per other image member |
| ``gpu_decode`` | ``--decode gpu``: JPEGs batched through nvjpeg, the rest routed to the CPU |
| ``feed`` | a shard read and decoded in parallel threads, handed over in shard order |
| ``batching`` | ``glam.batching``'s size buckets over decoded samples (equal sizes only) |
| ``worker`` | ``ShardWorker``: feed -> buckets -> GLAM (one compute thread) -> Parquet -> marker |
| ``stats`` | ``ShardStats`` (the commit marker's body), totals, metrics |
| ``actors`` | the Ray actor around the worker |
| ``recovery`` | failed actors waited for; deaths counted by real restarts |
| ``resume`` | what an output holds, from one listing of its markers; totals to trust or recount |
| ``failures`` | failed shards bounded: the first in full, a count, all in a Parquet file |
| ``registration`` | committed shards into the output's Delta tables, in batches; reconcile |
| ``driver`` | list, skip committed, start actors, schedule, re-queue, ``_job.json`` |
| ``summary`` | an output read back through DuckDB |

Per shard: descriptors file, errors file (both atomic), then the marker
``_shards/<id>.<source digest>.json`` (stats + fingerprint). A shard is done iff its marker
exists; its name tells from which source, so one listing of ``_shards/`` tells what is done.
"""
