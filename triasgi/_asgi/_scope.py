"""ASGI scopes from request heads (sans-io): the target, the path, the version."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, unquote_to_bytes

from .._events import Request
from .._types import Address
from ._proxy_headers import TrustedProxies, apply_proxy_headers

ASGI_VERSION = {"version": "3.0", "spec_version": "2.5"}

# The response extensions of every http scope (docs/behaviour.md), copied
# for each; their values, empty dicts, are shared.  The serving layer adds
# ``tls`` on a TLS connection.
_HTTP_EXTENSIONS: dict[str, dict[str, Any]] = {
    "http.response.trailers": {},
    "http.response.early_hint": {},
    "http.response.pathsend": {},
}

# The usual versions and methods as the scope has them, without a decode.
_VERSIONS = {version: version.decode() for version in (b"1.1", b"1.0", b"2")}
_METHODS = {
    method: method.decode()
    for method in (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS")
}


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


def mount(path: str, raw_path: bytes, root_path: str) -> tuple[str, bytes, str]:
    """``path``, ``raw_path`` and ``root_path`` for an app mounted at ``root_path``.

    The ASGI spec's ``path`` is the whole path, of which ``root_path`` is the
    mount point (WSGI's ``SCRIPT_NAME + PATH_INFO``).  A proxy that strips
    the prefix sends ``/items/3`` for ``/api/items/3``: the root path is put
    back in front of both paths, as uvicorn does.  A path that already starts
    with the root path, a whole segment of it (``/api`` or ``/api/...``, not
    ``/apiary``), came from a proxy that kept the prefix and is left alone.
    A trailing slash of the root path is dropped, so ``/api/`` mounts as
    ``/api``.

    Returns:
        ``(path, raw_path, root_path)`` for the scope.
    """
    root = root_path.rstrip("/")
    if not root or path == root or path.startswith(root + "/"):
        return path, raw_path, root
    return root + path, quote(root).encode("ascii") + raw_path, root


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
    # split_target and decode_path, inline for the usual target.
    target = request.target
    if target[:1] == b"/":
        raw_path, _, query_string = target.partition(b"?")
    else:
        raw_path, query_string = split_target(target)
    if b"%" not in raw_path and raw_path.isascii():
        path = raw_path.decode("ascii")
    else:
        path = decode_path(raw_path)
    if root_path:
        path, raw_path, root_path = mount(path, raw_path, root_path)
    version = request.http_version
    method = request.method
    return {
        "type": "http",
        "asgi": ASGI_VERSION.copy(),
        "http_version": _VERSIONS.get(version) or version.decode("ascii"),
        "method": _METHODS.get(method) or method.decode("ascii"),
        "scheme": scheme,
        "path": path,
        "raw_path": raw_path,
        "query_string": query_string,
        "root_path": root_path,
        "headers": request.headers,
        "client": client,
        "server": server,
        "state": state.copy(),
        "extensions": _HTTP_EXTENSIONS.copy(),
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
    """The ``websocket`` scope of an upgrade request (ASGI WebSocket spec).

    The keys it shares with the ``http`` scope have the same values, but for
    the scheme (``ws``, ``wss``); it has no ``method``.
    """
    scope = http_scope(
        request,
        scheme=scheme,
        client=client,
        server=server,
        root_path=root_path,
        state=state,
    )
    del scope["method"]
    scope["type"] = "websocket"
    scope["scheme"] = "wss" if scheme == "https" else "ws"
    scope["headers"] = list(request.headers)
    scope["subprotocols"] = list(subprotocols)
    scope["extensions"] = {"websocket.http.response": {}}
    return scope


def add_edge_facts(
    scope: dict[str, Any],
    tls: dict[str, Any] | None,
    trusted: TrustedProxies | None,
    *,
    forwarded: bool = True,
) -> dict[str, Any]:
    """Add what the connection's edge knows to an HTTP or WebSocket scope.

    The ``tls`` extension on a TLS connection, and the client, scheme and
    server a trusted proxy forwarded (``proxy_headers``); ``forwarded``
    False says the request has no forwarding header at all.
    """
    if tls is not None:
        scope["extensions"]["tls"] = tls
    if forwarded and trusted is not None:
        apply_proxy_headers(scope, trusted)
    return scope
