"""The import rules of the layout (docs/architecture.md), read from the code's own imports.

- ``glam/`` is pure torch: it imports nothing of ``pipeline``, Ray or storage (its weights I/O
  goes through the store its caller passes).
- ``pipeline/io`` imports nothing else of ``pipeline``; ``pipeline/runtime`` only ``io``.
- A workflow package (extract, index, evaluate, datasets, train) imports ``io``, ``runtime``
  and ``glam``, plus the named exceptions the data flow needs: evaluate -> index, datasets;
  train -> datasets; index -> extract (search by image decodes as extraction does).
- The read side of an index (versions, search) and dataset preparation never load Ray.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.support.paths import REPO

WORKFLOWS = ("extract", "index", "evaluate", "datasets", "train")
SHARED = ("io", "runtime")
# index -> extract: search by image decodes a query image by extraction's own decode path.
EXCEPTIONS = {"evaluate": {"index", "datasets"}, "train": {"datasets"}, "index": {"extract"}}
STORAGE_OR_CLUSTER = ("ray", "fsspec", "s3fs", "boto3", "botocore", "pyarrow", "faiss", "pipeline")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, module_level_only: bool = False) -> set[str]:
    """Absolute names imported by a file (inside functions too, unless module_level_only)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes: Iterable[ast.AST] = tree.body if module_level_only else ast.walk(tree)
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def package_of(name: str) -> str | None:
    """``pipeline.extract.worker`` -> ``extract``; None outside ``pipeline``."""
    parts = name.split(".")
    return parts[1] if parts[0] == "pipeline" and len(parts) > 1 else None


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Edges of ``graph`` (module -> imported names) that break the package rules."""
    allowed = {
        "io": {"io"},
        "runtime": {"io", "runtime"},
        **{w: {w, *SHARED, *EXCEPTIONS.get(w, ())} for w in WORKFLOWS},
    }
    out = []
    for module, names in sorted(graph.items()):
        src = package_of(module)
        if src is None or src not in allowed:
            continue
        for name in sorted(names):
            dst = package_of(name)
            if dst is not None and dst in allowed and dst not in allowed[src]:
                out.append(f"{module} imports {name}")
    return out


def pipeline_graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sources("pipeline")}


def test_every_module_is_in_a_package_and_the_packages_are_the_layouts() -> None:
    top = {p.name for p in (REPO / "pipeline").iterdir() if p.is_dir() and p.name[0] not in "_."}
    assert top == {*SHARED, *WORKFLOWS}
    loose = [p.name for p in (REPO / "pipeline").glob("*.py") if p.name != "__init__.py"]
    assert loose == []


def test_workflows_import_only_io_runtime_glam_and_the_named_exceptions() -> None:
    assert violations(pipeline_graph()) == []


def test_the_rule_checker_catches_a_cross_workflow_import() -> None:
    broken = {
        "pipeline.train.driver": {"pipeline.extract.actors"},
        "pipeline.io.storage": {"pipeline.runtime.metrics"},
        "pipeline.evaluate.report": {"pipeline.index.search"},  # a named exception: fine
    }
    assert violations(broken) == [
        "pipeline.io.storage imports pipeline.runtime.metrics",
        "pipeline.train.driver imports pipeline.extract.actors",
    ]


def test_glam_imports_no_pipeline_ray_or_storage() -> None:
    for path in sources("glam"):
        bad = {name for name in imports_of(path) if name.split(".")[0] in STORAGE_OR_CLUSTER}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def loads(module: str) -> set[str]:
    """Top-level packages a module loads at import time, following ``pipeline`` imports."""
    seen: set[str] = set()
    todo = [module]
    out: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = REPO / Path(*name.split("."))
        file = path.with_suffix(".py") if path.with_suffix(".py").exists() else path / "__init__.py"
        if not file.exists():
            continue
        for imported in imports_of(file, module_level_only=True):
            out.add(imported.split(".")[0])
            if imported.startswith("pipeline."):
                todo.append(imported)
                todo.append(imported.rsplit(".", 1)[0])
    return out


@pytest.mark.parametrize(
    "module",
    [
        "pipeline.index.versions",
        "pipeline.index.search",
        "pipeline.datasets.revisitop",
        "pipeline.datasets.gldv2",
        "pipeline.io.descriptor_reader",
    ],
)
def test_read_side_and_data_preparation_do_not_load_ray(module: str) -> None:
    assert "ray" not in loads(module)


def test_index_versions_need_no_faiss() -> None:
    assert not {"ray", "faiss", "torch"} & loads("pipeline.index.versions")


def test_jobs_are_thin_and_pipeline_never_imports_them() -> None:
    for path in sources("pipeline") + sources("glam"):
        assert not any(n.split(".")[0] == "jobs" for n in imports_of(path)), path
    for path in sources("jobs"):
        lines = len(path.read_text().splitlines())
        assert lines <= 250, f"{path.name} has {lines} lines: its logic belongs in pipeline/"
