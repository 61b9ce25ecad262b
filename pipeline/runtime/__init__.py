"""What every distributed job shares (imports only ``pipeline.io``).

| module | job |
| --- | --- |
| ``cluster`` | join the submitted or running Ray cluster, or start a local one |
| ``preflight`` | before any work: the driver and a cluster task read the input, write the output |
| ``resources`` | worker plan: how many, GPU or CPU, CPUs each (actors and Ray Train); shortfall |
| ``actor_state`` | what Ray's control store knows of an actor: state, restarts, why it died |
| ``lease`` | one run per output: a lease record with owner and heartbeat, taken over when stale |
| ``memory`` | process memory (peak RSS) for build and serving reports |
| ``records`` | versions and timestamps for run records; the one fingerprint check |
| ``metrics`` | Ray application metrics (Prometheus) |
| ``progress`` | a bar on a terminal, periodic log lines otherwise |
| ``producer`` | a bounded producer thread (shard reading, training batches) |
| ``failpoints`` | fault injection for the crash tests (off unless ``GLAM_FAILPOINTS``) |
"""
