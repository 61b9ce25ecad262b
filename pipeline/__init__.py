"""The GLAM descriptor pipeline: one package per workflow over shared I/O and runtime.

- ``io``: storage (fsspec, atomic writes), redaction, shard listing, WebDataset read/write,
  the extraction output's layout, the descriptor Parquet contract (write and read).
- ``runtime``: the Ray cluster connection, resource planning, metrics, progress, failpoints,
  run records and fingerprints, a bounded producer thread.
- ``extract``: shards -> decode -> batches -> GLAM -> Parquet + commit markers, on Ray actors.
- ``index``: sharded FAISS builds as versions behind LATEST, and search.
- ``evaluate``: the revisitop protocol and the ROxf/RPar (+R1M) report.
- ``datasets``: revisitop and GLDv2 preparation, ground-truth files, generated data,
  training manifests.
- ``train``: GLAM + ArcFace on Ray Train.

A workflow imports only ``io``, ``runtime`` and ``glam`` (plus evaluate -> index, datasets and
train -> datasets); ``tests/test_architecture.py`` holds the rule. See docs/architecture.md.
"""
