"""Object-store access through fsspec: any local path, ``file://`` or ``s3://`` URI.

S3 endpoints and credentials come from the standard AWS variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from pipeline.io.redact import has_userinfo, redact_text


class CredentialsInUriError(ValueError):
    """A URI that carries credentials: refused before anything reads or logs it."""


def check_uri(uri: str) -> str:
    """``uri`` unchanged, or a refusal when it carries credentials (``s3://KEY:SECRET@b/…``):
    they would travel in logs, job records, Parquet metadata and Ray's dashboard."""
    if has_userinfo(uri):
        raise CredentialsInUriError(
            f"{redact_text(uri)}: credentials in a URI are refused (they would reach logs and "
            "records); give them through the environment (AWS_ACCESS_KEY_ID, ...), workload "
            "identity, or GLAM_STORAGE_OPTIONS"
        )
    return uri


def storage_options(uri: str) -> dict[str, Any]:
    """Options for the filesystem of ``uri``: the S3 endpoint from ``AWS_ENDPOINT_URL``, merged
    with the JSON object in ``GLAM_STORAGE_OPTIONS`` (s3fs options such as ``key``/``secret``
    or ``profile``; it is never logged or written)."""
    if not uri.startswith(("s3://", "s3a://")):
        return {}
    options: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["client_kwargs"] = {"endpoint_url": endpoint}
    extra = os.environ.get("GLAM_STORAGE_OPTIONS")
    if extra:
        try:
            parsed = json.loads(extra)
        except json.JSONDecodeError:
            raise ValueError("GLAM_STORAGE_OPTIONS is not a JSON object") from None
        if not isinstance(parsed, dict):
            raise ValueError("GLAM_STORAGE_OPTIONS is not a JSON object")
        client_kwargs = {**options.get("client_kwargs", {}), **parsed.pop("client_kwargs", {})}
        options.update(parsed)
        if client_kwargs:
            options["client_kwargs"] = client_kwargs
    return options


# A probe's S3 client: one attempt, short timeouts, so that an unreachable or misconfigured
# endpoint is told within seconds (the jobs' own clients retry with backoff for minutes).
_PROBE_CONFIG = {"connect_timeout": 5, "read_timeout": 20, "retries": {"max_attempts": 1}}


def filesystem(uri: str, probe: bool = False) -> tuple[AbstractFileSystem, str]:
    """The filesystem holding ``uri`` and the path inside it (``probe``: fail fast)."""
    options = storage_options(uri)
    if probe and options is not None and uri.startswith(("s3://", "s3a://")):
        options["config_kwargs"] = {**options.get("config_kwargs", {}), **_PROBE_CONFIG}
    fs, path = fsspec.core.url_to_fs(check_uri(uri), **options)
    if probe and hasattr(fs, "retries"):
        fs.retries = 1  # s3fs's own retries, on top of botocore's (an instance of its own)
    return fs, path


def endpoint(uri: str) -> str:
    """The storage endpoint this process uses for ``uri`` (never a credential)."""
    if not uri.startswith(("s3://", "s3a://")):
        return "the local filesystem"
    options = storage_options(uri)
    url = options.get("client_kwargs", {}).get("endpoint_url") or options.get("endpoint_url")
    region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "default"
    where = redact_text(str(url)) if url else "AWS's default S3 endpoint"
    return f"{where} (region {region})"


def is_local(fs: AbstractFileSystem) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else fs.protocol
    return "file" in protocols or "local" in protocols


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def unstrip(fs: AbstractFileSystem, path: str, like: str) -> str:
    """Put the protocol of ``like`` back on a path returned by ``fs`` (e.g. from glob)."""
    if "://" in like:
        return f"{like.split('://', 1)[0]}://{path}"
    return path if is_local(fs) else fs.unstrip_protocol(path)


def canonical_uri(uri: str) -> str:
    """One spelling per location: local paths absolute (``file://`` dropped), no trailing
    slash; other URIs as given."""
    uri = uri.removeprefix("file://").rstrip("/")
    return os.path.abspath(uri) if "://" not in uri else uri


def check_output_folder(output: str, input_folder: str, what: str) -> None:
    """Refuse an output folder that is the job's input folder (``what`` names the input)."""
    if canonical_uri(output) == canonical_uri(input_folder):
        raise ValueError(f"--output {output} is the folder of the {what}: use a folder of its own")


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.exists(path)


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write ``data`` so that no reader ever sees a partial object at ``uri``.

    Local: a temporary name in the same folder, fsync, then ``os.replace``. Object stores: a
    temporary key under ``_tmp/`` beside the target, then a server-side move (a PUT is atomic
    too; the temporary key also keeps half-uploaded multipart objects off the final name).
    """
    fs, path = filesystem(uri)
    if is_local(fs):
        folder, name = os.path.split(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        # Hidden name: Parquet readers (pyarrow, DuckDB globs) skip it while it is written.
        tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    parent, name = path.rsplit("/", 1)
    tmp = f"{parent}/_tmp/{name}.{uuid.uuid4().hex}"
    fs.pipe_file(tmp, data)
    try:
        fs.copy(tmp, path)
    finally:
        fs.rm_file(tmp)
    fs.invalidate_cache(parent)


def upload_file_atomic(local_path: str, uri: str) -> None:
    """Move a finished local file to ``uri`` without holding it in memory; atomic as
    ``write_bytes_atomic``. The local file is consumed."""
    fs, path = filesystem(uri)
    if is_local(fs):
        folder, name = os.path.split(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
        shutil.move(local_path, tmp)
        os.replace(tmp, path)
        return
    parent, name = path.rsplit("/", 1)
    tmp = f"{parent}/_tmp/{name}.{uuid.uuid4().hex}"
    try:
        fs.put_file(local_path, tmp)
        fs.copy(tmp, path)
        fs.rm_file(tmp)
    finally:
        os.remove(local_path)
    fs.invalidate_cache(parent)


def local_copy(uri: str) -> tuple[str, bool]:
    """A local path holding ``uri``'s bytes, and whether it is a temporary download."""
    fs, path = filesystem(uri)
    if is_local(fs):
        return path, False
    fd, tmp = tempfile.mkstemp(suffix="-" + path.rsplit("/", 1)[-1])
    os.close(fd)
    fs.get_file(path, tmp)
    return tmp, True


def list_names(folder: str, split_at: Sequence[str] = ()) -> Iterator[list[str]]:
    """The names of the objects directly in ``folder`` (not in its subfolders, not hidden),
    sorted, a part at a time: on S3 one LIST request per page of up to 1000 keys, names only
    (no per-object info dicts, nothing kept in s3fs's listing cache); elsewhere one part. A
    missing folder lists nothing.

    On S3, names in ``split_at`` cut the key range into parts listed concurrently (each from
    ``StartAfter`` its lower bound to its upper bound): a million keys are a thousand pages,
    100-200 s one after the other."""
    fs, path = filesystem(folder)
    call_s3 = getattr(fs, "_call_s3", None)
    if is_local(fs):
        try:
            with os.scandir(path) as entries:  # file types from the folder itself: no stat
                yield sorted(e.name for e in entries if e.is_file() and e.name[0] != ".")
        except (FileNotFoundError, NotADirectoryError):
            return
        return
    if call_s3 is None:  # another fsspec filesystem (memory, ...)
        fs.invalidate_cache(path)
        try:
            found = fs.ls(path, detail=True)
        except FileNotFoundError:
            return
        files = (f["name"].rstrip("/").rsplit("/", 1)[-1] for f in found if f["type"] == "file")
        yield sorted(n for n in files if not n.startswith("."))
        return
    from fsspec.asyn import sync

    bucket, _, key = path.partition("/")
    prefix = f"{key.strip('/')}/" if key.strip("/") else ""
    cuts = sorted(set(split_at))

    async def part(low: str | None, high: str | None) -> list[str]:
        """The names in (low, high]: None is open."""
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/"}
        if low is not None:
            kwargs["StartAfter"] = prefix + low
        names: list[str] = []
        while True:
            page = await call_s3("list_objects_v2", **kwargs)
            for c in page.get("Contents", []):
                name = c["Key"][len(prefix) :]
                if high is not None and name > high:
                    return names
                if name and not name.startswith("."):
                    names.append(name)
            if not page.get("IsTruncated"):
                return names
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    async def parts() -> list[list[str]]:
        lows: list[str | None] = [None, *cuts]
        highs: list[str | None] = [*cuts, None]
        ranges = zip(lows, highs, strict=True)
        return list(await asyncio.gather(*(part(lo, hi) for lo, hi in ranges)))

    yield from sync(fs.loop, parts)


def read_json(uri: str) -> Any | None:
    """The JSON document at ``uri``, or None when there is none."""
    fs, path = filesystem(uri)
    try:
        return json.loads(fs.cat_file(path))
    except FileNotFoundError:
        return None


def write_json_atomic(uri: str, obj: Any) -> None:
    write_bytes_atomic(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


# Conditional writes: the primitives behind leases (pipeline.runtime.lease). On object stores
# they are S3's conditional requests (If-None-Match: * to create, If-Match: ETag to replace or
# delete); locally an exclusive hard link and a lock file. A ``tag`` names one version of an
# object: its ETag, or locally the sha256 of its bytes.


class ConditionFailedError(RuntimeError):
    """The object exists (create) or changed since it was read (replace, delete)."""


def _s3_key(fs: AbstractFileSystem, path: str) -> tuple[str, str]:
    bucket, key, _ = fs.split_path(path)
    return bucket, key


def _precondition_failed(e: Exception) -> bool:
    if isinstance(e, FileExistsError):  # s3fs's translation of 412 Precondition Failed
        return True
    code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
    text = str(e).lower()
    return code in ("PreconditionFailed", "ConditionalRequestConflict", "412") or any(
        s in text for s in ("precondition", "pre-condition", "conditional request")
    )


def read_tagged(uri: str) -> tuple[bytes, str] | None:
    """(bytes, tag) of the object at ``uri``, or None when there is none."""
    fs, path = filesystem(uri)
    if is_local(fs):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return None
        return data, hashlib.sha256(data).hexdigest()
    bucket, key = _s3_key(fs, path)

    async def get() -> tuple[bytes, str]:  # body and ETag of one response: one version
        out = await fs._call_s3("get_object", Bucket=bucket, Key=key)
        async with out["Body"] as body:
            return await body.read(), str(out["ETag"])

    try:
        return fsspec.asyn.sync(fs.loop, get)
    except FileNotFoundError:
        return None


def create_exclusive(uri: str, data: bytes) -> str:
    """Write ``data`` at ``uri`` only if nothing is there (else ``ConditionFailedError``)."""
    fs, path = filesystem(uri)
    if is_local(fs):
        folder, name = os.path.split(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, f".{name}.tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if the name exists
        except FileExistsError:
            raise ConditionFailedError(f"{uri} exists") from None
        finally:
            os.remove(tmp)
        return hashlib.sha256(data).hexdigest()
    bucket, key = _s3_key(fs, path)
    try:
        out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfNoneMatch="*")
    except Exception as e:
        if _precondition_failed(e):
            raise ConditionFailedError(f"{uri} exists") from None
        raise
    fs.invalidate_cache(path)
    return str(out["ETag"])


@contextlib.contextmanager
def _local_lock(path: str) -> Iterator[None]:
    folder, name = os.path.split(os.path.abspath(path))
    with open(os.path.join(folder, f".{name}.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def replace_if(uri: str, data: bytes, tag: str) -> str:
    """Replace the object at ``uri`` with ``data`` only if it is still version ``tag``; the new
    tag (else ``ConditionFailedError``)."""
    fs, path = filesystem(uri)
    if is_local(fs):
        with _local_lock(path):
            current = read_tagged(uri)
            if current is None or current[1] != tag:
                raise ConditionFailedError(f"{uri} changed")
            write_bytes_atomic(uri, data)
        return hashlib.sha256(data).hexdigest()
    bucket, key = _s3_key(fs, path)
    try:
        out = fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, IfMatch=tag)
    except FileNotFoundError:
        raise ConditionFailedError(f"{uri} is gone") from None
    except Exception as e:
        if _precondition_failed(e):
            raise ConditionFailedError(f"{uri} changed") from None
        raise
    fs.invalidate_cache(path)
    return str(out["ETag"])


def delete_if(uri: str, tag: str) -> None:
    """Delete the object at ``uri`` only if it is still version ``tag`` (else
    ``ConditionFailedError``; an object already gone is fine)."""
    fs, path = filesystem(uri)
    if is_local(fs):
        with _local_lock(path):
            current = read_tagged(uri)
            if current is None:
                return
            if current[1] != tag:
                raise ConditionFailedError(f"{uri} changed")
            os.remove(path)
        return
    bucket, key = _s3_key(fs, path)
    try:
        fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=tag)
    except FileNotFoundError:
        return
    except Exception as e:
        if _precondition_failed(e):
            raise ConditionFailedError(f"{uri} changed") from None
        raise
    fs.invalidate_cache(path)


class _PipelineWeightsStore:
    """Checkpoints read and written as every other object of the pipeline is: this module's
    endpoint and ``GLAM_STORAGE_OPTIONS``, credentials in URIs refused, atomic writes
    (``glam.weights.WeightsStore``)."""

    def read(self, uri: str) -> bytes:
        return read_bytes(uri)

    def write_atomic(self, uri: str, data: bytes) -> None:
        write_bytes_atomic(uri, data)


WEIGHTS_STORE = _PipelineWeightsStore()
