"""Indexes: sharded FAISS builds from descriptor Parquet, as immutable versions behind LATEST;
search in one process or across Ray actors, with the same answers.

| module | job |
| --- | --- |
| ``versions`` | version folders, manifest, LATEST, shard references, retention (no Ray, FAISS) |
| ``search_config`` | search settings (nprobe, k_factor) and serving settings (actors, placement) |
| ``build_config`` | ``IndexBuildConfig``: which fields make the shards' content |
| ``plan`` | up to date, incremental or full: decided from the inputs and LATEST (no FAISS) |
| ``shard_files`` | a shard's rows streamed in batches; its FAISS file and id table, atomically |
| ``build`` | training, shard builds as Ray tasks, manifest, then LATEST |
| ``gpu`` | FAISS on the GPU: k-means and coarse assignment, GPU copies for search |
| ``shard`` | one shard in memory: its candidates, re-scoring, exact counts, keys |
| ``merge`` | the global top-k from the shards' candidates (a refined index's cut, its best k) |
| ``search`` | ``ShardedIndex``: load a version (or some shards, or lazily) and search it |
| ``serving`` | ``DistributedIndex``: a version on Ray actors; ``open_index``: local or on actors |
| ``whitening`` | learned PCA-whitening: fit, file, apply (stored vectors and queries) |
| ``expansion`` | αQE and DBA arithmetic |
| ``dba`` | DBA of the version being built (always a full build) |
| ``rerank`` | SuperGlobal top-M re-ranking |
| ``vectors`` | stored vectors by global id (in this process; actors gather theirs) |
| ``query`` | search with post-processing (whitening, αQE, re-ranking), local or on actors |
| ``query_image`` | search by image, with the index's own extraction settings |
| ``build_record`` | what a build records: its whitening copy, how descriptors were extracted |
"""
