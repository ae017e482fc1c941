"""Log configuration for the command line and run()."""

from __future__ import annotations

import logging
import sys

TRACE = 5
logging.addLevelName(TRACE, "TRACE")


def configure_logging(level: str) -> None:
    """Send triasgi's loggers to stderr at ``level``.

    ``triasgi.error`` carries server messages, ``triasgi.access`` one line per
    request.  Only the ``triasgi`` logger tree is touched, so an app's own
    logging setup is left alone.
    """
    numeric = TRACE if level == "trace" else logging.getLevelName(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)-8s %(message)s"))
    root = logging.getLogger("triasgi")
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    root.propagate = False
