"""What every job shares: logging set-up and turning known errors into one-line messages."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.index.params import ServingConfig


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from pipeline.io.redact import RedactingFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    for noisy in ("faiss.loader", "aiobotocore.credentials", "botocore.credentials"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_main(main: Callable[[], int]) -> int:
    """Run ``main``; bad input, storage and weights errors print one line, no traceback."""
    try:
        return main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, ConnectionError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        from pipeline.io.redact import redact_text

        print(redact_text(f"error: {type(e).__name__}: {message}"), file=sys.stderr)
        return 1


def float_list(text: str) -> tuple[float, ...]:
    """An argparse type: ``"0.7071,1,1.4142"`` -> (0.7071, 1.0, 1.4142)."""
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None


def add_cluster_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--ray-address`` and ``-v``, the same in every job that runs on Ray."""
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, a running cluster, or local)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def add_search_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--nprobe`` and ``--k-factor``: override the search defaults an index version records."""
    p.add_argument(
        "--nprobe", type=int, default=None, help="IVF cells visited per query (the index's)"
    )
    p.add_argument(
        "--k-factor",
        type=int,
        default=None,
        help="refined indexes: k x this many candidates re-scored (the index's)",
    )


def add_serving_arguments(p: argparse.ArgumentParser) -> None:
    """``--distributed`` and how the index is spread over Ray actors."""
    g = p.add_argument_group("search across a Ray cluster")
    g.add_argument(
        "--distributed",
        action="store_true",
        help="load the index's shards into Ray actors spread over the cluster's nodes",
    )
    g.add_argument("--actors", type=int, default=2, help="actors holding the shards (2)")
    g.add_argument("--cpus-per-actor", type=float, default=1.0, help="CPUs per actor (1)")
    g.add_argument(
        "--gpus-per-actor", type=float, default=0.0, help="GPUs per actor (0: search on CPUs)"
    )
    g.add_argument(
        "--actor-overhead-mb",
        type=int,
        default=1024,
        help="memory reserved per actor beyond its shards, MiB (1024)",
    )
    g.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, a running cluster, or local)",
    )


def connect_serving(args: argparse.Namespace) -> ServingConfig | None:
    """With ``--distributed``: connect to Ray and return the ServingConfig the flags ask for;
    None otherwise."""
    if not args.distributed:
        return None
    from pipeline.index.params import ServingConfig
    from pipeline.runtime.cluster import connect

    connect(args.ray_address)
    return ServingConfig(
        actors=args.actors,
        cpus_per_actor=args.cpus_per_actor,
        gpus_per_actor=args.gpus_per_actor,
        overhead_bytes=args.actor_overhead_mb << 20,
    )


def add_gpu_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """``--gpu`` / ``--cpu`` (``args.use_gpu``: None = the GPU when faiss sees one)."""
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument(
        "--gpu",
        dest="use_gpu",
        action="store_true",
        default=None,
        help=f"{what} on the GPU (default: when faiss has GPU support and sees one)",
    )
    gpu.add_argument("--cpu", dest="use_gpu", action="store_false", help=f"{what} on the CPU")
