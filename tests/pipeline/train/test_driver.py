"""The training driver's checks and error reporting, without a cluster."""

from __future__ import annotations

import pytest

from pipeline.datasets.train_manifest import TrainDataset
from pipeline.train.driver import check_steps, root_cause
from pipeline.train.spec import TrainJob

WRAPPED = """Training failed due to worker errors:
[Rank 0 Error Snippet]:
(RayTrainWorker pid=2996) Traceback (most recent call last):
  File "pipeline/train_loop.py", line 120, in train_worker
urllib.error.URLError: <urlopen error [Errno -2] Name or service not known>
glam.weights.WeightsUnavailableError: ImageNet weights for resnet101 are not cached
ray.train.WorkerGroupError: Training failed due to worker errors:"""


def test_root_cause_is_the_innermost_error_line_not_rays_wrapper() -> None:
    assert root_cause(RuntimeError(WRAPPED)) == (
        "WeightsUnavailableError: ImageNet weights for resnet101 are not cached"
    )
    assert root_cause(ValueError("just this\nand more")) == "ValueError: just this"
    assert root_cause(KeyError()) == "KeyError()"


def dataset(shards: int, samples: int) -> TrainDataset:
    return TrainDataset(tuple(f"s3://b/{i}.tar" for i in range(shards)), 10, samples)


def test_check_steps() -> None:
    job = TrainJob(input="x", output="y")  # global batch 64
    assert check_steps(job, dataset(8, 1000), world=4) == 15
    with pytest.raises(ValueError, match="does not split over 3 workers"):
        check_steps(job, dataset(8, 1000), world=3)
    with pytest.raises(ValueError, match="2 shards cannot feed 4 workers"):
        check_steps(job, dataset(2, 1000), world=4)
    with pytest.raises(ValueError, match="fewer than one batch"):
        check_steps(job, dataset(8, 63), world=1)


def test_fingerprint_ignores_cadence_and_retries_but_not_the_recipe() -> None:
    from dataclasses import replace

    from glam.recipe import TrainConfig
    from pipeline.train.spec import fingerprint

    job, ds = TrainJob(input="x", output="y"), dataset(8, 1000)
    same = replace(job, log_every=7, checkpoint_every=3, max_failures=9, decode_threads=2)
    assert fingerprint(job, ds, 2) == fingerprint(same, ds, 2)
    assert fingerprint(job, ds, 2) != fingerprint(replace(job, train=TrainConfig(lr=0.01)), ds, 2)
    assert fingerprint(job, ds, 2) != fingerprint(job, ds, 4)  # another data split
    assert TrainJob.from_dict(job.to_dict()) == job


@pytest.mark.parametrize(
    "kw", [{"workers": 0}, {"checkpoint_every": 0}, {"device": "tpu"}, {"max_failures": -1}]
)
def test_bad_job_is_refused(kw: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TrainJob(input="x", output="y", **kw)  # type: ignore[arg-type]
