"""What every distributed job shares (imports only ``pipeline.io``).

| module | job |
| --- | --- |
| ``cluster`` | join the submitted or running Ray cluster, or start a local one |
| ``resources`` | worker plan: how many, GPU or CPU, CPUs each (actors and Ray Train) |
| ``records`` | versions and timestamps for run records; the one fingerprint check |
| ``metrics`` | Ray application metrics (Prometheus) |
| ``progress`` | a bar on a terminal, periodic log lines otherwise |
| ``producer`` | a bounded producer thread (shard reading, training batches) |
| ``failpoints`` | fault injection for the crash tests (off unless ``GLAM_FAILPOINTS``) |
"""
