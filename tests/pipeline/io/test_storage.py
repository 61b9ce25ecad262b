from __future__ import annotations

import json

import pytest

from glam import build_glam, save_checkpoint
from glam.config import GlamConfig
from pipeline.io.storage import WEIGHTS_STORE, CredentialsInUriError

KEY, SECRET = "AKIAEXAMPLEKEY0001", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.slow
def test_weights_reach_the_endpoint_given_only_in_the_storage_options(
    s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the endpoint in GLAM_STORAGE_OPTIONS alone, checkpoints are written and read
    there, as every other object is (not at AWS's default endpoint)."""
    import s3fs

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    options = {"client_kwargs": {"endpoint_url": s3_endpoint}}
    monkeypatch.setenv("GLAM_STORAGE_OPTIONS", json.dumps(options))
    s3fs.S3FileSystem.clear_instance_cache()
    uri = f"s3://{s3_bucket}/weights/glam.safetensors"
    model = build_glam(config=GlamConfig(backbone="resnet18"), seed=3)
    sha = save_checkpoint(model, uri, store=WEIGHTS_STORE)
    again = build_glam(uri, store=WEIGHTS_STORE)
    assert again.weights_sha256 == sha and again.config == model.config


@pytest.mark.parametrize("uri", [f"s3://{KEY}:{SECRET}@bucket/w.pt", f"s3://{KEY}@bucket/w.pt"])
def test_weights_uris_with_credentials_are_refused(uri: str) -> None:
    with pytest.raises(CredentialsInUriError) as refused:
        WEIGHTS_STORE.read(uri)
    assert SECRET not in str(refused.value) and KEY not in str(refused.value)


def test_convert_weights_refuses_credentials_in_its_source(capsys, tmp_path) -> None:
    from jobs import convert_weights

    source = f"s3://{KEY}:{SECRET}@bucket/retrieval-SfM-120k.pth"
    out = tmp_path / "glam.safetensors"
    argv = ["--source", source, "--format", "cirtorch", "--output", str(out)]
    assert convert_weights.main(argv) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith("error: CredentialsInUriError")
    assert SECRET not in err and KEY not in err and not out.exists()
