"""ASGI scopes from request heads (sans-io): the target, the path, the version."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from .._events import Request
from .._types import Address

ASGI_VERSION = {"version": "3.0", "spec_version": "2.5"}


def split_target(target: bytes) -> tuple[bytes, bytes]:
    """Split a request target into ``(raw_path, query_string)``.

    Handles the origin form (``/a?b``), the absolute form
    (``http://host/a?b``, RFC 9112 section 3.2.2) and the asterisk form.
    """
    if target[:1] != b"/" and b"://" in target[:10]:
        _, _, rest = target.partition(b"://")
        slash = rest.find(b"/")
        query = rest.find(b"?")
        if slash == -1 or (query != -1 and query < slash):
            target = b"/" + rest[query:] if query != -1 else b"/"
        else:
            target = rest[slash:]
    raw_path, _, query_string = target.partition(b"?")
    return raw_path, query_string


def decode_path(raw_path: bytes) -> str:
    """Percent-decode ``raw_path`` and decode the result as UTF-8."""
    if b"%" not in raw_path and raw_path.isascii():
        return raw_path.decode("ascii")
    return unquote_to_bytes(raw_path).decode("utf-8", "replace")


def http_scope(
    request: Request,
    *,
    scheme: str,
    client: Address | None,
    server: Address | None,
    root_path: str,
    state: dict[str, Any],
) -> dict[str, Any]:
    """The ``http`` scope of a request (ASGI HTTP spec, "HTTP connection scope")."""
    raw_path, query_string = split_target(request.target)
    return {
        "type": "http",
        "asgi": dict(ASGI_VERSION),
        "http_version": request.http_version.decode("ascii"),
        "method": request.method.decode("ascii"),
        "scheme": scheme,
        "path": decode_path(raw_path),
        "raw_path": raw_path,
        "query_string": query_string,
        "root_path": root_path,
        "headers": request.headers,
        "client": client,
        "server": server,
        "state": state.copy(),
        # Response extensions (docs/behaviour.md); the serving layer adds
        # ``tls`` on a TLS connection.
        "extensions": {
            "http.response.trailers": {},
            "http.response.early_hint": {},
            "http.response.pathsend": {},
        },
    }


def websocket_scope(
    request: Request,
    subprotocols: list[str],
    *,
    scheme: str,
    client: Address | None,
    server: Address | None,
    root_path: str,
    state: dict[str, Any],
) -> dict[str, Any]:
    """The ``websocket`` scope of an upgrade request (ASGI WebSocket spec)."""
    raw_path, query_string = split_target(request.target)
    return {
        "type": "websocket",
        "asgi": dict(ASGI_VERSION),
        "http_version": request.http_version.decode("ascii"),
        "scheme": "wss" if scheme == "https" else "ws",
        "path": decode_path(raw_path),
        "raw_path": raw_path,
        "query_string": query_string,
        "root_path": root_path,
        "headers": list(request.headers),
        "client": client,
        "server": server,
        "subprotocols": list(subprotocols),
        "state": state.copy(),
        "extensions": {"websocket.http.response": {}},
    }
