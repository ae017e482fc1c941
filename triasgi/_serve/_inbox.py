"""What a connection has read: held until the protocol needs it, then events.

The connection task reads ahead of the protocol (up to a high-water mark
the connection keeps) into the inbox; the protocol is fed only when it needs
bytes for its next event, so what is read ahead is bounded and a request
body is taken from the socket at the pace the app asks for it.  A protocol
that takes the connection over (WebSocket) takes the raw bytes instead.
"""

from __future__ import annotations

import trio

from .._events import NEED_DATA, Event
from .._protocol._h1 import H1Protocol
from .._types import Address
from ._transport import Transport
from ._waiters import Waiters


class Inbox(Transport):
    """A connection's unread bytes, and the protocol events made from them.

    Args:
        stream, client, write_timeout: as for :class:`Transport`.
        protocol: the protocol fed from the inbox.
    """

    __slots__ = (
        "_data_lot",
        "_eof",
        "_eof_fed",
        "_inbox",
        "_reader_done",
        "_reader_lot",
        "protocol",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        client: Address | None,
        write_timeout: float,
        protocol: H1Protocol,
    ) -> None:
        super().__init__(stream, client, write_timeout)
        self.protocol = protocol
        # What has been read and nobody has taken yet.  bytes, not
        # a bytearray: the usual single read is then handed on without a copy.
        self._inbox = b""
        self._eof = False
        self._eof_fed = False
        # The connection task parks in one while the inbox is full; the tasks
        # that take from the inbox park in the other until there is more or EOF.
        self._reader_lot = Waiters()
        self._data_lot = Waiters()
        # Set when the connection task has handed reading over (WebSocket).
        self._reader_done = False

    def _feed(self) -> bool:
        """Move what has been read into the protocol; False if there was nothing."""
        if self._eof_fed:
            self._inbox = b""
            return False
        if self._inbox:
            self.protocol.receive_data(self._inbox)
            self._inbox = b""
            if self._reader_lot.tasks is not None:
                self._reader_lot.unpark_all()
            return True
        if self._eof:
            self._eof_fed = True
            self.protocol.receive_data(b"")
            return True
        return False

    def next_event_nowait(self) -> Event:
        """The next event from what has arrived so far (maybe NEED_DATA)."""
        event = self.protocol.next_event()
        if event is NEED_DATA and self._feed():
            event = self.protocol.next_event()
        return event

    async def next_event(self) -> Event:
        """The next event, waiting for the connection task to read more.

        For the app call's task; the connection task itself uses
        :meth:`read_event`.
        """
        while True:
            event = self.next_event_nowait()
            if event is not NEED_DATA:
                return event
            await self._data_lot.park()

    async def read_event(self) -> Event:
        """The next event, reading the stream: for the connection task."""
        while True:
            event = self.next_event_nowait()
            if event is not NEED_DATA:
                return event
            data = await self.receive_directly()
            if data:
                self._inbox += data
            else:
                self.client_gone()

    async def receive_bytes(self) -> bytes:
        """The next bytes from the client, waiting for some; b"" at EOF.

        For a protocol that takes the connection over from HTTP/1.1
        (WebSocket), whose task reads all the time anyway and so notices a
        disconnect at once.  The connection task hands over: it stops after
        its next read (see ``_serve_websocket``), and from then on this reads
        the stream itself.
        """
        if self._reader_done and not self._inbox and not self._eof:
            data = await self.receive_directly()
            if not data:
                self.client_gone()
            return data
        await trio.lowlevel.checkpoint()
        while not self._inbox and not self._eof:
            await self._data_lot.park()
        data = self._inbox
        self._inbox = b""
        self._reader_lot.unpark_all()
        return data
