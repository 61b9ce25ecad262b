"""A PCA-whitening as the FC of a model's head (``jobs/learn_whitening.py --checkpoint``).

Given a whitening (m, P) fitted on a model's unit descriptors d = L2(GeM(F)), the new head
computes d' = L2(P (L2(GeM(F)) - m)): ``head_prenorm``, FC weight P and bias -P m, identity batch
norm. This is exact only when the model's descriptor *is* L2(GeM(F)), i.e. its FC followed by its
batch norm is a positive multiple of the identity: a converted network without whitening
(``jobs/convert_weights.py``). A trained FC cannot absorb it (an L2 normalisation sits between
the FC and the whitening); there the whitening belongs in the index (``build_index.py
--whitening``), which applies it to the descriptors exactly.

In the head the whitening acts per scale, before the scales are averaged (as cirtorch's
end-to-end ``whiten`` layer); in the index it acts on the multi-scale descriptor (as cirtorch's
``Lw`` post-processing). With one scale both are the same function.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from glam.convert import identity_bn
from glam.model import GLAM
from glam.weights import load_state_dict_strict


@torch.no_grad()
def head_affine(model: GLAM) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, c) with BN(FC(x)) = A x + c in eval mode: A (dim, C), c (dim,), float64."""
    bn = model.bn
    if bn.running_var is None or bn.running_mean is None or bn.weight is None or bn.bias is None:
        raise ValueError("the head's batch norm has no running statistics or affine terms")
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    fc_bias = model.fc.bias.double() if model.fc.bias is not None else 0.0
    a = scale[:, None] * model.fc.weight.double()
    c = scale * (fc_bias - bn.running_mean.double()) + bn.bias.double()
    return a, c


def is_identity_head(model: GLAM, rtol: float = 1e-5) -> bool:
    """True when BN(FC(x)) = s x for some s > 0 (so the descriptor is L2(GeM(F)))."""
    a, c = head_affine(model)
    if a.shape[0] != a.shape[1]:
        return False
    s = float(a.diagonal().mean())
    eye = torch.eye(a.shape[0], dtype=a.dtype)
    return s > 0 and bool((a - s * eye).abs().max() <= rtol * s and c.abs().max() <= rtol * s)


def fold_whitening(model: GLAM, mean: np.ndarray, projection: np.ndarray) -> GLAM:
    """A new model whose descriptor is L2(P (d - m)) of ``model``'s d = L2(GeM(F)).

    mean: (C,), projection: (D, C) (``pipeline.index.whitening.Whitening``)."""
    c = model.config.channels
    if mean.shape != (c,) or projection.ndim != 2 or projection.shape[1] != c:
        raise ValueError(
            f"a whitening of {projection.shape[1] if projection.ndim == 2 else '?'}-d "
            f"descriptors does not fit this model's {c}-d GeM vector"
        )
    if not is_identity_head(model):
        raise ValueError(
            "this model's head has a trained FC: a whitening fitted on its unit descriptors "
            "cannot be folded into it exactly (an L2 normalisation sits between them); apply it "
            "in the index instead (build_index.py --whitening)"
        )
    p = torch.from_numpy(np.asarray(projection, dtype=np.float64))
    m = torch.from_numpy(np.asarray(mean, dtype=np.float64))
    cfg = dataclasses.replace(model.config, dim=p.shape[0], head_prenorm=True, fc_bias=True)
    new = GLAM(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(("fc.", "bn."))}
    state["fc.weight"] = p.float()
    state["fc.bias"] = (-(p @ m)).float()
    state.update(identity_bn(cfg.dim, new.bn.eps))
    load_state_dict_strict(new, state, source="the whitened head")
    return new.eval()
