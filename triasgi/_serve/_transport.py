"""Reading and writing one connection's stream, with fast paths for a plain socket.

:class:`Transport` is the part of a connection that touches its stream: one
read, one write.  On a plain trio ``SocketStream`` it uses the socket
directly: the stream's layers (a conflict detector, an error-translating
context manager, a cancel scope per write) cost time per call and memory
per idle connection, for nothing here, where one task at a time reads and
one at a time writes.  TLS and in-memory streams take the ordinary path.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable
from math import inf

import trio

from .._errors import ClientDisconnected
from .._types import Address

logger = logging.getLogger("triasgi.error")

READ_SIZE = 64 * 1024
# A plain socket whose last read filled its buffer has more waiting (a large
# body, say): it is read in bigger steps, four reads fewer per MiB each.
LARGE_READ_SIZE = 256 * 1024
# From this many bytes on, the parts of one write go to the kernel as they
# are instead of being joined first.
_VECTORED_WRITE_SIZE = 64 * 1024
# A read that fails like this is the client gone, as EOF is.
READ_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)
#: How long an app's task may run on through sends and receives that need
#: not wait before one of them lets the other tasks run (a schedule point).
#: A send the kernel takes at once, or a receive of body already here, is
#: otherwise a cancellation point only: a schedule point costs a pass of the
#: scheduler, as much as a third of a small request's time on trio.  The
#: turn bounds what one app streaming in a tight loop makes the others wait,
#: and lets the scheduler act on expired deadlines (the disconnect grace
#: period) for an app that does nothing but send.
TURN_SECONDS = 0.001


class Transport:
    """One connection's reads and writes.  Subclasses say what a lost client means.

    Args:
        stream: the connection's stream.
        write_timeout: how long a write may wait for the client to take data.
    """

    __slots__ = ("_drained", "_raw_socket", "client", "stream", "write_timeout")

    def __init__(
        self, stream: trio.abc.Stream, client: Address | None, write_timeout: float
    ) -> None:
        self.stream = stream
        self.client = client
        self.write_timeout = write_timeout
        # The plain socket under a plain trio SocketStream (not TLS, not an
        # in-memory stream), for the fast paths.
        raw = getattr(getattr(stream, "socket", None), "_sock", None)
        self._raw_socket = (
            raw
            if type(stream) is trio.SocketStream and isinstance(raw, socket.socket)
            else None
        )
        # Whether the last read of the plain socket emptied it (_recv_raw);
        # a new connection is taken to have nothing waiting yet.
        self._drained = True

    def client_gone(self) -> None:
        """The client closed or reset the connection, or stopped reading."""
        raise NotImplementedError

    # -- reading -------------------------------------------------------------

    def receive_some(self) -> Callable[[int], Awaitable[bytes | bytearray]]:
        """How this connection reads: the one place that chooses."""
        if self._raw_socket is not None:
            return self._recv_raw
        return self.stream.receive_some

    async def _recv_raw(self, size: int) -> bytes:
        """One read of the plain socket: trio's socket recv, minus one guess.

        trio tries the read before waiting for the socket to be readable.
        After a read that drained the socket (it returned less than asked
        for), that try fails nearly always, at the cost of a system call and
        an exception: so then this waits first.
        """
        raw = self._raw_socket
        assert raw is not None
        if self._drained:
            await trio.lowlevel.wait_readable(raw)
        else:
            size = max(size, LARGE_READ_SIZE)
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                data = raw.recv(size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(raw)
            else:
                self._drained = len(data) < size
                await trio.lowlevel.cancel_shielded_checkpoint()
                return data
        while True:
            try:
                data = raw.recv(size)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(raw)
                continue
            self._drained = len(data) < size
            return data

    async def receive_directly(self) -> bytes:
        """One read of the stream; b"" at EOF or when the read fails."""
        try:
            data = await self.receive_some()(READ_SIZE)
        except READ_ERRORS:
            return b""
        return bytes(data)  # no copy for bytes, which is what a socket gives

    def bytes_waiting(self) -> bool:
        """Whether the socket has unread bytes (or the client's EOF) for us.

        One non-blocking peek, made only when a connection closes for a
        shutdown; a stream without a socket (in memory) says no.
        """
        stream = self.stream
        raw = self._raw_socket
        if raw is None:
            # TLS: the socket under it, with TLS records waiting.
            transport = getattr(stream, "transport_stream", None)
            raw = getattr(getattr(transport, "socket", None), "_sock", None)
            if not isinstance(raw, socket.socket):
                return False
        try:
            raw.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            return False
        except OSError:
            pass  # reading will say what it is
        return True

    # -- writing -------------------------------------------------------------

    async def write(
        self, *parts: bytes, then: Callable[[], None] | None = None
    ) -> bool:
        """Send ``parts`` in order; a client that does not take them in time
        is dropped.  ``then`` is called once the kernel has taken them all.

        Small parts are joined into one buffer; large ones go to the kernel
        as they are (one ``sendmsg``), so a 1 MiB body is not copied to put
        a response head in front of it.

        A cancellation point always, but a schedule point only when the
        write waits for the client to take data: the caller lets the other
        tasks run when its turn is over (``TURN_SECONDS``).  On a stream
        other than a plain socket (TLS, in memory) every write waits.

        Returns:
            Whether the write waited, and so let the other tasks run.
        """
        if len(parts) == 1:
            size = len(parts[0])
        else:
            size = sum(map(len, parts))
            if size < _VECTORED_WRITE_SIZE:
                parts = (b"".join(parts),)
        raw = self._raw_socket
        if raw is not None:
            # The common case: the kernel takes it all at once.  This is
            # what trio's socket send does (a cancellation point, the
            # non-blocking call), without its schedule point (see above),
            # the stream layers and the timeout's cancel scope, which
            # nothing needs when the write did not wait.
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                sent = raw.send(parts[0]) if len(parts) == 1 else raw.sendmsg(parts)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                self.client_gone()
                raise ClientDisconnected("The client has disconnected.") from exc
            if sent == size:
                if then is not None:
                    then()
                return False
        else:
            sent = 0
        # What is left, as views: no copies of large buffers.
        left = views_after(parts, sent)
        timeout = self.write_timeout
        try:
            with trio.move_on_after(timeout) as scope:
                for view in left:
                    await self.stream.send_all(view)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.client_gone()
            raise ClientDisconnected("The client has disconnected.") from exc
        if scope.cancelled_caught:
            # Part of the data may be on the wire: the stream is unusable now.
            logger.debug("Dropping %s: no data taken in %gs.", self.client, timeout)
            self.client_gone()
            raise ClientDisconnected("The client stopped reading.")
        if then is not None:
            then()
        return True

    async def send_file(self, fd: int, count: int) -> None:
        """Send ``count`` bytes of the file ``fd`` from its start.

        On a plain socket the kernel copies them (``os.sendfile``), in as
        many pieces as the socket takes, each wait for it to take more bounded
        by the write timeout, with a schedule point between pieces so that
        one large file does not hold up the other connections.  Other
        streams get the file read in pieces, in a worker thread.

        Raises:
            ClientDisconnected: the client went away or stopped reading.
            OSError: reading the file failed, or it is shorter than ``count``.
        """
        raw = self._raw_socket
        if raw is None:
            offset = 0
            while offset < count:
                size = min(count - offset, LARGE_READ_SIZE)
                data = await trio.to_thread.run_sync(os.pread, fd, size, offset)
                if not data:
                    raise OSError(f"the file ended {count - offset} bytes early")
                await self.write(data)
                offset += len(data)
            await trio.lowlevel.checkpoint()
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        out = raw.fileno()
        offset = 0
        while offset < count:
            try:
                sent = os.sendfile(out, fd, offset, count - offset)
            except BlockingIOError:
                with trio.move_on_after(self.write_timeout) as scope:
                    await trio.lowlevel.wait_writable(raw)
                if scope.cancelled_caught:
                    logger.debug(
                        "Dropping %s: no data taken in %gs.",
                        self.client,
                        self.write_timeout,
                    )
                    self.client_gone()
                    raise ClientDisconnected("The client stopped reading.") from None
                continue
            except (BrokenPipeError, ConnectionResetError) as exc:
                self.client_gone()
                raise ClientDisconnected("The client has disconnected.") from exc
            if not sent:
                raise OSError(f"the file ended {count - offset} bytes early")
            offset += sent
            await trio.lowlevel.cancel_shielded_checkpoint()


def views_after(parts: tuple[bytes, ...], sent: int) -> list[memoryview]:
    """Views of what is left of ``parts`` once ``sent`` bytes have gone."""
    left = []
    for part in parts:
        if sent >= len(part):
            sent -= len(part)
            continue
        left.append(memoryview(part)[sent:])
        sent = 0
    return left


NO_WRITE_TIMEOUT = inf
