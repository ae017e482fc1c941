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

from .._errors import ClientDisconnected
from .._events import Body, EndBody, Request
from .._types import Message
from ._messages import ResponseState, check_headers, next_response_state

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

logger = logging.getLogger("triasgi.error")


class Outcome(enum.Enum):
    """What the connection does once a cycle has ended (:meth:`HTTPCycle.outcome`)."""

    KEEP_ALIVE = "serve the next request"
    CLOSE = "close the connection"
    ANSWER_500 = "answer 500, then close"


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
        "finished",
        "must_close",
        "pending_body",
        "request",
        "response_headers",
        "scope",
        "sent_100",
        "state",
        "status",
    )

    def __init__(self, request: Request, scope: dict[str, Any]) -> None:
        self.request = request
        self.scope = scope
        self.state = ResponseState.START
        # The request body has been given to the app to its end.
        self.body_complete = False
        # The client has gone (or the request body stalled).
        self.disconnected = False
        # The connection must close after this response.
        self.must_close = False
        # The response is complete or the app has returned: the serving
        # layer has acted on the cycle's end.
        self.finished = False
        self.status = 0
        self.response_headers: list[tuple[bytes, bytes]] = []
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

    def app_sent(self, message: Message) -> bytes | None:
        """Take one message of the app's; the body to write now, or None.

        ``http.response.start`` is held (None); a body message gives its body
        (maybe empty: the head, or the end, still has to go out); a message
        after the response is complete is ignored (None).  The caller has the
        protocol frame the step (with the status, while the state is
        ``HEAD``), then sets the state to ``BODY``, or ``DONE`` after the last
        body message; a step the protocol refuses leaves the state as it was,
        so that a response with nothing on the wire can still become a 500.

        Raises:
            ASGIProtocolError: the message is out of order or malformed.
            ClientDisconnected: the client has gone.
        """
        if self.disconnected:
            raise ClientDisconnected("The client has disconnected.")
        state = self.state
        new_state = next_response_state(state, message)
        if state is ResponseState.DONE:
            return None
        if state is ResponseState.START:
            self.status = message["status"]
            self.response_headers = check_headers(message.get("headers", ()))
            self.state = new_state
            return None
        body: bytes = message.get("body", b"")
        return body

    @property
    def head_written(self) -> bool:
        """Whether any byte of the response may have reached the wire."""
        return self.state is ResponseState.BODY or self.state is ResponseState.DONE

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
