"""ASGI scopes from request heads (sans-io): the target, the path, the version."""

from __future__ import annotations

from urllib.parse import unquote_to_bytes

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
