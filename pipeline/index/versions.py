"""Index versions on storage: ``OUTPUT/<version>/`` folders with their ``manifest.json``, the
``LATEST`` pointer, listing and retention. The read side of an index: no Ray, no FAISS.

A version is complete once its manifest exists (written after every shard); LATEST moves to it
after that, so a reader that follows LATEST never sees a half-built version.

An incremental version reuses the shard files of older versions by reference instead of copying
them (``IndexManifest.shard_versions``): every file stays immutable, and pruning never deletes a
version that a kept version references.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.index.search_config import SearchParams
from pipeline.index.tuning_record import FactoryChoice, SearchTuning
from pipeline.io.storage import (
    filesystem,
    join,
    read_bytes,
    write_bytes_atomic,
    write_json_atomic,
)

log = logging.getLogger(__name__)

LATEST = "LATEST"
MANIFEST = "manifest.json"
INPUTS = "inputs.parquet"  # a version's inputs, beside its manifest
_INPUTS_FILE_KEY, _INPUT_COUNT_KEY = "inputs_file", "input_count"
_STAMP = "%Y%m%dT%H%M%S%fZ"


@dataclass(frozen=True)
class IndexInput:
    """One descriptor file a version was built from."""

    uri: str
    size: int
    etag: str  # changes when the file changes
    rows: int


@dataclass(frozen=True)
class WhiteningRecord:
    """A PCA-whitening applied to every stored vector and, at search, to every query
    (``pipeline.index.whitening``); its file is copied into the version folder."""

    file: str  # name in the version folder
    sha256: str  # of that file
    source: str  # where it was read from (credentials masked)
    dim_in: int
    dim_out: int
    shrinkage: float


@dataclass(frozen=True)
class DbaRecord:
    """Database-side augmentation applied at build time (``pipeline.index.expansion``)."""

    k: int  # neighbours of each vector, found with the version's own index
    alpha: float
    exact: bool  # neighbours from a flat index (exact) or an approximate one
    seconds: float
    peak_rss_bytes: int  # the build driver's peak resident memory at the end of DBA


@dataclass(frozen=True)
class PostProcessing:
    whitening: WhiteningRecord | None = None
    dba: DbaRecord | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PostProcessing:
        w, dba = d.get("whitening"), d.get("dba")
        return cls(WhiteningRecord(**w) if w else None, DbaRecord(**dba) if dba else None)


@dataclass(frozen=True)
class ExtractionRecord:
    """How the indexed descriptors were made, so that a query image gets the same treatment
    (``jobs/search_index.py --image``)."""

    weights: str | None  # the checkpoint URI (credentials masked), "imagenet", or None/random
    seed: int  # of random weights
    weights_sha256: str
    glam_config: dict[str, Any]
    image_size: int
    scales: list[float]
    precision: str
    max_pixels: int | None = None
    resize: str = "bilinear"  # glam.preprocess.RESIZE_FILTERS
    jpeg_draft: bool = False  # decoded large JPEGs in the DCT domain (absent: before the draft)


@dataclass(frozen=True)
class IndexManifest:
    """What a version holds and how it was made (``<version>/manifest.json``)."""

    version: str
    signature: str  # of the inputs and the build configuration
    factory: str  # FAISS index_factory string
    dim: int
    metric: str
    shards: int
    shard_counts: list[int]
    count: int
    config: dict[str, Any]  # the IndexBuildConfig
    inputs: list[IndexInput]
    descriptor_model: dict[str, str]  # the descriptors' model identity (Parquet metadata)
    created_at: str
    faiss: str  # FAISS version
    # Per shard n, the version whose folder holds shard-<n>.faiss and ids-<n>.parquet; empty
    # means all in this version. Incremental versions reference the shards they reuse.
    shard_versions: list[str] = field(default_factory=list)
    # The full build whose trained index (<base_version>/trained.faiss) this version's shards
    # share; empty for a full build itself.
    base_version: str = ""
    # Vectors added by incremental versions since that full build.
    added_since_base: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # keys of newer writers, kept
    # Optional sections (absent from older manifests and from plain builds).
    postprocessing: PostProcessing | None = None
    extraction: ExtractionRecord | None = None
    # The search default tuned on the version's own data (``--target-recall``) and the curve
    # it was chosen from; what ``--factory auto`` chose and why.
    tuning: SearchTuning | None = None
    factory_choice: FactoryChoice | None = None
    # The version of the descriptors' Delta table the build read its inputs from (absent: no
    # table, or a build before tables): ``build_index.py --descriptors-version`` reads it again.
    descriptors_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        optional_keys = ("postprocessing", "extraction", "tuning", "factory_choice")
        for optional in (*optional_keys, "descriptors_version"):
            if d[optional] is None:
                del d[optional]
        return {**extra, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> IndexManifest:
        known = {f.name for f in fields(cls)} - {"extra"}
        kw = {k: v for k, v in d.items() if k in known}
        kw["inputs"] = [
            i if isinstance(i, IndexInput) else IndexInput(**i) for i in kw.get("inputs", [])
        ]
        if kw.get("postprocessing"):
            kw["postprocessing"] = PostProcessing.from_dict(kw["postprocessing"])
        if kw.get("extraction"):
            kw["extraction"] = ExtractionRecord(**kw["extraction"])
        if kw.get("tuning"):
            kw["tuning"] = SearchTuning.from_dict(kw["tuning"])
        if kw.get("factory_choice"):
            kw["factory_choice"] = FactoryChoice(**kw["factory_choice"])
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})

    @property
    def whitening(self) -> WhiteningRecord | None:
        return self.postprocessing.whitening if self.postprocessing else None

    @property
    def dba(self) -> DbaRecord | None:
        return self.postprocessing.dba if self.postprocessing else None

    def search_defaults(self) -> SearchParams:
        """How readers search this version unless told otherwise: the tuned setting when the
        build tuned one, else the build's recorded nprobe and k_factor."""
        if self.tuning is not None:
            return self.tuning.params
        return SearchParams.from_config(self.config)

    def shard_version(self, shard: int) -> str:
        """The version whose folder holds ``shard``'s files."""
        return self.shard_versions[shard] if self.shard_versions else self.version

    @property
    def trained_version(self) -> str:
        """The version whose ``trained.faiss`` this version's shards were encoded with."""
        return self.base_version or self.version

    def referenced_versions(self) -> set[str]:
        """Older versions whose files this version uses."""
        return {*self.shard_versions, self.base_version} - {self.version, ""}


def read_manifest(output: str, version: str, with_inputs: bool = True) -> IndexManifest:
    """The manifest of ``version``. Its inputs (one per descriptor file: a million for a
    million shards) live beside it in ``inputs.parquet``; ``with_inputs=False`` leaves them
    unread (``inputs`` empty), for readers that only search the version."""
    d = json.loads(read_bytes(join(output, version, MANIFEST)))
    stored = d.pop(_INPUTS_FILE_KEY, None)
    d.pop(_INPUT_COUNT_KEY, None)
    if stored is not None:
        d["inputs"] = _read_inputs(join(output, version, stored)) if with_inputs else []
    return IndexManifest.from_dict(d)


def write_manifest(output: str, manifest: IndexManifest) -> None:
    """``inputs.parquet``, then ``manifest.json`` (the version's completion mark) without the
    inputs: a manifest stays small whatever the number of input files."""
    folder = join(output, manifest.version)
    write_bytes_atomic(join(folder, INPUTS), _inputs_parquet(manifest.inputs))
    d = replace(manifest, inputs=[]).to_dict()  # asdict of a million inputs: seconds
    del d["inputs"]
    d |= {_INPUTS_FILE_KEY: INPUTS, _INPUT_COUNT_KEY: len(manifest.inputs)}
    write_json_atomic(join(folder, MANIFEST), d)


def _inputs_parquet(inputs: list[IndexInput]) -> bytes:
    table = pa.table(
        {
            "uri": pa.array([i.uri for i in inputs], pa.string()),
            "size": pa.array([i.size for i in inputs], pa.int64()),
            "etag": pa.array([i.etag for i in inputs], pa.string()),
            "rows": pa.array([i.rows for i in inputs], pa.int64()),
        }
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def _read_inputs(uri: str) -> list[IndexInput]:
    table = pq.read_table(io.BytesIO(read_bytes(uri)))
    columns = [table.column(name).to_pylist() for name in ("uri", "size", "etag", "rows")]
    return [IndexInput(*row) for row in zip(*columns, strict=True)]


def read_latest(output: str, with_inputs: bool = True) -> tuple[str, IndexManifest] | None:
    """(version, manifest) that LATEST points to, or None (``with_inputs``: ``read_manifest``)."""
    version = read_latest_name(output)
    if version is None:
        return None
    return version, read_manifest(output, version, with_inputs)


def new_version_name(output: str, signature: str) -> str:
    """A version name that sorts after every existing version: the UTC time to the
    microsecond, bumped past LATEST when a clock behind another host's would sort it
    earlier, and the signature's first 8 characters."""
    stamp = datetime.now(UTC)
    latest = read_latest_name(output)
    if latest is not None:
        try:
            previous = datetime.strptime(latest.split("-", 1)[0], _STAMP).replace(tzinfo=UTC)
        except ValueError:  # a name of another format: order by name only
            previous = None
        if previous is not None and stamp <= previous:
            stamp = previous + timedelta(microseconds=1)
    return f"{stamp.strftime(_STAMP)}-{signature[:8]}"


def read_latest_name(output: str) -> str | None:
    try:
        return read_bytes(join(output, LATEST)).decode().strip()
    except FileNotFoundError:
        return None


def advance_latest(output: str, version: str) -> bool:
    """Move LATEST to ``version`` (the commit point of a build), forward only: a version that
    sorts before the current LATEST leaves it where it is. Returns whether LATEST moved."""
    current = read_latest_name(output)
    if current is not None and current >= version:
        log.warning(
            "LATEST of %s stays on %s: %s is not newer (LATEST only moves forward)",
            output,
            current,
            version,
        )
        return False
    write_bytes_atomic(join(output, LATEST), version.encode())
    return True


def list_versions(output: str) -> list[str]:
    fs, path = filesystem(output)
    fs.invalidate_cache(path)  # another process may have built or pruned since
    try:
        entries = fs.ls(path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(
        e["name"].rstrip("/").rsplit("/", 1)[1] for e in entries if e["type"] == "directory"
    )


def shard_file(output: str, manifest: IndexManifest, shard: int, kind: str = "shard") -> str:
    """URI of shard ``shard``'s FAISS index (``kind="shard"``) or id table (``kind="ids"``),
    in whichever version's folder holds it."""
    name = f"shard-{shard:05d}.faiss" if kind == "shard" else f"ids-{shard:05d}.parquet"
    return join(output, manifest.shard_version(shard), name)


def referenced_by(output: str, versions: list[str]) -> set[str]:
    """Versions whose files any of ``versions`` (complete ones) reference."""
    out: set[str] = set()
    for v in versions:
        try:
            out |= read_manifest(output, v, with_inputs=False).referenced_versions()
        except FileNotFoundError:
            continue
    return out


def prune_versions(output: str, retention: int, keep: str) -> None:
    """Delete the oldest versions beyond ``retention`` (and abandoned incomplete ones), except
    ``keep``, the version LATEST names now (when LATEST did not move to ``keep``, it is still
    what readers load) and versions whose files any of those or a kept version references."""
    fs, path = filesystem(output)
    live = {keep} | ({latest} if (latest := read_latest_name(output)) else set())
    versions = [v for v in list_versions(output) if v not in live]
    complete = [v for v in versions if fs.exists(join(path, v, MANIFEST))]
    doomed = [v for v in versions if v not in complete]
    doomed += complete[: max(0, len(complete) - (retention - 1))]
    referenced = referenced_by(output, [*sorted(live), *(v for v in complete if v not in doomed)])
    for v in doomed:
        if v in referenced:
            log.info("keeping index version %s: a kept version uses its shards", v)
            continue
        log.info("deleting old index version %s", v)
        fs.rm(join(path, v), recursive=True)
