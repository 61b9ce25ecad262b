"""Generated global descriptors with the structure of real ones, regenerated from seeds in blocks
(no dataset has to fit in memory or on disk: row r is the same whichever range asks for it).

The model, and why (real GLAM/GeM descriptors are not uniform on the sphere; uniform 512-d
vectors have no near neighbours and every index scores ~0 recall on them):

- an anisotropic space: a random rotation Q of a diagonal spectrum, per-axis standard
  deviation ∝ (i + 1)^(-α/2) with α = 0.7: an effective dimensionality of ~130 of the 512
  (CNN descriptors keep most of their retrieval quality after PCA to 128-256 dimensions);
- a hierarchy, as in photo collections: 2,000 categories (kinds of scene), and 100,000
  landmarks, each in one category (landmark centre = category centre + noise of relative norm
  τ = 1: cosine ≈ 0.7 to its category);
- half the images show a landmark, chosen with probability ∝ (rank + 1)^(-0.8) (a few landmarks
  have thousands of images, most a handful: the largest of 100,000 holds ~2% of the landmark
  images, as in GLDv2): landmark centre + noise σ = 0.75 (cosine ≈ 0.8 to the centre, ≈ 0.64
  between two images of one landmark);
- the other half show no landmark: a category (probability ∝ (rank + 1)^(-0.5)) + noise
  ρ = 1.4 (cosine ≈ 0.3 to other images of the category, ≈ 0 ± 0.09 across categories);
- every descriptor is L2-normalised, float32.

Queries are new images of landmarks drawn with the same probabilities (revisitop-style: every
query has positives), so their nearest neighbours are a few images of their landmark, then
images of the same category: what makes approximate search hard is the long tail of
similar-looking, unrelated images, as in R1M.
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
    categories: int = 2_000
    clusters: int = 100_000  # landmarks
    landmark_fraction: float = 0.5
    zipf: float = 0.8  # landmark popularity
    category_zipf: float = 0.5
    alpha: float = 0.7
    rank: int = 16  # dimensions in which images of one category vary
    subspace_sets: int = 64
    tau: float = 1.0  # landmark centre around its category (in the category's subspace)
    sigma: float = 0.6  # landmark image around its landmark (in the category's subspace)
    rho: float = 1.0  # other image around its category (in the category's subspace)
    epsilon: float = 0.3  # noise in all dimensions, on every image and landmark centre
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
    def category_centres(self) -> torch.Tensor:
        return _unit(self._draw(np.random.default_rng([self.seed, 5]), self.categories))

    @cached_property
    def subspaces(self) -> torch.Tensor:
        """``subspaces`` sets of ``rank`` directions (subspaces, rank, d), scaled so that a
        standard normal combination has expected norm 1; category c varies in set c mod
        ``subspaces`` (kinds of scene share modes of variation: viewpoint, light, season)."""
        rng = np.random.default_rng([self.seed, 6])
        basis = self._draw(rng, self.subspace_sets * self.rank)
        return basis.reshape(self.subspace_sets, self.rank, -1) / np.sqrt(self.rank)

    def _near(
        self, rng: np.random.Generator, centres: torch.Tensor, category: np.ndarray, scale: float
    ) -> torch.Tensor:
        """unit(centre + scale · (noise in its category's subspace) + ε · noise in all dims)."""
        g = torch.Generator().manual_seed(int(rng.integers(2**63)))
        coeff = torch.randn(len(category), self.rank, generator=g)
        within = torch.empty(len(category), self.dim)
        subspace = category % self.subspace_sets
        order = np.argsort(subspace, kind="stable")
        sets, starts = np.unique(subspace[order], return_index=True)
        for c, rows in zip(sets, np.split(torch.from_numpy(order), starts[1:]), strict=True):
            within[rows] = coeff[rows] @ self.subspaces[c]  # (n_c, rank) @ (rank, d)
        return _unit(centres + scale * within + self.epsilon * self._draw(rng, len(category)))

    @cached_property
    def _landmark_category(self) -> np.ndarray:
        return np.random.default_rng([self.seed, 2]).integers(0, self.categories, self.clusters)

    @cached_property
    def centres(self) -> torch.Tensor:
        """Landmark centres (clusters, d), each near the centre of its category."""
        category = self._landmark_category
        rng = np.random.default_rng([self.seed, 7])
        return self._near(rng, self.category_centres[category], category, self.tau)

    @cached_property
    def _popularity(self) -> np.ndarray:
        p = (np.arange(self.clusters) + 1.0) ** (-self.zipf)
        return p / p.sum()

    @cached_property
    def _category_popularity(self) -> np.ndarray:
        p = (np.arange(self.categories) + 1.0) ** (-self.category_zipf)
        return p / p.sum()

    def _other_images(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        which = rng.choice(self.categories, size=n, p=self._category_popularity)
        return self._near(rng, self.category_centres[which], which, self.rho)

    def _landmark_images(self, rng: np.random.Generator, n: int) -> torch.Tensor:
        which = rng.choice(self.clusters, size=n, p=self._popularity)
        return self._near(rng, self.centres[which], self._landmark_category[which], self.sigma)

    def block(self, b: int) -> np.ndarray:
        """Rows [b·BLOCK, (b+1)·BLOCK) of the data set (BLOCK, d) float32."""
        rng = np.random.default_rng([self.seed, 3, b])
        landmark = torch.from_numpy(rng.random(BLOCK) < self.landmark_fraction)
        x = self._other_images(rng, BLOCK)
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
