"""ASGI rules that do not depend on the transport (sans-io).

Which message the app may send next, what a malformed message is, and how a
request target becomes ``path``/``raw_path``/``query_string``: written once
here, driven by the HTTP/1.1 connection (and any later protocol).
"""

from __future__ import annotations

import enum
from urllib.parse import unquote_to_bytes

from ._types import Message

ASGI_VERSION = {"version": "3.0", "spec_version": "2.4"}


class ClientDisconnected(OSError):
    """Raised by ``send()`` once the client has gone away.

    ASGI HTTP spec 2.4: sending on a closed connection raises a server-specific
    subclass of :class:`OSError`.  Apps may catch it to clean up.
    """


class ASGIProtocolError(RuntimeError):
    """The app broke the ASGI message rules (wrong order, missing or bad key)."""


class ResponseState(enum.Enum):
    """Where an HTTP response is, as seen from the app's ``send()`` calls."""

    START = "waiting for http.response.start"
    BODY = "sending http.response.body"
    DONE = "complete"


# The one table of which message the app may send in which state.
_HTTP_SEND: dict[ResponseState, frozenset[str]] = {
    ResponseState.START: frozenset({"http.response.start"}),
    ResponseState.BODY: frozenset({"http.response.body"}),
    ResponseState.DONE: frozenset(),
}


def next_response_state(state: ResponseState, message: Message) -> ResponseState:
    """Check one message the app sent and return the state it leads to.

    Messages after the response is complete are ignored, as the spec says, so
    ``DONE`` stays ``DONE``.

    Raises:
        ASGIProtocolError: the message is not allowed in ``state`` or is
            malformed.
    """
    try:
        msg_type = message["type"]
    except (KeyError, TypeError):
        raise ASGIProtocolError(
            f"ASGI message without a 'type' key: {message!r}"
        ) from None
    if state is ResponseState.DONE:
        return state
    if msg_type not in _HTTP_SEND[state]:
        expected = " or ".join(sorted(_HTTP_SEND[state]))
        raise ASGIProtocolError(
            f"Expected {expected} while {state.value}, got {msg_type!r}."
        )
    if msg_type == "http.response.start":
        status = message.get("status")
        if type(status) is not int or not 200 <= status <= 599:
            raise ASGIProtocolError(
                f"http.response.start needs an int 'status' from 200 to 599, "
                f"got {status!r}."
            )
        return ResponseState.BODY
    body = message.get("body", b"")
    if not isinstance(body, (bytes, bytearray, memoryview)):
        raise ASGIProtocolError(
            f"http.response.body 'body' must be bytes, got {type(body).__name__}."
        )
    return ResponseState.BODY if message.get("more_body", False) else ResponseState.DONE


def check_headers(headers: object) -> list[tuple[bytes, bytes]]:
    """Return app-supplied headers as a list of byte pairs, or raise.

    Raises:
        ASGIProtocolError: ``headers`` is not an iterable of two byte strings.
    """
    result = []
    try:
        for name, value in headers:  # type: ignore[attr-defined]
            if type(name) is not bytes or type(value) is not bytes:
                raise TypeError
            result.append((name, value))
    except (TypeError, ValueError):
        raise ASGIProtocolError(
            f"Response headers must be an iterable of [name, value] pairs of "
            f"byte strings, got {headers!r}."
        ) from None
    return result


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
