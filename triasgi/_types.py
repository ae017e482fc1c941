"""The ASGI types, defined once for the whole package."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: A bound address as the ASGI scope shows it: ``(host, port)`` for TCP,
#: ``(path, None)`` for a Unix socket.
Address = tuple[str, "int | None"]
