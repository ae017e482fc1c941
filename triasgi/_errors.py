"""Errors shared by every layer: what the app, the server and a user may see."""

from __future__ import annotations


class ClientDisconnected(OSError):
    """Raised by ``send()`` once the client has gone away.

    ASGI HTTP spec 2.4: sending on a closed connection raises a server-specific
    subclass of :class:`OSError`.  Apps may catch it to clean up.
    """


class ASGIProtocolError(RuntimeError):
    """The app broke the ASGI message rules (wrong order, missing or bad key)."""


class StartupError(Exception):
    """The server could not start: a bind failure or a failed lifespan startup.

    The message is one sentence fit to show a user.
    """
