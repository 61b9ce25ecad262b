"""Data sets: turning downloads into WebDataset shards, and the files that describe them.

| module | job |
| --- | --- |
| ``revisitop`` | ROxf/RPar/R1M download layout -> database, query-crop and distractor shards |
| ``gnd`` | revisitop ground-truth pickles, through a restricted unpickler |
| ``gldv2`` | GLDv2-clean CSV + images -> shuffled labelled shards, label map, ``_dataset.json`` |
| ``train_manifest`` | a training dataset's shards, class and sample counts |
| ``synthetic`` | generated images and shards (every bad kind, odd modes) for demo, tests, bench |
"""
