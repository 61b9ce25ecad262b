"""The trunk built in glam/backbone.py against torchvision's ResNets: the same keys, shapes and
module order (torchvision checkpoints load as they are), the same seeded random weights, the
same function; and importing glam does not import torchvision (it costs seconds per process)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torchvision

from glam.backbone import ResNetTrunk
from glam.config import BACKBONE_CHANNELS


@pytest.mark.parametrize("name", sorted(BACKBONE_CHANNELS))
def test_the_trunk_has_torchvisions_keys_shapes_and_module_order(name: str) -> None:
    with torch.device("meta"):  # no storage, no init: every depth in milliseconds
        ours, theirs = ResNetTrunk(name), torchvision.models.get_model(name, weights=None)
    want = {k: v.shape for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    assert {k: v.shape for k, v in ours.state_dict().items()} == want
    assert list(ours.state_dict()) == list(want)  # keys in torchvision's order
    names = [n for n, _ in ours.named_modules() if n]
    assert names == [n for n, _ in theirs.named_modules() if n and n not in ("avgpool", "fc")]


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])  # each kind of block
def test_a_seeded_random_trunk_is_torchvisions(name: str) -> None:
    torch.manual_seed(3)
    ours = ResNetTrunk(name)
    torch.manual_seed(3)
    theirs = torchvision.models.get_model(name, weights=None, zero_init_residual=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[key]), key  # same draws, one process


def test_the_trunk_computes_torchvisions_features() -> None:
    theirs = torchvision.models.resnet50().eval()
    ours = ResNetTrunk("resnet50").eval()
    trunk = {k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(trunk, strict=True)
    x = torch.randn(2, 3, 80, 64)
    with torch.no_grad():
        want = torch.nn.Sequential(*list(theirs.children())[:-2])(x)
        torch.testing.assert_close(ours(x), want, rtol=0, atol=0)  # same ops, same process


def test_importing_glam_and_the_actors_does_not_import_torchvision() -> None:
    code = (
        "import sys, glam, glam.batchnorm_fold, pipeline.extract.actors, pipeline.train.worker; "
        "print(sorted(m for m in ('torchvision', 'torch._dynamo') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
