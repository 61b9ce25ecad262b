"""What every job shares: logging set-up and turning known errors into one-line messages."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from pipeline.redact import RedactingFilter

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
        from pipeline.redact import redact_text

        print(redact_text(f"error: {type(e).__name__}: {message}"), file=sys.stderr)
        return 1
