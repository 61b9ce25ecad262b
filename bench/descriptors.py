"""Generated global descriptors with the structure of real ones, regenerated from seeds in blocks
(no dataset has to fit in memory or on disk: row r is the same whichever range asks for it).

The model, and why (real GLAM/GeM descriptors are not uniform on the sphere; uniform 512-d
vectors have no near neighbours and every index scores ~0 recall on them):

- an anisotropic space: a random rotation Q of a diagonal spectrum, per-axis standard
  deviation ∝ (i + 1)^(-α/2) with α = 0.7, an effective dimensionality of ~150 of the 512
  (CNN descriptors keep most of their retrieval quality after PCA to 128-256 dimensions);
- landmarks: ``clusters`` centres drawn in that space; half the images belong to a landmark,
  chosen with probability ∝ (rank + 1)^(-0.8) (a few landmarks have thousands of images, most a
  handful: the largest of 100,000 holds ~2% of the landmark images, as in GLDv2);
- each landmark image is its centre plus anisotropic noise of relative norm σ = 0.75:
  cosine ≈ 0.8 to the centre and ≈ 0.64 between two images of one landmark;
- the other half are unrelated images (background draws from the same anisotropic space);
- every descriptor is L2-normalised, float32.

Queries are new images of landmarks drawn with the same probabilities (revisitop-style: every
query has positives), so their nearest neighbours are a mix of landmark images and background.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch

BLOCK = 100_000  # rows generated together from one seed


@dataclass(frozen=True)
class DescriptorModel:
    dim: int = 512
    clusters: int = 100_000
    landmark_fraction: float = 0.5
    zipf: float = 0.8
    alpha: float = 0.7
    sigma: float = 0.75
    seed: int = 0

    @cached_property
    def _space(self) -> torch.Tensor:
        """diag(std) Qᵀ (d, d): Q a random rotation, per-axis std with Σ std² = 1."""
        rng = np.random.default_rng([self.seed, 1])
        q, _ = np.linalg.qr(rng.standard_normal((self.dim, self.dim)))
        std = (np.arange(self.dim) + 1.0) ** (-self.alpha / 2)
        std /= np.linalg.norm(std)
        return torch.from_numpy((std[:, None] * q.T).astype(np.float32))

    def _draw(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        """n points of the anisotropic space (n, d), each of expected norm 1."""
        g = torch.Generator().manual_seed(int(rng.integers(2**63)))
        return torch.randn(n, self.dim, generator=g) @ self._space

    @cached_property
    def centres(self) -> torch.Tensor:
        return _unit(self._draw(np.random.default_rng([self.seed, 2]), self.clusters))

    @cached_property
    def _popularity(self) -> np.ndarray:
        p = (np.arange(self.clusters) + 1.0) ** (-self.zipf)
        return p / p.sum()

    def _landmark_images(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        which = torch.from_numpy(rng.choice(self.clusters, size=n, p=self._popularity))
        return _unit(self.centres[which] + self.sigma * self._draw(rng, n))

    def block(self, b: int) -> np.ndarray:
        """Rows [b·BLOCK, (b+1)·BLOCK) of the data set (BLOCK, d) float32."""
        rng = np.random.default_rng([self.seed, 3, b])
        landmark = torch.from_numpy(rng.random(BLOCK) < self.landmark_fraction)
        x = _unit(self._draw(rng, BLOCK))
        x[landmark] = self._landmark_images(rng, int(landmark.sum()))
        return x.numpy()

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) (n, d), the same whichever range asks for them."""
        first, last = start // BLOCK, (stop - 1) // BLOCK
        x = np.concatenate([self.block(b) for b in range(first, last + 1)])
        return x[start - first * BLOCK : stop - first * BLOCK]

    def queries(self, n: int) -> np.ndarray:
        """``n`` query descriptors: new images of landmarks (n, d)."""
        return self._landmark_images(np.random.default_rng([self.seed, 4]), n).numpy()


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=1)
