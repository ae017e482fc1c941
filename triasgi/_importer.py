"""Turn an import string such as ``"examples.hello:app"`` into an app."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

logger = logging.getLogger("triasgi.error")


class AppImportError(Exception):
    """The app named on the command line could not be loaded.

    The message is one sentence that names the problem, fit to show a user.
    """


def import_from_string(import_str: str) -> Any:
    """Import ``module:attribute`` (the attribute may be dotted).

    Raises:
        AppImportError: the string is malformed, the module cannot be
            imported, or the attribute does not exist.
    """
    module_name, sep, attrs = import_str.partition(":")
    if not sep or not module_name or not attrs:
        raise AppImportError(
            f"The app must be given as 'module:attribute', got {import_str!r}."
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only the module we were asked for (or a parent package) missing is
        # "not found"; a missing import inside it is the module's own error.
        if (
            exc.name is not None
            and module_name.startswith(exc.name)
            and (module_name == exc.name or module_name[len(exc.name)] == ".")
        ):
            raise AppImportError(
                f"Could not find module {module_name!r} (is it on the path? "
                f"run from its directory or use --app-dir)."
            ) from exc
        raise AppImportError(
            f"Importing module {module_name!r} failed: {_describe(exc)}."
        ) from exc
    except Exception as exc:
        raise AppImportError(
            f"Importing module {module_name!r} failed: {_describe(exc)}."
        ) from exc

    instance: Any = module
    try:
        for attr in attrs.split("."):
            instance = getattr(instance, attr)
    except AttributeError:
        raise AppImportError(
            f"Module {module_name!r} has no attribute {attrs!r}."
        ) from None
    return instance


def load_app(
    import_str: str, *, factory: bool = False, app_dir: str | None = "."
) -> Any:
    """Load the ASGI app named by ``import_str``.

    Args:
        import_str: ``module:attribute``.
        factory: call the attribute with no arguments to get the app.
        app_dir: put this directory first on ``sys.path`` before importing.

    With the ``debug`` log level, a failure also logs the traceback of the
    exception behind it, to show where in the app it happened.

    Raises:
        AppImportError: with one sentence describing what went wrong.
    """
    try:
        return _load_app(import_str, factory=factory, app_dir=app_dir)
    except AppImportError as exc:
        cause = exc.__cause__
        if cause is not None:
            logger.debug("Loading the app %s failed:", import_str, exc_info=cause)
        raise


def _load_app(import_str: str, *, factory: bool, app_dir: str | None) -> Any:
    if app_dir is not None:
        sys.path.insert(0, app_dir)
    app = import_from_string(import_str)
    if factory:
        if not callable(app):
            raise AppImportError(
                f"{import_str!r} is not callable, so it cannot be an app factory."
            )
        try:
            app = app()
        except Exception as exc:
            raise AppImportError(
                f"The app factory {import_str!r} failed: {_describe(exc)}."
            ) from exc
    if not callable(app):
        kind = type(app).__name__
        raise AppImportError(f"{import_str!r} is a {kind}, not an ASGI app callable.")
    return app


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".")
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"SyntaxError in {exc.filename} line {exc.lineno}: {exc.msg}"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
