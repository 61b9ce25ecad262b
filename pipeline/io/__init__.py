"""Shared I/O: nothing here imports another ``pipeline`` package, Ray or torch.

| module | job |
| --- | --- |
| ``storage`` | fsspec access (AWS variables, ``GLAM_STORAGE_OPTIONS``), atomic writes, JSON |
| ``redact`` | credentials out of logs, records and data |
| ``shards`` | ``--input`` patterns (brace ranges and lists, globs) -> shard URIs and ids |
| ``shard_reader`` | stream a tar shard -> WebDataset samples (``__key__`` + members) |
| ``shard_writer`` | samples -> numbered tar shards |
| ``layout`` | where an extraction output's files, markers and ``_job.json`` live; marker names |
| ``descriptor_writer`` | the descriptor and error Parquet schemas, metadata, bytes |
| ``descriptor_reader`` | committed descriptor files, one-model check, row-group streaming |
| ``delta_log`` | Parquet files as a Delta table: registered exactly once, read by version |
"""
