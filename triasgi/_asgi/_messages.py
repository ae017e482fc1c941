"""Which ASGI message the app may send next, as tables (sans-io).

What a malformed message is, and the state each message leads to, for HTTP
responses and WebSocket sessions: written once here, driven by every
protocol.
"""

from __future__ import annotations

import enum

from .._errors import ASGIProtocolError
from .._types import Message


class ResponseState(enum.Enum):
    """Where an HTTP response is, as seen from the app's ``send()`` calls."""

    START = "waiting for http.response.start"
    # The head is held until the first body message, so that a response
    # given whole gets a content-length, and a bad head can still become a
    # clean 500: nothing of the response is on the wire yet.
    HEAD = "holding the response head"
    BODY = "sending http.response.body"
    # After the last body of a response whose start said ``trailers``.
    TRAILERS = "sending http.response.trailers"
    DONE = "complete"

    # Members are singletons compared by identity, so they hash as objects:
    # Enum's own __hash__ is a Python call on every table lookup.
    __hash__ = object.__hash__


_BODY = ResponseState.BODY
_TRAILERS = ResponseState.TRAILERS
_DONE = ResponseState.DONE
_INTERIM = ("http.response.early_hint", "http.response.informational")

# The one table of which message the app may send in which state, the usual
# one first (error messages name them in this order).  Interim responses
# (early hints, 1xx) go before the response head is on the wire: before
# http.response.start, as frameworks send them, or after it and before the
# first body, as the extensions spec has it.  A path send is the whole body,
# in place of http.response.body.
_HTTP_SEND: dict[ResponseState, tuple[str, ...]] = {
    ResponseState.START: ("http.response.start", *_INTERIM),
    ResponseState.HEAD: ("http.response.body", "http.response.pathsend", *_INTERIM),
    ResponseState.BODY: ("http.response.body",),
    ResponseState.TRAILERS: ("http.response.trailers",),
    ResponseState.DONE: (),
}
#: The states in which the table allows ``http.response.body``.
BODY_STATES = frozenset(
    state for state, allowed in _HTTP_SEND.items() if "http.response.body" in allowed
)
#: The states in which it allows ``http.response.start``, and the state that
#: message leads to.
START_STATES = frozenset(
    state for state, allowed in _HTTP_SEND.items() if "http.response.start" in allowed
)
AFTER_START = ResponseState.HEAD


def _message_type(message: Message) -> str:
    try:
        return str(message["type"])
    except (KeyError, TypeError):
        raise ASGIProtocolError(
            f"ASGI message without a 'type' key: {message!r}"
        ) from None


def _check_status(msg_type: str, message: Message) -> None:
    status = message.get("status")
    if type(status) is not int or not 200 <= status <= 599:
        raise ASGIProtocolError(
            f"{msg_type} needs an int 'status' from 200 to 599, got {status!r}."
        )


def next_response_state(
    state: ResponseState, message: Message, *, trailers: bool = False
) -> ResponseState:
    """Check one message the app sent and return the state it leads to.

    Messages after the response is complete are ignored, as the spec says, so
    ``DONE`` stays ``DONE``.  ``trailers``: the response's start said
    ``trailers``, so its last body leads to ``TRAILERS``.

    Raises:
        ASGIProtocolError: the message is not allowed in ``state`` or is
            malformed.
    """
    # _message_type and _check_status, inline: this runs for every message.
    try:
        msg_type = message["type"]
    except (KeyError, TypeError):
        msg_type = _message_type(message)  # raises
    if type(msg_type) is not str:
        msg_type = str(msg_type)
    if state is _DONE:
        return state
    allowed = _HTTP_SEND[state]
    if msg_type not in allowed:
        expected = " or ".join(allowed)
        raise ASGIProtocolError(
            f"Expected {expected} while {state.value}, got {msg_type!r}."
        )
    if msg_type == "http.response.body":
        body = message.get("body", b"")
        if type(body) is not bytes and not isinstance(body, (bytearray, memoryview)):
            raise ASGIProtocolError(
                f"http.response.body 'body' must be bytes, got {type(body).__name__}."
            )
        if message.get("more_body", False):
            return _BODY
        return _TRAILERS if trailers else _DONE
    if msg_type == "http.response.start":
        status = message.get("status")
        if type(status) is not int or not 200 <= status <= 599:
            _check_status(msg_type, message)  # raises
        return AFTER_START
    return _extension_state(state, msg_type, message, trailers)


def _iterable(value: object) -> bool:
    try:
        iter(value)  # type: ignore[call-overload]
    except TypeError:
        return False
    return True


def _extension_state(
    state: ResponseState, msg_type: str, message: Message, trailers: bool
) -> ResponseState:
    """The state after a message of a response extension (extensions spec)."""
    if msg_type == "http.response.trailers":
        check_headers(message.get("headers", ()))
        if message.get("more_trailers", False):
            return ResponseState.TRAILERS
        return ResponseState.DONE
    if msg_type == "http.response.pathsend":
        path = message.get("path")
        if type(path) is not str or not path:
            raise ASGIProtocolError(
                f"http.response.pathsend needs a str 'path', got {path!r}."
            )
        return ResponseState.TRAILERS if trailers else ResponseState.DONE
    if msg_type == "http.response.early_hint":
        links = message.get("links")
        if links is None or isinstance(links, (bytes, str)) or not _iterable(links):
            raise ASGIProtocolError(
                f"http.response.early_hint needs 'links', an iterable of byte "
                f"strings, got {links!r}."
            )
        return state
    # http.response.informational
    status = message.get("status")
    if type(status) is not int or not 100 <= status <= 199 or status == 101:
        raise ASGIProtocolError(
            f"http.response.informational needs an int 1xx 'status' other than "
            f"101 (an upgrade has its own path), got {status!r}."
        )
    check_headers(message.get("headers", ()))
    return state


class WebSocketState(enum.Enum):
    """Where a WebSocket is, as seen from the app's ``send()`` calls."""

    HANDSHAKE = "answering the handshake"
    CONNECTED = "connected"
    RESPONSE = "sending a websocket.http.response"
    CLOSED = "closed"

    __hash__ = object.__hash__  # as ResponseState's


# The one table of which message the app may send in which state of a
# WebSocket, and the state it leads to.  The last body of a denial response
# (more_body false) leads to CLOSED instead; see next_websocket_state.
_WEBSOCKET_SEND: dict[WebSocketState, dict[str, WebSocketState]] = {
    WebSocketState.HANDSHAKE: {
        "websocket.accept": WebSocketState.CONNECTED,
        "websocket.close": WebSocketState.CLOSED,
        "websocket.http.response.start": WebSocketState.RESPONSE,
    },
    WebSocketState.CONNECTED: {
        "websocket.send": WebSocketState.CONNECTED,
        "websocket.close": WebSocketState.CLOSED,
    },
    WebSocketState.RESPONSE: {
        "websocket.http.response.body": WebSocketState.RESPONSE,
    },
    WebSocketState.CLOSED: {},
}

# RFC 6455 section 7.4: the codes an endpoint may put in a close frame.
# 1004 is reserved, 1005, 1006 and 1015 must never be sent; 1012-1014 are
# registered with IANA; 3000-4999 belong to libraries and applications.
_SENDABLE_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, *range(1007, 1015), *range(3000, 5000)}
)


def next_websocket_state(state: WebSocketState, message: Message) -> WebSocketState:
    """Check one message a WebSocket app sent and return the state it leads to.

    Raises:
        ASGIProtocolError: the message is not allowed in ``state`` or is
            malformed.
    """
    msg_type = _message_type(message)
    allowed = _WEBSOCKET_SEND[state]
    if msg_type not in allowed:
        expected = " or ".join(sorted(allowed)) or "nothing"
        raise ASGIProtocolError(
            f"Expected {expected} while {state.value}, got {msg_type!r}."
        )
    if msg_type == "websocket.accept":
        subprotocol = message.get("subprotocol")
        if subprotocol is not None and type(subprotocol) is not str:
            raise ASGIProtocolError(
                f"websocket.accept 'subprotocol' must be a str or None, "
                f"got {subprotocol!r}."
            )
        for name, _ in check_headers(message.get("headers", ())):
            if name.lower() == b"sec-websocket-protocol":
                raise ASGIProtocolError(
                    "websocket.accept 'headers' must not set sec-websocket-protocol; "
                    "use the 'subprotocol' key."
                )
    elif msg_type == "websocket.send":
        data, text = message.get("bytes"), message.get("text")
        if (data is None) == (text is None):
            raise ASGIProtocolError(
                "websocket.send needs exactly one of 'bytes' and 'text'."
            )
        if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
            raise ASGIProtocolError(
                f"websocket.send 'bytes' must be bytes, got {type(data).__name__}."
            )
        if text is not None and type(text) is not str:
            raise ASGIProtocolError(
                f"websocket.send 'text' must be a str, got {type(text).__name__}."
            )
    elif msg_type == "websocket.close":
        code = message.get("code", 1000)
        if type(code) is not int or code not in _SENDABLE_CLOSE_CODES:
            raise ASGIProtocolError(
                f"websocket.close 'code' must be a close code an endpoint may "
                f"send (1000-1003, 1007-1014 or 3000-4999), got {code!r}."
            )
        reason = message.get("reason")
        if reason is not None and type(reason) is not str:
            raise ASGIProtocolError(
                f"websocket.close 'reason' must be a str or None, got {reason!r}."
            )
    elif msg_type == "websocket.http.response.start":
        _check_status(msg_type, message)
        check_headers(message.get("headers", ()))
    elif msg_type == "websocket.http.response.body":
        body = message.get("body", b"")
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise ASGIProtocolError(
                f"websocket.http.response.body 'body' must be bytes, "
                f"got {type(body).__name__}."
            )
        if not message.get("more_body", False):
            return WebSocketState.CLOSED
    return allowed[msg_type]


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
