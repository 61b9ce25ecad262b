"""Search tuning on a version's own data (pipeline.index.tuning, exact_neighbours) and the
``auto`` factory (factory_choice), without Ray: versions held in memory over descriptor files
on local disk. Two distributions: graded tails (categories, landmarks inside them, as the
bench's generator) and flat tails (tight clusters among unrelated vectors)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pytest

from pipeline.index.exact_neighbours import HeldOut, held_out, input_ranges
from pipeline.index.factory_choice import FactoryPolicy, choose_factory, nlist_for, parse_bytes
from pipeline.index.search import ShardedIndex
from pipeline.index.search_config import SearchParams
from pipeline.index.shard import IndexShard
from pipeline.index.tuning import index_shape, recalls, recheck, tune_search
from pipeline.index.tuning_record import RecallTarget, SearchTuning
from pipeline.index.versions import IndexInput, IndexManifest
from tests.support.descriptors import unit, write_descriptor_file

D = 32
N = 4000
FACTORY = "IVF64,PQ8x4fs,RFlat"


def graded(n: int, seed: int) -> np.ndarray:
    """Images of 200 landmarks in 20 categories, and images of the categories alone: each
    query's neighbours are a few of its landmark, then its category, a graded tail."""
    rng = np.random.default_rng(0)  # the structure is shared by every draw
    categories = unit(rng.normal(size=(20, D)))
    which = rng.integers(0, 20, 200)
    landmarks = unit(categories[which] + 0.6 * rng.normal(size=(200, D)) / np.sqrt(D))
    draw = np.random.default_rng(seed)
    lm = draw.integers(0, 200, n)
    x = landmarks[lm] + 0.5 * draw.normal(size=(n, D)) / np.sqrt(D)
    other = draw.random(n) < 0.5
    x[other] = categories[which[lm[other]]] + 1.2 * draw.normal(size=(other.sum(), D)) / np.sqrt(D)
    return unit(x)


def flat_tails(n: int, seed: int) -> np.ndarray:
    """40% in 100 tight clusters, 60% unrelated: past a query's few cluster mates, its top-100
    is a flat tail of near-equal scores."""
    centres = unit(np.random.default_rng(1).normal(size=(100, D)))
    draw = np.random.default_rng(seed)
    x = unit(draw.normal(size=(n, D)))
    clustered = draw.random(n) < 0.4
    near = centres[draw.integers(0, 100, clustered.sum())]
    x[clustered] = unit(near + 0.3 * draw.normal(size=near.shape) / np.sqrt(D))
    return x


def version_in_memory(
    tmp_path: Path, x: np.ndarray, factory: str = FACTORY, files: int = 2, shards: int = 2
) -> ShardedIndex:
    """A version of ``x`` (descriptor files on disk, shards in memory, one trained index)."""
    rows = len(x) // files
    inputs = []
    for f in range(files):
        uri = str(tmp_path / f"part-{f:06d}.parquet")
        write_descriptor_file(uri, [f"k{f}_{i}" for i in range(rows)], x[f * rows : (f + 1) * rows])
        inputs.append(IndexInput(uri, 0, "", rows))
    trained = faiss.index_factory(D, factory, faiss.METRIC_INNER_PRODUCT)
    trained.train(x)
    per = len(x) // shards
    held = []
    for s in range(shards):
        index = faiss.clone_index(trained)
        index.add(x[s * per : (s + 1) * per])
        ids = np.arange(s * per, (s + 1) * per)
        table = pa.table({"id": ids, "key": [f"v{i}" for i in ids]})
        held.append(IndexShard(s, index, table, 0))
    manifest = IndexManifest(
        "v", "sig", factory, D, "inner_product", shards, [per] * shards, len(x), {}, inputs,
        {}, "", "",
    )  # fmt: skip
    return ShardedIndex("", "v", manifest, held, SearchParams())


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


def held_out_of(index: ShardedIndex, target: RecallTarget, seed: int = 0) -> HeldOut:
    return held_out(input_ranges(index.manifest), target.queries, target.k, seed, None, parts=2)


@pytest.mark.parametrize("distribution", [graded, flat_tails])
def test_tuned_setting_meets_the_target_on_queries_the_tuner_did_not_see(
    tmp_path, distribution
) -> None:
    data = distribution(N + 300, seed=3)
    x, unseen = data[:N], data[N:]  # the same distribution; only x is indexed
    index = version_in_memory(tmp_path, x)
    target = RecallTarget(0.95, k=100, queries=200)
    tuning = tune_search(index, held_out_of(index, target), target, index_shape(index), seed=0)
    assert tuning.reached and tuning.chosen.recall_bound >= 0.95
    found = index.search(unseen, 100, tuning.params).ids
    reached = recalls(found, exact_top(x, unseen, 100), 100).mean()
    print(f"{distribution.__name__}: {tuning.summary()}; unseen queries {reached:.3f}")
    assert reached >= 0.95
    if distribution is flat_tails:  # the default setting (nprobe 16, k_factor 4) falls short
        default = recalls(index.search(unseen, 100).ids, exact_top(x, unseen, 100), 100).mean()
        assert default < 0.9
    costs = [p.cost for p in tuning.curve]
    assert costs == sorted(costs) and tuning.chosen in tuning.curve
    cheaper = [p for p in tuning.curve if p.cost < tuning.chosen.cost]
    assert all(p.recall_bound < 0.95 for p in cheaper)  # the cheapest that meets it


def test_held_out_neighbours_are_exact_and_exclude_the_query_itself(tmp_path) -> None:
    x = graded(1000, seed=5)
    index = version_in_memory(tmp_path, x, "IVF16,PQ8x4fs,RFlat")
    held = held_out_of(index, RecallTarget(0.9, k=20, queries=30), seed=7)
    np.testing.assert_array_equal(held.queries, x[held.ids])
    want = exact_top(x, x[held.ids], 21)
    for q, own in enumerate(held.ids):
        row = want[q][want[q] != own][:20]
        np.testing.assert_array_equal(held.exact[q], row)
    assert not (held.exact == held.ids[:, None]).any()


def test_an_unreachable_target_is_reported_with_the_factory_to_use(tmp_path) -> None:
    x = flat_tails(N, seed=4)
    index = version_in_memory(tmp_path, x, "IVF64,PQ4x4fs")  # 2-byte codes, no refinement
    target = RecallTarget(0.99, k=100, queries=100)
    tuning = tune_search(index, held_out_of(index, target), target, index_shape(index), seed=0)
    assert not tuning.reached
    best = max(p.recall_bound for p in tuning.curve)
    assert tuning.chosen.recall_bound == best < 0.99
    assert tuning.suggestion == "use IVF64,PQ4x4fs,RFlat (re-scores candidates from float32 copies)"
    line = tuning.summary()
    assert "below target 0.99" in line and "use IVF64,PQ4x4fs,RFlat" in line and "\n" not in line


def test_tuning_is_deterministic_for_a_seed(tmp_path) -> None:
    x = graded(N, seed=6)
    index = version_in_memory(tmp_path, x)
    target = RecallTarget(0.95, k=100, queries=150)

    def tuned(seed: int) -> tuple[SearchTuning, HeldOut]:
        held = held_out_of(index, target, seed)
        return tune_search(index, held, target, index_shape(index), seed), held

    (a, held_a), (b, held_b) = tuned(1), tuned(1)
    np.testing.assert_array_equal(held_a.ids, held_b.ids)
    np.testing.assert_array_equal(held_a.exact, held_b.exact)

    def timeless(t: SearchTuning) -> list[tuple[object, ...]]:
        return [dataclasses.astuple(dataclasses.replace(p, seconds_per_query=0)) for p in t.curve]

    assert a.params == b.params and timeless(a) == timeless(b)
    _, other = tuned(2)
    assert not np.array_equal(other.ids, held_a.ids)  # another seed, another sample


def test_an_inherited_setting_is_kept_while_it_meets_the_target_else_retuned(tmp_path) -> None:
    x = graded(N, seed=8)
    index = version_in_memory(tmp_path, x)
    target = RecallTarget(0.9, k=100, queries=150)
    held, shape = held_out_of(index, target, seed=3), index_shape(index)
    tuned = tune_search(index, held, target, shape, seed=3)
    kept = recheck(index, held, target, shape, tuned.params, seed=3)
    assert kept.how == "re-checked" and kept.params == tuned.params and len(kept.curve) == 1
    fallen = recheck(index, held, target, shape, SearchParams(1, 1), seed=3)
    assert fallen.how == "re-tuned" and fallen.params == tuned.params


def test_a_manifest_keeps_its_tuning_and_readers_default_to_it(tmp_path) -> None:
    index = version_in_memory(tmp_path, graded(1000, seed=2), "IVF16,PQ8x4fs,RFlat")
    target = RecallTarget(0.9, k=10, queries=50)
    tuning = tune_search(index, held_out_of(index, target), target, index_shape(index), seed=0)
    manifest = dataclasses.replace(index.manifest, config={"nprobe": 16, "k_factor": 4})
    assert manifest.search_defaults() == SearchParams(16, 4)
    tuned = dataclasses.replace(manifest, tuning=tuning)
    again = IndexManifest.from_dict(tuned.to_dict())
    assert again.tuning == tuning and again.search_defaults() == tuning.params
    assert "tuning" not in manifest.to_dict()  # absent unless tuned


def test_auto_picks_flat_below_the_crossover_then_an_ivf_within_the_budget() -> None:
    policy = FactoryPolicy(flat_below=50_000)
    small = choose_factory(10_000, 512, 100_000, policy)
    assert small.factory == "Flat" and "flat_below" in small.reason
    big = choose_factory(1_000_000, 512, 100_000, dataclasses.replace(policy, max_bytes=4 << 30))
    assert big.factory == "IVF2048,PQ64x4fs,Refine(SQ8)" and big.estimated_bytes <= 4 << 30
    # 4·√1M = 4000 -> 4096 cells, but 100,000 training vectors hold 39 per cell up to 2048.
    assert nlist_for(1_000_000, 100_000, policy) == 2048
    assert nlist_for(1_000_000, 200_000, policy) == 4096
    tight = choose_factory(
        1_000_000, 512, 100_000, dataclasses.replace(policy, max_bytes=400 << 20)
    )
    assert tight.factory == "IVF2048,PQ64x4fs,Refine(SQ4)"
    tighter = dataclasses.replace(policy, max_bytes=100 << 20)
    assert choose_factory(1_000_000, 512, 100_000, tighter).factory == "IVF2048,PQ128x4fs"
    # A Flat index over the budget is not chosen, however small N.
    over = dataclasses.replace(policy, max_bytes=10 << 20)  # Flat would take 20 MB
    assert choose_factory(10_000, 512, 100_000, over).factory == "IVF256,PQ64x4fs,Refine(SQ8)"
    with pytest.raises(ValueError, match="no index of 1000000 512-d vectors fits"):
        choose_factory(1_000_000, 512, 100_000, dataclasses.replace(policy, max_bytes=1 << 20))
    for factory in (big.factory, tight.factory, "IVF2048,PQ128x4fs"):
        faiss.index_factory(512, factory, faiss.METRIC_INNER_PRODUCT)  # valid strings
    assert parse_bytes("4G") == 4 << 30 and parse_bytes("512MiB") == 512 << 20
    assert parse_bytes("1000") == 1000
    with pytest.raises(ValueError, match="not a memory size"):
        parse_bytes("lots")


def test_build_index_tunes_records_and_search_index_prints_the_promise(
    ray_local, tmp_path, capsys
) -> None:
    from jobs.build_index import main as build_main
    from jobs.search_index import main as search_main
    from pipeline.index.versions import read_latest

    desc, out = tmp_path / "desc", str(tmp_path / "index")
    x = flat_tails(6000, seed=11)
    for f in range(3):
        keys = [f"k{f}_{i}" for i in range(2000)]
        write_descriptor_file(
            str(desc / f"part-{f:06d}.parquet"), keys, x[f * 2000 : (f + 1) * 2000]
        )
    (desc / "part-000002.parquet").rename(tmp_path / "later.parquet")  # arrives later
    args = ["--descriptors", str(desc), "--output", out, "--shards", "2", "--train-size", "4000"]
    tuned = [*args, "--flat-below", "1000", "--target-recall", "0.9", "--tuning-queries", "100"]
    assert build_main(tuned) == 0
    printed = capsys.readouterr().out
    first = read_latest(out)[1]
    assert first.config["factory"] == "auto" and first.factory == "IVF64,PQ4x4fs,Refine(SQ8)"
    assert first.factory_choice is not None and "flat_below" in first.factory_choice.reason
    tuning = first.tuning
    assert tuning is not None and tuning.reached and tuning.how == "tuned"
    assert (
        f"factory {first.factory}: " in printed and f"search default: {tuning.summary()}" in printed
    )
    assert ShardedIndex.load(out).params == tuning.params
    assert search_main(["--index", out, "--descriptors", str(desc), "--key", "k0_1"]) == 0
    assert f"(the version's tuned default): {tuning.promise()}" in capsys.readouterr().out
    # New data: an incremental version re-checks the inherited setting on a fresh sample.
    (tmp_path / "later.parquet").rename(desc / "part-000002.parquet")
    assert build_main(tuned) == 0
    second = read_latest(out)[1]
    assert second.base_version == first.version and second.factory == first.factory
    assert second.tuning is not None and second.tuning.how in ("re-checked", "re-tuned")
    assert second.tuning.chosen.recall_bound >= 0.9
    # An unreachable target: said in one line, and the version still published.
    capsys.readouterr()
    plain = [*args, "--factory", "IVF16,PQ4x4fs", "--target-recall", "0.99"]
    assert build_main([*plain, "--tuning-queries", "50"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("search"))
    assert "below target 0.99" in line and "use IVF16,PQ4x4fs,RFlat" in line
    assert read_latest(out)[1].tuning == ShardedIndex.load(out).manifest.tuning
