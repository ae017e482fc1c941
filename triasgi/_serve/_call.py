"""One app call over an HTTP cycle (``_asgi/_http.py``): ``receive`` and ``send``.

The cycle (sans-io) says what each message means; this adds what needs
trio: waiting for body the connection task reads, writing what the
protocol frames, the request-body timeout, and the call itself, run in the
connection nursery.  It speaks to its connection through a few methods
(``next_event``, ``write``, ``client_gone``, ``cycle_finished``), so that
the same call serves any protocol that gives the events of ``_events.py``.
"""

from __future__ import annotations

import logging
import os
import stat
from time import perf_counter
from typing import TYPE_CHECKING, Any

import trio

from .._asgi._http import HTTPCycle
from .._asgi._messages import ResponseState
from .._errors import ASGIProtocolError, ClientDisconnected
from .._events import (
    NEED_DATA,
    Body,
    Command,
    Informational,
    PathSend,
    ProtocolError,
    Request,
    Trailers,
)
from .._logging import AccessEntry, log_access, logged_version
from .._metrics import http_protocol
from .._protocol._h1 import CONTINUE_100
from .._protocol._h1writer import ResponseError
from .._types import Message
from ._transport import TURN_SECONDS
from ._waiters import Waiters

if TYPE_CHECKING:
    from ._connection import HTTP11Connection

logger = logging.getLogger("triasgi.error")

_HEAD = ResponseState.HEAD
_COMMANDS = frozenset({Informational, Trailers, PathSend})
_BODY = ResponseState.BODY
_TRAILERS = ResponseState.TRAILERS
_DONE = ResponseState.DONE


class AppCall(HTTPCycle):
    """The ``receive``/``send`` pair of one request, and the app call over them."""

    # Slots: one of these is made for every request.
    __slots__ = ("conn", "released", "started_at", "turn_began")

    def __init__(
        self, conn: HTTP11Connection, request: Request, scope: dict[str, Any]
    ) -> None:
        HTTPCycle.__init__(self, request, scope)  # not super(): one call less
        self.conn = conn
        self.started_at = self.turn_began = perf_counter()
        # A receive() waiting for the response to end or the client to go,
        # made when one first waits: most requests never have one.
        self.released: Waiters | None = None

    async def run(self) -> None:
        """Call the app; then tell the connection the cycle has ended."""
        conn = self.conn
        server = conn.server
        conn.apps_running += 1
        # When the app's task last let the other tasks run, as far as
        # receive() and send() know: its turn begins as it starts.
        self.turn_began = perf_counter()
        try:
            await server.app(self.scope, self.receive, self.send)
        except Exception as exc:
            self.app_returned(exc)
        else:
            if self.state is not _DONE:  # a complete response needs no word
                self.app_returned(None)
        finally:
            conn.app_call_done()
            server.release_request()
            if not self.finished:  # as it is, most often, by now
                conn.cycle_finished(self)

    # -- receive -------------------------------------------------------------

    async def receive(self) -> Message:
        if self.disconnected or self.state is _DONE:
            # No cancellable checkpoint here: Starlette's is_disconnected()
            # calls receive() in an already-cancelled scope and must see this.
            await trio.lowlevel.cancel_shielded_checkpoint()
            return {"type": "http.disconnect"}
        if not self.body_complete:
            return await self._receive_body()
        released = self.released
        if released is None:
            released = self.released = Waiters()
        await released.park()  # until _response_complete or on_disconnect
        return {"type": "http.disconnect"}

    async def _receive_body(self) -> Message:
        # A cancellation point before anything is taken; a schedule point
        # only to wait for the body, or when the app's turn is over.
        await trio.lowlevel.checkpoint_if_cancelled()
        conn = self.conn
        protocol = conn.protocol
        if (
            protocol.expects_100_continue
            and not self.sent_100
            and not self.head_written
        ):
            self.sent_100 = True
            if await conn.write(CONTINUE_100):
                self.turn_began = perf_counter()
        event: Any = self.pending_body
        if event is not None:
            self.pending_body = None
        elif (event := conn.next_event_nowait()) is NEED_DATA:
            timeout = conn.server.config.timeout_request_body
            event = None
            with trio.move_on_after(timeout):
                event = await conn.next_event()
            self.turn_began = perf_counter()
            if event is None:
                # A body that stalls is a client that has gone, for the app.
                logger.debug(
                    "Request body from %s stalled for %g seconds.", conn.client, timeout
                )
                conn.client_gone()
                return {"type": "http.disconnect"}
        if type(event) is ProtocolError:
            # The rest of the body cannot be read: for the app the request
            # ends as if the client had gone; the client gets the error
            # status if no response has started.
            logger.debug("Bad request body from %s: %s", conn.client, event.reason)
            self.error_status = event.status
            conn.request_broken(self)
            await trio.lowlevel.cancel_shielded_checkpoint()
            return {"type": "http.disconnect"}
        after = conn.next_event_nowait() if type(event) is Body else None
        message = self.body_message(event, after)
        if message is None:
            # The connection ended, or anything unexpected: the client is gone.
            conn.client_gone()
            return {"type": "http.disconnect"}
        if perf_counter() - self.turn_began > TURN_SECONDS:
            await trio.lowlevel.cancel_shielded_checkpoint()
            self.turn_began = perf_counter()
        return message

    # -- send ----------------------------------------------------------------

    async def send(self, message: Message) -> None:
        if self.disconnected:
            await trio.lowlevel.checkpoint()
            raise ClientDisconnected("The client has disconnected.")
        # A cancellation point always; a schedule point only when a write
        # waits, or when the app's turn is over (TURN_SECONDS).
        body = self.app_sent(message)
        if body is None:
            if perf_counter() - self.turn_began > TURN_SECONDS:
                await trio.lowlevel.checkpoint()
                self.turn_began = perf_counter()
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            return
        if type(body) is not bytes and body.__class__ in _COMMANDS:
            await self._run_command(body)  # type: ignore[arg-type]
            await self._end_turn_if_due()
            return
        last = not message.get("more_body", False)
        trailers = self.trailers
        conn = self.conn
        status = self.status if self.state is _HEAD else 0
        try:
            chunks = conn.protocol.response_data(
                status,
                self.response_headers,
                body,  # type: ignore[arg-type]
                last,
                conn.server.default_header_lines() if status else (),
                trailers,
            )
        except ResponseError as exc:
            self.must_close = True
            raise ASGIProtocolError(f"Invalid response: {exc}.") from None
        # HTTPCycle.after_body, inline: this runs for every body message.
        if not last:
            self.state = _BODY
            final = False
        elif trailers:
            self.state = _TRAILERS
            final = False  # the response ends with its trailers
        else:
            self.state = _DONE
            final = True
        if chunks:
            # The response is complete once the kernel has its last byte,
            # before any schedule point: by then the client may have sent
            # its next request, which is best met by a connection that is
            # ready for it (cycle_finished).
            if await conn.write(
                *chunks, then=self._response_complete if final else None
            ):
                self.turn_began = perf_counter()
                return
        else:
            if final:
                self._response_complete()
            await trio.lowlevel.checkpoint_if_cancelled()
        if perf_counter() - self.turn_began > TURN_SECONDS:
            await trio.lowlevel.cancel_shielded_checkpoint()
            self.turn_began = perf_counter()

    async def _end_turn_if_due(self) -> None:
        """Let the other tasks run if the app's turn is over (TURN_SECONDS)."""
        if perf_counter() - self.turn_began > TURN_SECONDS:
            await trio.lowlevel.cancel_shielded_checkpoint()
            self.turn_began = perf_counter()

    async def _run_command(self, command: Command) -> None:
        """A step of a response extension: an interim response, trailers, a file."""
        conn = self.conn
        kind = type(command)
        if kind is Informational:
            assert isinstance(command, Informational)
            try:
                data = conn.protocol.informational(command.status, command.headers)
            except ResponseError as exc:
                raise ASGIProtocolError(f"Invalid interim response: {exc}.") from None
            if data:
                await conn.write(data)
            else:
                await trio.lowlevel.checkpoint()  # dropped: an HTTP/1.0 client
            return
        if kind is Trailers:
            assert isinstance(command, Trailers)
            try:
                data = conn.protocol.trailers_data(command.headers)
            except ResponseError as exc:
                self.must_close = True
                raise ASGIProtocolError(f"Invalid trailers: {exc}.") from None
            self.after_command(command)
            if data:
                await conn.write(data, then=self._response_complete)
            else:
                self._response_complete()
                await trio.lowlevel.checkpoint()
            return
        assert isinstance(command, PathSend)
        await self._send_path(command)

    async def _send_path(self, command: PathSend) -> None:
        """The body from a file: the kernel copies it to a plain socket."""
        conn = self.conn
        path = command.path
        fd, size = open_file(path)
        try:
            trailers = self.trailers
            try:
                before, after, send_file = conn.protocol.file_response(
                    self.status,
                    self.response_headers,
                    size,
                    conn.server.default_header_lines(),
                    trailers,
                )
            except ResponseError as exc:
                self.must_close = True
                raise ASGIProtocolError(f"Invalid response: {exc}.") from None
            complete = None if trailers else self._response_complete
            if not send_file:
                self.after_command(command)
                await conn.write(before, then=complete)
                return
            self.state = _BODY
            await conn.write(before)
            try:
                await conn.send_file(fd, size)
            except ClientDisconnected:
                raise
            except OSError as exc:
                # Part of the body is on the wire: only closing can end it.
                self.must_close = True
                raise ASGIProtocolError(
                    f"http.response.pathsend could not read {path!r}: {exc}."
                ) from None
            self.after_command(command)
            if after:
                await conn.write(after, then=complete)
            elif complete is not None:
                complete()
        finally:
            os.close(fd)

    def _response_complete(self) -> None:
        if self.released is not None:
            self.released.unpark_all()
        conn = self.conn
        server = conn.server
        if server.access_log:
            self._log_access()
        if server.metrics is not None:
            self.count(self.status)
        conn.cycle_finished(self)

    def count(self, status: int) -> None:
        """Count the request, answered with ``status``, in the server's metrics."""
        conn = self.conn
        metrics = conn.server.metrics
        assert metrics is not None
        request = self.request
        metrics.request_done(
            request.method,
            status,
            http_protocol(request.http_version),
            conn.protocol.take_request_body_bytes(),
            self.body_bytes_sent(),
            perf_counter() - self.started_at,
        )

    def body_bytes_sent(self) -> int:
        """The response's body bytes framed so far."""
        return self.conn.protocol.response_body_bytes

    def on_disconnect(self) -> None:
        super().on_disconnect()
        if self.released is not None:
            self.released.unpark_all()

    def _log_access(self) -> None:
        request = self.request
        scope = self.scope
        entry = AccessEntry(
            client=scope["client"],
            method=request.method.decode("ascii"),
            target=request.target.decode("ascii", "replace"),
            http_version=logged_version(request.http_version),
            scheme=scope["scheme"],
            status=self.status,
            body_bytes=self.body_bytes_sent(),
            duration=perf_counter() - self.started_at,
            request_headers=request.headers,
            response_headers=self.response_headers,
        )
        log_access(self.conn.server.access_format, entry)


def open_file(path: str) -> tuple[int, int]:
    """Open the file of an ``http.response.pathsend``: its descriptor and size.

    Raises:
        ASGIProtocolError: it cannot be opened, or it is not a regular file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ASGIProtocolError(
            f"http.response.pathsend cannot open {path!r}: {exc.strerror}."
        ) from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise ASGIProtocolError(
            f"http.response.pathsend needs a regular file, not {path!r}."
        )
    return fd, info.st_size
