"""What every job shares: logging set-up and turning known errors into one-line messages."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.index.expansion import DbaConfig
    from pipeline.index.query import QueryOptions
    from pipeline.index.search_config import ServingConfig


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger().setLevel(logging.DEBUG if verbose else logging.INFO)  # also when embedded
    from pipeline.io.redact import RedactingFilter

    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
    for noisy in ("faiss.loader", "aiobotocore.credentials", "botocore.credentials"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # The AWS clients' debug logs are the wire: request headers (the key id, the session
    # token), response bodies (STS hands out a key, a secret and a token) and the web-identity
    # token, whatever the credentials' origin. -v shows our own debug lines and s3fs's calls;
    # the wire stays out (the redaction filter masks what a message still carries).
    for wire in ("botocore", "aiobotocore", "urllib3", "s3transfer", "boto3"):
        logging.getLogger(wire).setLevel(logging.INFO)


# Failures a user can act on: bad input, storage, network, weights, the cluster. Anything else
# is a bug of ours; it still ends in one line, which says so.
def _expected_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ValueError, OSError, RuntimeError, ConnectionError]
    try:
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        pass
    try:
        from ray.exceptions import RayError

        errors.append(RayError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


def run_main(main: Callable[[], int]) -> int:
    """Run ``main``; every failure prints one line and exits 1 (130 on Ctrl-C). With ``-v``
    (debug logging) the traceback with its causes follows the line."""
    from pipeline.io.redact import redact_text
    from pipeline.runtime.cluster import task_cause, without_colours

    try:
        return main()
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as failure:
        e = task_cause(failure)
        text = without_colours(str(e)).strip()
        message = text.splitlines()[0] if text else type(e).__name__
        line = f"error: {type(e).__name__}: {message}"
        if not isinstance(e, _expected_errors()):
            line = f"error: unexpected {type(e).__name__}: {message} (a bug: please report it)"
        verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
        if verbose:
            trace = "".join(traceback.format_exception(failure))
            print(redact_text(without_colours(trace).rstrip()), file=sys.stderr)
        elif not isinstance(e, _expected_errors()):
            line += "; -v shows the traceback"
        print(redact_text(line), file=sys.stderr)
        return 1


def float_list(text: str) -> tuple[float, ...]:
    """An argparse type: ``"0.7071,1,1.4142"`` -> (0.7071, 1.0, 1.4142)."""
    try:
        return tuple(float(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None


def positive_int(text: str) -> int:
    """An argparse type: a count of at least 1 (``-k 0`` prints nothing, ``--aqe 0`` is off)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def printable(key: str) -> str:
    """A key as one line of output: control characters (a newline in a key would forge the
    next result line) escaped as Python would write them; other keys unchanged."""
    return key if key.isprintable() else repr(key)[1:-1]


def add_cluster_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--ray-address`` and ``-v``, the same in every job that runs on Ray."""
    add_ray_address_argument(p)
    add_verbose_argument(p)


def add_ray_address_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    p.add_argument(
        "--ray-address",
        default=None,
        help="Ray cluster address (default: RAY_ADDRESS, a running cluster, or local)",
    )


def add_verbose_argument(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``-v``: debug logging, and a failure's traceback with its causes."""
    p.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging; tracebacks of failures"
    )


def add_database_arguments(
    p: argparse.ArgumentParser, title: str, whitening_help: str, dba_help: str
) -> None:
    """--whitening, --dba and --dba-alpha: build_index.py and evaluate.py."""
    g = p.add_argument_group(title)
    g.add_argument("--whitening", default=None, help=whitening_help)
    g.add_argument("--dba", type=positive_int, default=None, metavar="K", help=dba_help)
    g.add_argument("--dba-alpha", type=float, default=3.0, help="DBA's alpha (3)")


def dba_config(args: argparse.Namespace) -> DbaConfig | None:
    from pipeline.index.expansion import DbaConfig

    return DbaConfig(args.dba, args.dba_alpha) if args.dba else None


def add_postprocessing_arguments(p: argparse.ArgumentParser) -> None:
    """αQE and re-ranking flags, the same in search_index.py and evaluate.py."""
    g = p.add_argument_group("query-side post-processing")
    g.add_argument(
        "--aqe",
        type=positive_int,
        default=None,
        metavar="K",
        help="alpha-weighted query expansion with the top K results (Radenović et al.)",
    )
    g.add_argument("--aqe-alpha", type=float, default=3.0, help="alpha of alpha-QE (3)")
    g.add_argument(
        "--rerank",
        action="store_true",
        help="re-rank each query's top M with neighbour-refined descriptors (SuperGlobal)",
    )
    g.add_argument("--rerank-m", type=positive_int, default=400, help="results re-ranked, M (400)")
    g.add_argument(
        "--rerank-k", type=positive_int, default=9, help="neighbours refining each, K (9)"
    )
    g.add_argument("--rerank-beta", type=float, default=0.15, help="neighbour weight β (0.15)")


def query_options(args: argparse.Namespace) -> QueryOptions:
    """QueryOptions from the flags of ``add_postprocessing_arguments``."""
    from pipeline.index.expansion import QeConfig
    from pipeline.index.query import QueryOptions
    from pipeline.index.rerank import RerankConfig

    return QueryOptions(
        qe=QeConfig(args.aqe, args.aqe_alpha) if args.aqe else None,
        rerank=RerankConfig(args.rerank_m, args.rerank_k, args.rerank_beta)
        if args.rerank
        else None,
    )


def add_search_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--nprobe`` and ``--k-factor``: override the search defaults an index version records."""
    p.add_argument(
        "--nprobe",
        type=positive_int,
        default=None,
        help="IVF cells visited per query (the index's)",
    )
    p.add_argument(
        "--k-factor",
        type=positive_int,
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
    g.add_argument("--actors", type=positive_int, default=2, help="actors holding the shards (2)")
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
    add_ray_address_argument(g)


def connect_serving(args: argparse.Namespace) -> ServingConfig | None:
    """With ``--distributed``: connect to Ray and return the ServingConfig the flags ask for;
    None otherwise."""
    if not args.distributed:
        return None
    from pipeline.index.search_config import ServingConfig
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
