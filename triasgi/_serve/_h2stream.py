"""What the HTTP/2 connection keeps of a stream, and sending on one.

Both kinds of stream, an app call (``H2Call``) and a WebSocket
(``H2WebSocketSession``), take their body events from the connection task
and send through :func:`send_on_stream`, which waits for the client's
flow-control windows.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, Protocol

import trio

from .._errors import ClientDisconnected
from .._events import Body, EndBody, Request
from .._protocol._h2 import CANCEL, StreamGone
from ._waiters import Waiters

if TYPE_CHECKING:
    from ._h2 import H2Connection

logger = logging.getLogger("triasgi.error")


class Stream(Protocol):
    """What the connection keeps of each stream: an app call or a WebSocket."""

    stream_id: int
    request: Request
    inbox: deque[Body | EndBody]
    data_lot: Waiters
    window_lot: Waiters
    cancel_scope: trio.CancelScope
    pending_body: Body | EndBody | None
    body_complete: bool

    @property
    def disconnected(self) -> bool: ...

    def on_reset(self) -> None:
        """The stream was reset, by the client or by us: gone, with its grace."""

    def stream_gone(self) -> bool: ...

    def begin_shutdown(self) -> None: ...


async def send_on_stream(
    conn: H2Connection, stream: Stream, data: bytes, end: bool
) -> bool:
    """Send ``data`` on a stream as the client's windows allow, waiting for them.

    A window that stays shut for the write timeout resets that stream alone.

    Returns:
        Whether it waited (for a write or a window), and so let the other
        tasks run.

    Raises:
        ClientDisconnected: the stream was reset, the client has gone or
            stopped reading.
    """
    protocol = conn.protocol
    view = memoryview(data)
    waited = False
    while True:
        try:
            sent = protocol.send_body(stream.stream_id, view, end)
        except StreamGone:
            stream.stream_gone()
            raise ClientDisconnected("The client has disconnected.") from None
        try:
            if await conn.flush():
                waited = True
        except ClientDisconnected:
            stream.stream_gone()
            raise
        if sent == len(view):
            return waited
        view = view[sent:]
        await _wait_for_window(conn, stream)
        waited = True


async def _wait_for_window(conn: H2Connection, stream: Stream) -> None:
    protocol = conn.protocol
    timeout = conn.write_timeout
    with trio.move_on_after(timeout) as scope:
        while True:
            if stream.disconnected:
                raise ClientDisconnected("The client has disconnected.")
            try:
                if protocol.send_window(stream.stream_id) > 0:
                    return
            except StreamGone:
                stream.stream_gone()
                raise ClientDisconnected("The client has disconnected.") from None
            await stream.window_lot.park()
    if scope.cancelled_caught:
        logger.debug(
            "Resetting an HTTP/2 stream of %s: its window stayed shut for %gs.",
            conn.client,
            timeout,
        )
        protocol.reset(stream.stream_id, CANCEL)
        stream.on_reset()
        try:
            await conn.flush()
        except ClientDisconnected:
            pass
        raise ClientDisconnected("The client stopped reading.")
