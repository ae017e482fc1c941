"""--reload: watching the source tree, and which changes restart the workers."""

from __future__ import annotations

import fnmatch
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, final

import trio

from .._config import Config

logger = logging.getLogger("triasgi.error")


async def watch_files(
    config: Config, stop: trio.Event, reload: Callable[[str], Awaitable[None]]
) -> None:
    """Watch the reload directories; call ``reload`` with what changed.

    Returns once ``stop`` is set (within a second).
    """
    import watchfiles

    dirs = config.reload_dirs or [os.getcwd()]
    watch_filter = _ReloadFilter(
        watchfiles.DefaultFilter(),
        ["*.py", *config.reload_includes],
        config.reload_excludes,
    )
    logger.info("Watching for changes in %s.", ", ".join(dirs))
    # The watcher waits in a thread that trio cannot interrupt: the stop
    # event (set when the stop begins) makes it return within ``step``.
    # ``step`` is also how long the watcher waits after a change for the
    # next one before it reports them all: --reload-delay.
    async for changes in watchfiles.awatch(
        *dirs,
        watch_filter=watch_filter,
        stop_event=stop,
        step=max(1, round(config.reload_delay * 1000)),
        rust_timeout=1000,
    ):
        paths = sorted({_shown_path(path) for _, path in changes})
        shown = ", ".join(paths[:3]) + (" and more" if len(paths) > 3 else "")
        await reload(f"{shown} changed")


@final
class _ReloadFilter:
    """Which changed files restart the worker under --reload."""

    def __init__(self, base: Any, includes: list[str], excludes: list[str]) -> None:
        self._base = base
        self._includes = includes
        self._excludes = excludes

    def __call__(self, change: Any, path: str) -> bool:
        if not self._base(change, path):
            return False
        name = os.path.basename(path)
        if any(_matches(name, path, pattern) for pattern in self._excludes):
            return False
        return any(_matches(name, path, pattern) for pattern in self._includes)


def _matches(name: str, path: str, pattern: str) -> bool:
    return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(path, pattern)


def _shown_path(path: str) -> str:
    cwd = os.getcwd()
    return path[len(cwd) + 1 :] if path.startswith(cwd + os.sep) else path
