"""Training GLAM + ArcFace on Ray Train (imports ``datasets`` for the training manifest).

| module | job |
| --- | --- |
| ``spec`` | ``TrainJob`` and the fingerprint that guards a run folder |
| ``data`` | a worker's batches: shard split, shuffle buffer, group-size batches, decode threads |
| ``state`` | checkpoint ``state.pt``, restore, export to a GLAM checkpoint |
| ``metrics`` | ``TrainMetrics``, a log point combined over the workers |
| ``worker`` | the per-worker DDP loop: restore, step, report, checkpoint |
| ``progress`` | typed events from rank 0 to the driver's log and bar |
| ``driver`` | worker plan, ``TorchTrainer``, export ``glam.safetensors``, ``_train.json`` |
"""
