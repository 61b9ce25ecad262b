"""PCA-whitening of descriptors: fitted on descriptor Parquet, stored as a small safetensors
file, applied to the stored vectors of an index version and, at search, to every query.

Fit (Radenović, Tolias, Chum, TPAMI 2018, §4.2, "PCA whitening"; cirtorch's
``utils/whiten.py`` ``pcawhitenlearn``): m = mean(X), C = (X - m)ᵀ(X - m) / N = V Λ Vᵀ with
eigenvalues in decreasing order, P = Λ^(-s/2) Vᵀ. Apply (cirtorch's ``whitenapply``):
x ↦ L2(P[:D] (x - m)). The shrinkage s (Tolias, Jenicek, Chum, ECCV 2020, "whitening with
shrinkage") interpolates between a PCA rotation (s = 0) and full whitening (s = 1, cirtorch's).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import safetensors.numpy

from pipeline.io.descriptor_reader import (
    check_same_model,
    list_descriptor_files,
    random_descriptors,
)
from pipeline.io.storage import WEIGHTS_STORE, read_bytes, write_bytes_atomic

log = logging.getLogger(__name__)

FORMAT = "glam-whitening"
# NOTE: not in the references: eigenvalues below this fraction of the largest are raised to
# it. Without a floor a sample smaller than the dimension (or collinear descriptors) divides
# by zero in the null directions.
EIGENVALUE_FLOOR = 1e-9


@dataclass(frozen=True)
class WhiteningConfig:
    # Output dimension D (rows of P kept, by decreasing variance); None: the input's.
    dim: int | None = None
    # s in P = Λ^(-s/2) Vᵀ: 1 full whitening (cirtorch), 0 PCA rotation only.
    shrinkage: float = 1.0
    # Descriptors drawn uniformly at random (without replacement) to fit on; all when fewer.
    max_samples: int = 1_000_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dim is not None and self.dim <= 0:
            raise ValueError(f"dim must be positive, got {self.dim}")
        if not 0.0 <= self.shrinkage <= 1.0:
            raise ValueError(f"shrinkage must be in [0, 1], got {self.shrinkage}")
        if self.max_samples < 2:
            raise ValueError(f"max_samples must be at least 2, got {self.max_samples}")


@dataclass(frozen=True)
class Whitening:
    mean: np.ndarray  # m: (d,) float64
    projection: np.ndarray  # P[:D]: (D, d) float64, rows by decreasing eigenvalue
    shrinkage: float
    samples: int  # N, descriptors it was fitted on
    # The model identity of the descriptors it was fitted on (Parquet metadata).
    descriptor_model: dict[str, str] = field(default_factory=dict)

    @property
    def dim_in(self) -> int:
        return int(self.projection.shape[1])

    @property
    def dim_out(self) -> int:
        return int(self.projection.shape[0])

    def apply(self, x: np.ndarray) -> np.ndarray:
        """L2(P (x - m)) for descriptors x (n, d): float32 (n, D), unit rows."""
        if x.ndim != 2 or x.shape[1] != self.dim_in:
            raise ValueError(
                f"whitening expects descriptors of dimension {self.dim_in}, got {x.shape}"
            )
        y = (x.astype(np.float64) - self.mean) @ self.projection.T
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        return (y / np.maximum(norms, 1e-12)).astype(np.float32)

    def to_bytes(self) -> bytes:
        meta = {
            "format": FORMAT,
            "shrinkage": repr(self.shrinkage),
            "samples": str(self.samples),
            "descriptor_model": json.dumps(self.descriptor_model, sort_keys=True),
        }
        tensors = {"mean": self.mean, "projection": self.projection}
        return bytes(safetensors.numpy.save(tensors, metadata=meta))

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "whitening") -> Whitening:
        try:
            tensors = safetensors.numpy.load(data)
            header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
            meta = header.get("__metadata__") or {}
        except Exception as e:  # corrupt bytes fail anywhere in the parser
            raise ValueError(f"{source} is not a whitening file ({type(e).__name__})") from None
        if meta.get("format") != FORMAT or {"mean", "projection"} - set(tensors):
            raise ValueError(f"{source} is not a whitening file written by learn_whitening.py")
        if not all(np.isfinite(tensors[k]).all() for k in ("mean", "projection")):
            raise ValueError(f"{source} holds NaN or infinite values: refit it")
        return cls(
            mean=tensors["mean"].astype(np.float64),
            projection=tensors["projection"].astype(np.float64),
            shrinkage=float(meta.get("shrinkage", 1.0)),
            samples=int(meta.get("samples", 0)),
            descriptor_model=json.loads(meta.get("descriptor_model", "{}")),
        )


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fit_whitening(x: np.ndarray, dim: int | None = None, shrinkage: float = 1.0) -> Whitening:
    """PCA-whitening (m, P[:dim]) of descriptors x (N, d), N >= 2, in float64.

    Each row of P has the sign that makes its largest-magnitude entry positive (eigenvectors
    are defined up to sign; this makes the fit deterministic)."""
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"need at least 2 descriptors (N, d) to fit a whitening, got {x.shape}")
    d = x.shape[1]
    dim = d if dim is None else dim
    if dim > d:
        raise ValueError(f"whitening dim {dim} exceeds the descriptors' dimension {d}")
    if len(x) <= dim:
        log.warning(
            "fitting a %d-d whitening on %d descriptors: the smallest directions are noise",
            dim,
            len(x),
        )
    x = x.astype(np.float64)
    mean = x.mean(axis=0)
    xc = x - mean
    cov = xc.T @ xc / len(x)  # C: (d, d), symmetric
    eigval, eigvec = np.linalg.eigh(cov)  # ascending
    order = np.argsort(eigval)[::-1][:dim]
    eigval = np.maximum(eigval[order], EIGENVALUE_FLOOR * max(float(eigval.max()), 1e-300))
    v = eigvec[:, order].T  # (dim, d): principal directions as rows
    signs = np.sign(v[np.arange(dim), np.abs(v).argmax(axis=1)])
    v *= signs[:, None]
    projection = v * eigval[:, None] ** (-shrinkage / 2.0)  # Λ^(-s/2) Vᵀ
    return Whitening(mean, projection, shrinkage, len(x))


def sample_descriptors(
    folder: str, max_samples: int, seed: int
) -> tuple[np.ndarray, dict[str, str]]:
    """Up to ``max_samples`` descriptors of ``folder`` drawn uniformly at random (all when
    fewer), and their model identity."""
    files = list_descriptor_files(folder)
    identity = check_same_model(files)
    return random_descriptors(files, max_samples, seed), identity


def learn_whitening(descriptors: str, output: str, cfg: WhiteningConfig) -> Whitening:
    """Fit a whitening on ``descriptors`` (an extraction output or a Parquet folder) and write
    it to ``output`` atomically."""
    x, identity = sample_descriptors(descriptors, cfg.max_samples, cfg.seed)
    log.info("fitting a whitening on %d descriptors of dimension %d", len(x), x.shape[1])
    fitted = fit_whitening(x, cfg.dim, cfg.shrinkage)
    whitening = Whitening(
        fitted.mean, fitted.projection, fitted.shrinkage, fitted.samples, identity
    )
    write_bytes_atomic(output, whitening.to_bytes())
    return whitening


def read_whitening(uri: str) -> tuple[Whitening, str]:
    """The whitening at ``uri`` and its file's sha256."""
    try:
        data = read_bytes(uri)
    except FileNotFoundError:
        raise ValueError(f"no whitening file at {uri}") from None
    return Whitening.from_bytes(data, uri), sha256_of(data)


def whiten_checkpoint(checkpoint: str, whitening: Whitening, output: str, label: str) -> str:
    """Write a copy of the GLAM checkpoint ``checkpoint`` whose FC is ``whitening``
    (``glam.whiten_head``), to ``output`` atomically; returns its sha256. ``label`` names the
    whitening in the checkpoint's metadata."""
    from glam import build_glam, save_checkpoint
    from glam.whiten_head import fold_whitening

    model = build_glam(checkpoint, store=WEIGHTS_STORE)
    fitted_on = whitening.descriptor_model.get("weights_sha256")
    if fitted_on and fitted_on != model.weights_sha256:
        raise ValueError(
            f"the whitening was fitted on descriptors of other weights (sha256 {fitted_on[:12]}…) "
            f"than {checkpoint} ({model.weights_sha256[:12]}…)"
        )
    scales = json.loads(whitening.descriptor_model.get("scales", "[1.0]"))
    if len(scales) > 1:
        log.info(
            "the whitening was fitted on %d-scale descriptors; in the head it applies per "
            "scale (exactly the index's whitening only with one scale)",
            len(scales),
        )
    whitened = fold_whitening(model, whitening.mean, whitening.projection)
    record = {"whitening": label, "dim_out": whitening.dim_out, "shrinkage": whitening.shrinkage}
    return save_checkpoint(
        whitened, output, metadata={"whitened": json.dumps(record)}, store=WEIGHTS_STORE
    )
