"""PCA-whitening: the fit against a NumPy reference written here (cirtorch's formulas), the
whitened output decorrelated, the file through jobs/learn_whitening.py, the index applying it
to stored vectors and queries, and a model head absorbing it (exactly, where it can)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glam import ExtractConfig, GlamConfig, GlamExtractor, build_glam, save_checkpoint
from glam.whiten_head import fold_whitening
from jobs.build_index import main as build_main
from jobs.learn_whitening import main as learn_main
from pipeline.index.search import ShardedIndex
from pipeline.index.versions import read_latest
from pipeline.index.whitening import Whitening, fit_whitening, read_whitening
from pipeline.io.storage import WEIGHTS_STORE, exists, join
from tests.support.descriptors import DIM, unit, write_descriptor_file, write_folder


def correlated(n: int, d: int, seed: int) -> np.ndarray:
    """Unit descriptors with very unequal variances and correlated dimensions."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(d, d)) * np.linspace(3.0, 0.1, d)[:, None]
    return unit(rng.normal(size=(n, d)) @ mix + 0.5)


def reference_pca_whitening(x: np.ndarray, s: float) -> tuple[np.ndarray, np.ndarray]:
    """cirtorch's pcawhitenlearn on (d, N) columns, with eigenvalues to the power -s/2."""
    xt = x.T.astype(np.float64)
    m = xt.mean(axis=1, keepdims=True)
    xc = xt - m
    cov = xc @ xc.T
    cov = (cov + cov.T) / (2 * xt.shape[1])
    eigval, eigvec = np.linalg.eig(cov)
    order = eigval.argsort()[::-1]
    eigval, eigvec = eigval[order].real, eigvec[:, order].real
    p = np.diag(eigval ** (-s / 2)) @ eigvec.T
    return m[:, 0], p


def same_up_to_row_sign(a: np.ndarray, b: np.ndarray) -> None:
    signs = np.sign((a * b).sum(axis=1))
    np.testing.assert_allclose(a, b * signs[:, None], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("shrinkage", [1.0, 0.5, 0.0])
def test_fit_matches_the_numpy_reference(shrinkage: float) -> None:
    x = correlated(600, 12, seed=1)
    w = fit_whitening(x, dim=8, shrinkage=shrinkage)
    m, p = reference_pca_whitening(x, shrinkage)
    np.testing.assert_allclose(w.mean, m, rtol=1e-12, atol=1e-12)
    same_up_to_row_sign(w.projection, p[:8])
    assert (w.dim_in, w.dim_out, w.samples) == (12, 8, 600)


def test_whitened_descriptors_are_decorrelated() -> None:
    x = correlated(2000, 16, seed=2)
    assert np.abs(np.corrcoef(x.T) - np.eye(16)).max() > 0.3  # correlated to begin with
    w = fit_whitening(x, dim=10)
    y = (x - w.mean) @ w.projection.T  # before the final L2
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(10), atol=1e-8)
    rotation = fit_whitening(x, dim=10, shrinkage=0.0)  # PCA: decorrelated, variances kept
    c = np.cov(((x - rotation.mean) @ rotation.projection.T).T, bias=True)
    np.testing.assert_allclose(c - np.diag(np.diag(c)), 0, atol=1e-10)
    assert np.all(np.diff(np.diag(c)) <= 0)
    out = w.apply(x)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(out, unit(y), rtol=1e-5, atol=1e-6)


def test_round_trip_and_bad_files() -> None:
    w = fit_whitening(correlated(100, 6, seed=3), dim=4)
    back = Whitening.from_bytes(w.to_bytes())
    np.testing.assert_array_equal(back.projection, w.projection)
    with pytest.raises(ValueError, match="not a whitening file"):
        Whitening.from_bytes(b"not safetensors at all")


def test_learn_whitening_job_fits_on_parquet(s3_bucket: str, capsys) -> None:
    desc = f"s3://{s3_bucket}/desc"
    _, x = write_folder(desc, 3, 200, seed=4)
    out = f"s3://{s3_bucket}/w/whitening.safetensors"
    assert learn_main(["--descriptors", desc, "--output", out, "--dim", "16"]) == 0
    assert "600 descriptors, 32 -> 16 dims" in capsys.readouterr().out
    w, _ = read_whitening(out)
    expected = fit_whitening(x, dim=16)  # every row (fewer than --max-samples)
    np.testing.assert_allclose(w.projection, expected.projection, rtol=1e-9, atol=1e-12)
    assert w.descriptor_model["weights_sha256"] == "a" * 64
    assert learn_main(["--descriptors", desc, "--output", out, "--dim", "64"]) == 1
    assert "exceeds the descriptors' dimension" in capsys.readouterr().err


def test_index_whitens_stored_vectors_and_queries(ray_local, s3_bucket: str, capsys) -> None:
    desc, out = f"s3://{s3_bucket}/desc", f"s3://{s3_bucket}/idx"
    _, x = write_folder(desc, 2, 150, seed=5)
    wfile = f"s3://{s3_bucket}/whitening.safetensors"
    assert learn_main(["--descriptors", desc, "--output", wfile, "--dim", "24"]) == 0
    args = ["--descriptors", desc, "--output", out, "--shards", "2"]
    assert build_main(args) == 0
    plain = read_latest(out)[0]
    assert build_main([*args, "--whitening", wfile]) == 0  # a new configuration: new version
    version, manifest = read_latest(out)
    assert version != plain and manifest.dim == 24
    record = manifest.whitening
    assert record is not None and (record.dim_in, record.dim_out) == (DIM, 24)
    assert exists(join(out, version, record.file))  # a copy travels with the version
    w, sha = read_whitening(wfile)
    assert record.sha256 == sha
    index = ShardedIndex.load(out)
    q = unit(np.random.default_rng(6).normal(size=(5, DIM)))
    found = index.search(q, 10)  # raw queries: the index whitens them
    scores = w.apply(q) @ w.apply(x).T
    np.testing.assert_array_equal(found.ids, np.argsort(-scores, axis=1, kind="stable")[:, :10])
    assert build_main([*args, "--whitening", wfile]) == 0
    assert "up to date" in capsys.readouterr().out


def test_whitening_of_another_model_is_refused(ray_local, s3_bucket: str, capsys) -> None:
    desc = f"s3://{s3_bucket}/desc"
    write_folder(desc, 1, 50)
    other = f"s3://{s3_bucket}/other"
    write_descriptor_file(
        f"{other}/part-0.parquet", [f"o{i}" for i in range(40)], correlated(40, DIM, 7), "b" * 64
    )
    wfile = f"s3://{s3_bucket}/w.safetensors"
    assert learn_main(["--descriptors", other, "--output", wfile]) == 0
    out = f"s3://{s3_bucket}/idx"
    assert build_main(["--descriptors", desc, "--output", out, "--whitening", wfile]) == 1
    assert "differs in: weights_sha256" in capsys.readouterr().err
    assert not exists(f"{out}/LATEST")


def descriptors_of(model, images: torch.Tensor) -> np.ndarray:
    return GlamExtractor(model, ExtractConfig(scales=(1.0,)))(list(images)).numpy()


def test_whitening_becomes_the_head_of_an_identity_head_model(tmp_path, capsys) -> None:
    """A converted network without whitening (FC = identity): learn_whitening --checkpoint
    writes a model whose single-scale descriptor is L2(P (d - m))."""
    from glam.convert import identity_bn

    cfg = GlamConfig(backbone="resnet18", dim=512, attention="none")
    model = build_glam(config=cfg, seed=1)
    with torch.no_grad():
        model.fc.weight.copy_(torch.eye(512) * 2.0)  # a positive multiple of the identity
        for k, v in identity_bn(512, model.bn.eps).items():
            model.state_dict()[k].copy_(v)
    ckpt = str(tmp_path / "identity-head.safetensors")
    model.weights_sha256 = save_checkpoint(model, ckpt, store=WEIGHTS_STORE)
    images = torch.rand(40, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    d = descriptors_of(build_glam(ckpt), images)
    meta_sha = model.weights_sha256
    write_descriptor_file(
        str(tmp_path / "desc" / "part-0.parquet"), [f"i{i}" for i in range(40)], d, meta_sha
    )
    wfile, out = str(tmp_path / "w.safetensors"), str(tmp_path / "whitened.safetensors")
    args = ["--descriptors", str(tmp_path / "desc"), "--output", wfile, "--dim", "32"]
    assert learn_main([*args, "--checkpoint", ckpt, "--output-checkpoint", out]) == 0
    w, _ = read_whitening(wfile)
    whitened = build_glam(out)
    assert whitened.config.dim == 32 and whitened.config.head_prenorm
    got = descriptors_of(whitened, images[:5])
    np.testing.assert_allclose(got, w.apply(d[:5]), rtol=1e-4, atol=2e-5)
    # Another model's checkpoint is refused; so is a trained head (pointing at the index).
    trained = build_glam(config=GlamConfig(backbone="resnet18", dim=512, attention="none"))
    path = str(tmp_path / "trained.safetensors")
    save_checkpoint(trained, path, store=WEIGHTS_STORE)
    assert learn_main([*args, "--checkpoint", path, "--output-checkpoint", out]) == 1
    assert "fitted on descriptors of other weights" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"has a trained FC.*build_index\.py --whitening"):
        fold_whitening(trained, w.mean, w.projection)
