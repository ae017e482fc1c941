"""run(): serve in this process until SIGINT or SIGTERM."""

from __future__ import annotations

from typing import Any

from ._config import Config
from ._logging import configure_logging
from ._process._single import run_config
from ._types import ASGIApp


def run(app: ASGIApp | str, config: Config | None = None, **settings: Any) -> None:
    """Serve ``app`` in this process until SIGINT or SIGTERM.

    Args:
        app: the ASGI app, or an import string such as ``"examples.hello:app"``.
        config: the settings; ``settings`` given as keywords override it.

    The first SIGINT or SIGTERM starts a graceful shutdown; a second one stops
    at once.  With ``workers`` or ``reload`` set, a supervisor serves from
    worker processes instead, as on the command line; each worker imports the
    app, so it must then be given as an import string.

    Raises:
        StartupError: the server could not bind or lifespan startup failed.
        AppImportError: ``app`` is an import string that cannot be loaded.
        ValueError: ``workers`` or ``reload`` with an app object.
    """
    config = config.replace(**settings) if config else Config(**settings)
    if (config.workers is not None or config.reload) and not isinstance(app, str):
        raise ValueError(
            "workers and reload need the app as an import string "
            "('module:attribute'), so that each worker process can import it."
        )
    configure_logging(
        config.log_level,
        log_format=config.log_format,
        log_config=config.log_config,
        colors=config.use_colors,
    )
    if config.workers is not None or config.reload:
        from ._process._supervisor import run_supervisor

        assert isinstance(app, str)
        run_supervisor(config, app)
    elif isinstance(app, str):
        from ._importer import load_app

        run_config(load_app(app), config)
    else:
        run_config(app, config)
