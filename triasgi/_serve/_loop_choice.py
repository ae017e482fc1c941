"""Which event loop an app runs on: ``--loop auto``, ``trio`` or ``asyncio``.

With ``auto`` (the default) the app object says: an app of a framework that
runs on asyncio only (:data:`ASYNCIO_FRAMEWORKS`) runs as asyncio code on a
trio-asyncio loop; any other app, anyio-based or plain, runs on trio.  The
object is recognised by the modules its class (or, for a function, the
function itself) comes from.  Middleware that wraps the app the usual way,
holding it as ``.app``, ``.application`` or ``.__wrapped__``, is looked
through: a Django app inside Sentry's or Starlette's middleware still needs
asyncio.

Nothing is imported or called: only the objects' types and a few of their
attributes are read.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Literal, final

#: Top-level packages of frameworks whose apps need asyncio, with their names.
ASYNCIO_FRAMEWORKS = {
    "django": "Django",
    "channels": "Django Channels",
    "quart": "Quart",
    "sanic": "Sanic",
    "blacksheep": "BlackSheep",
}

#: Top-level packages of anyio-based frameworks: these run on trio as they are.
ANYIO_FRAMEWORKS = {
    "starlette": "Starlette",
    "fastapi": "FastAPI",
    "litestar": "Litestar",
}

# Where wrapping middleware keeps the app it wraps.
_WRAPPED_ATTRIBUTES = ("app", "application", "__wrapped__")
# How many layers of middleware are looked through.
_MAX_LAYERS = 16


@final
@dataclass(frozen=True)
class LoopChoice:
    """The loop an app runs on, and why, for the startup line.

    Attributes:
        loop: ``"trio"`` or ``"asyncio"``.
        auto: whether ``--loop auto`` chose it.
        framework: what the app was recognised as (``"a Quart app
            (quart.app.Quart)"``), or None.
        needs_asyncio: whether that framework runs on asyncio only.
    """

    loop: Literal["trio", "asyncio"]
    auto: bool
    framework: str | None = None
    needs_asyncio: bool = False

    def startup_line(self) -> str:
        """The log line that says which loop the app runs on, and why."""
        where = "asyncio (trio-asyncio)" if self.loop == "asyncio" else "trio"
        if not self.auto:
            why = f"--loop {self.loop}"
        elif self.framework is None:
            why = (
                "--loop auto, and it is not an app of an asyncio-only framework "
                "(--loop asyncio serves an app that needs asyncio)"
            )
        elif self.needs_asyncio:
            why = (
                f"--loop auto, and it is {self.framework}, which needs asyncio "
                "(--loop trio forces trio)"
            )
        else:
            why = f"--loop auto, and it is {self.framework}, which runs on anyio"
        return f"Running the app on {where}: {why}."

    def missing_extra(self) -> str:
        """The sentence for an asyncio app when trio-asyncio is not installed."""
        if not self.auto:
            return (
                "--loop asyncio needs the trio-asyncio package: "
                "pip install 'triasgi[asyncio]'."
            )
        return (
            f"The app is {self.framework}, which needs asyncio: install "
            "trio-asyncio with pip install 'triasgi[asyncio]' (or force trio "
            "with --loop trio)."
        )


def choose_loop(app: Any, loop: str) -> LoopChoice:
    """The loop ``app`` runs on for the ``loop`` setting (auto, trio, asyncio)."""
    if loop == "trio":
        return LoopChoice("trio", auto=False)
    if loop == "asyncio":
        return LoopChoice("asyncio", auto=False)
    anyio_based: str | None = None
    for layer, wrapper in _layers(app):
        found = _framework(layer)
        if found is None:
            continue
        package, where = found
        inside = f", inside {_name(wrapper)}" if wrapper is not None else ""
        if package in ASYNCIO_FRAMEWORKS:
            framework = f"a {ASYNCIO_FRAMEWORKS[package]} app ({where}{inside})"
            return LoopChoice("asyncio", True, framework, needs_asyncio=True)
        if anyio_based is None:
            anyio_based = f"a {ANYIO_FRAMEWORKS[package]} app ({where}{inside})"
    return LoopChoice("trio", True, anyio_based)


def _layers(app: Any) -> list[tuple[Any, Any]]:
    """The app and the apps it wraps, each with the outermost wrapper."""
    layers: list[tuple[Any, Any]] = []
    seen: set[int] = set()
    todo: list[Any] = [app]
    while todo and len(layers) < _MAX_LAYERS:
        layer = todo.pop(0)
        if id(layer) in seen or layer is None:
            continue
        seen.add(id(layer))
        layers.append((layer, app if layer is not app else None))
        if inspect.ismethod(layer):
            todo.append(layer.__self__)
        # Only values the object holds itself, never attributes of its class
        # (a property would run code).
        held = getattr(layer, "__dict__", None)
        if isinstance(held, dict):
            todo.extend(held[name] for name in _WRAPPED_ATTRIBUTES if name in held)
    return layers


def _framework(layer: Any) -> tuple[str, str] | None:
    """The framework package ``layer`` belongs to, and the name that shows it."""
    if inspect.isfunction(layer):
        candidates = [(getattr(layer, "__module__", None) or "", layer.__qualname__)]
    else:
        candidates = [(cls.__module__, cls.__qualname__) for cls in type(layer).__mro__]
    for module, qualname in candidates:
        package = module.partition(".")[0]
        if package in ASYNCIO_FRAMEWORKS or package in ANYIO_FRAMEWORKS:
            return package, f"{module}.{qualname}"
    return None


def _name(obj: Any) -> str:
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        return f"{obj.__module__}.{obj.__qualname__}"
    cls = type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"
