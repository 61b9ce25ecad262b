"""Indexes: sharded FAISS builds from descriptor Parquet, as immutable versions behind LATEST.

| module | job |
| --- | --- |
| ``versions`` | version folders, ``manifest.json``, LATEST, retention (no Ray, no FAISS) |
| ``build`` | training sample, shard builds as Ray tasks, manifest, then LATEST; up-to-date skips |
| ``search`` | load a version, top-k merged across shards, exact flat scores |
"""
