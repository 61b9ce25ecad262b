"""What every job shares: logging set-up and turning known errors into one-line messages."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable


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
