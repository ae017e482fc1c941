"""One HTTP request and its response, as the app sees them (sans-io).

Theory of operation.  :class:`HTTPCycle` holds the ASGI side of one request
on any protocol: what the app's ``receive()`` gets and in which order, and
where the response is (one :class:`ResponseState`, moved by the table in
``_messages.py``).  It does no I/O: the serving layer (``_serve/_call.py``)
subclasses it with the awaitable ``receive``/``send`` pair, reads the body
events a protocol gives, and writes what the protocol makes of each step.

The rules, from the ASGI HTTP spec:

- ``receive()`` gives the body as ``http.request`` messages, the last with
  ``more_body`` False; after that, and once the client has gone, it gives
  ``http.disconnect`` (waiting for the response to end or the client to go).
- ``send()`` after the response is complete is ignored (spec 2.4, "the
  server must ignore them"); after the client has gone it raises
  :class:`~triasgi.ClientDisconnected`.
- A message out of order or malformed raises :class:`~triasgi.ASGIProtocolError`
  in the app's ``send()``; a response that never reached the wire then
  becomes a 500, one that did ends the connection (:meth:`HTTPCycle.outcome`).
"""

from __future__ import annotations

import enum
import logging
import sys
from typing import Any

from .._errors import ASGIProtocolError, ClientDisconnected
from .._events import (
    Body,
    Command,
    EndBody,
    Informational,
    PathSend,
    Request,
    Trailers,
)
from .._types import Message
from ._messages import (
    AFTER_START,
    BODY_STATES,
    START_STATES,
    ResponseState,
    check_headers,
    next_response_state,
)

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

logger = logging.getLogger("triasgi.error")

_WRITTEN = frozenset({ResponseState.BODY, ResponseState.TRAILERS, ResponseState.DONE})
# Fields that frame, route or authorize a message cannot come after its body
# (RFC 9110 section 6.5.1).
_NOT_TRAILERS = frozenset(
    {
        b"content-length",
        b"transfer-encoding",
        b"trailer",
        b"host",
        b"te",
        b"connection",
        b"content-type",
        b"content-encoding",
        b"content-range",
        b"authorization",
    }
)


class Outcome(enum.Enum):
    """What the connection does once a cycle has ended (:meth:`HTTPCycle.outcome`)."""

    KEEP_ALIVE = "serve the next request"
    CLOSE = "close the connection"
    ANSWER_500 = "answer 500, then close"
    # The request broke the protocol (a malformed body): answer
    # ``HTTPCycle.error_status``, then close.
    REJECT = "answer the request's error status, then close"


class HTTPCycle:
    """One request and its response, from the app's side.

    Args:
        request: the request head.
        scope: the ASGI scope the app is called with.
    """

    # Slots: one of these is made for every request.
    __slots__ = (
        "body_complete",
        "disconnected",
        "error_status",
        "finished",
        "must_close",
        "pending_body",
        "request",
        "response_headers",
        "scope",
        "sent_100",
        "state",
        "status",
        "trailer_headers",
        "trailers",
    )

    def __init__(self, request: Request, scope: dict[str, Any]) -> None:
        self.request = request
        self.scope = scope
        self.state = ResponseState.START
        # The request body has been given to the app to its end.
        self.body_complete = False
        # The client has gone (or the request body stalled or broke the
        # protocol, in which case error_status is the status to answer with).
        self.disconnected = False
        self.error_status = 0
        # The connection must close after this response.
        self.must_close = False
        # The response is complete or the app has returned: the serving
        # layer has acted on the cycle's end.
        self.finished = False
        self.status = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
        # The start said ``trailers``: the last body leads to TRAILERS.
        self.trailers = False
        self.trailer_headers: list[tuple[bytes, bytes]] = []
        # Whether 100 Continue has been sent for this request.
        self.sent_100 = False
        # A body event read ahead of the app's next receive().
        self.pending_body: Body | EndBody | None = None

    # -- receive -------------------------------------------------------------

    def body_message(self, event: object, after: object) -> Message | None:
        """The ``http.request`` message for a body event, or None if it is none.

        ``after`` is the event that follows, when it is already here: the end
        of the body comes with the last piece, saving the app a round trip,
        and another piece is kept for the next ``receive()``.
        """
        if type(event) is Body:
            more_body = True
            if type(after) is EndBody:
                self.body_complete = True
                more_body = False
            elif type(after) is Body:
                self.pending_body = after
            return {
                "type": "http.request",
                "body": bytes(event.data),
                "more_body": more_body,
            }
        if type(event) is EndBody:
            self.body_complete = True
            return {"type": "http.request", "body": b"", "more_body": False}
        return None

    # -- send ----------------------------------------------------------------

    def app_sent(self, message: Message) -> bytes | Command | None:
        """Take one message of the app's; what to write now, or None.

        ``http.response.start`` is held (None); a body message gives its body
        (maybe empty: the head, or the end, still has to go out); a message
        of a response extension gives a command (``_events.py``); a message
        after the response is complete is ignored (None), and so are trailers
        until the last of them.  The caller has the protocol frame the step
        (with the status, while the state is ``HEAD``), then moves the state
        on (:meth:`after_body`, :meth:`after_command`); a step the protocol
        refuses leaves the state as it was, so that a response with nothing on
        the wire can still become a 500.

        Raises:
            ASGIProtocolError: the message is out of order or malformed.
            ClientDisconnected: the client has gone.
        """
        if self.disconnected:
            raise ClientDisconnected("The client has disconnected.")
        state = self.state
        # The usual messages, well formed, need no more than these of
        # next_response_state's checks, without its call.
        if type(message) is dict:
            if state in BODY_STATES:
                # A body of bytes: the caller moves the state on.
                data = message.get("body", b"")
                if type(data) is bytes and message.get("type") == "http.response.body":
                    return data
            elif state in START_STATES and message.get("type") == "http.response.start":
                status = message.get("status")
                if type(status) is int and 200 <= status <= 599:
                    self.status = status
                    self.response_headers = check_headers(message.get("headers", ()))
                    self.trailers = message.get("trailers", False) is True
                    self.state = AFTER_START
                    return None
        new_state = next_response_state(state, message, trailers=self.trailers)
        if state is ResponseState.DONE:
            return None
        msg_type = message["type"]
        if msg_type == "http.response.body":
            body: bytes = message.get("body", b"")
            return body
        if msg_type == "http.response.start":
            self.status = message["status"]
            self.response_headers = check_headers(message.get("headers", ()))
            self.trailers = message.get("trailers", False) is True
            self.state = new_state
            return None
        return self._command(msg_type, message, new_state)

    def _command(
        self, msg_type: str, message: Message, new_state: ResponseState
    ) -> Command | None:
        if msg_type == "http.response.trailers":
            self.trailer_headers += _trailer_fields(message.get("headers", ()))
            if new_state is ResponseState.DONE:
                return Trailers(self.trailer_headers)
            return None
        if msg_type == "http.response.pathsend":
            return PathSend(message["path"])
        if msg_type == "http.response.early_hint":
            links = list(message["links"])
            for link in links:
                if type(link) is not bytes:
                    raise ASGIProtocolError(
                        f"http.response.early_hint 'links' must be byte strings, "
                        f"got {link!r}."
                    )
            return Informational(103, [(b"link", link) for link in links])
        # http.response.informational
        status = message["status"]
        if status == 100:
            self.sent_100 = True
        return Informational(status, check_headers(message.get("headers", ())))

    def after_body(self, last: bool) -> None:
        """The protocol has framed a body step: move the state on."""
        if not last:
            self.state = ResponseState.BODY
        elif self.trailers:
            self.state = ResponseState.TRAILERS
        else:
            self.state = ResponseState.DONE

    def after_command(self, command: Command) -> None:
        """The protocol has written a command: move the state on."""
        if type(command) is Trailers:
            self.state = ResponseState.DONE
        elif type(command) is PathSend:
            self.after_body(True)

    @property
    def head_written(self) -> bool:
        """Whether any byte of the response may have reached the wire."""
        return self.state in _WRITTEN

    def on_disconnect(self) -> None:
        """The client went away before the response was complete."""
        self.disconnected = True

    # -- the end -------------------------------------------------------------

    def app_returned(self, exc: Exception | None) -> None:
        """Record how the app call ended, and log what went wrong."""
        if self.state is ResponseState.DONE:
            if exc is not None and not is_disconnect(exc):
                logger.error(
                    "Exception in ASGI application after the response", exc_info=exc
                )
            return
        if self.disconnected:
            if exc is not None and not is_disconnect(exc):
                logger.error("Exception in ASGI application", exc_info=exc)
            return
        self.must_close = True
        if exc is not None:
            logger.error("Exception in ASGI application", exc_info=exc)
        elif self.state is ResponseState.START:
            logger.error("ASGI callable returned without starting a response.")
        else:
            logger.error("ASGI callable returned without completing the response.")

    def outcome(self) -> Outcome:
        """What the connection does now that the cycle has ended."""
        if self.error_status and not self.head_written:
            return Outcome.REJECT
        if self.disconnected:
            return Outcome.CLOSE
        if self.must_close or self.state is not ResponseState.DONE:
            return Outcome.CLOSE if self.head_written else Outcome.ANSWER_500
        return Outcome.KEEP_ALIVE


def is_disconnect(exc: BaseException) -> bool:
    """Whether ``exc`` is the app letting :class:`ClientDisconnected` through."""
    if isinstance(exc, ClientDisconnected):
        return True
    if isinstance(exc, BaseExceptionGroup):
        return all(is_disconnect(e) for e in exc.exceptions)
    return False


def _trailer_fields(headers: object) -> list[tuple[bytes, bytes]]:
    """Trailer fields as header pairs, or raise: no pseudo or framing fields."""
    fields = check_headers(headers)
    for name, _ in fields:
        lower = name.lower()
        if lower[:1] == b":" or lower in _NOT_TRAILERS:
            raise ASGIProtocolError(
                f"http.response.trailers cannot carry the field {name!r}."
            )
    return fields
