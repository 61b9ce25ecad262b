"""Start-up cost of a process that runs the product: the imports of a Ray extraction actor and
a training worker, with and without torchvision (whose import loads torch._dynamo and sympy).

    .venv/bin/python bench/bench_import.py --repeats 5

Each import runs in a fresh interpreter, alternating the two variants so that both see the
same machine load; prints the median wall time of each and their ratio."""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

PRODUCT = "import pipeline.extract.actors, pipeline.train.worker"
VARIANTS = {
    "as shipped (no torchvision)": PRODUCT,
    "with torchvision imported too (before)": f"import torchvision; {PRODUCT}",
}


def wall(code: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, code in VARIANTS.items():
            times[name].append(wall(code))
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, m in medians.items():
        print(f"{name}: median {m:.2f} s over {args.repeats}")
    after, before = medians.values()
    print(f"ratio before/after: {before / after:.2f}x")


if __name__ == "__main__":
    main()
