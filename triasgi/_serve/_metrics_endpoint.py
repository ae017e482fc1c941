"""The metrics endpoint: ``GET /metrics`` on a listener of its own (``--metrics-bind``).

Plain HTTP/1.1, one request per connection, answered with ``connection:
close``.  The request head is read by the same sans-io protocol as an app's
(``_protocol/_h1.py``, with the default limits), and the answer written by it.
A connection gets :data:`_TIMEOUT` seconds in all.  ``/metrics`` (and ``/``)
answer with the text of :func:`triasgi._metrics.render`; any other path 404,
any other method than GET and HEAD 405.

Resource handling: the listener is bound when the endpoint is made, so that
a bad address stops the server before it starts; :meth:`MetricsEndpoint.run`
runs in the nursery of whoever owns the endpoint (the server, or the
supervisor) until :meth:`MetricsEndpoint.close` or that nursery is cancelled;
:meth:`MetricsEndpoint.close_socket` closes the listener and removes a Unix
socket's file.

Error handling: nothing a scraper does reaches the owner, and an unexpected
error while answering one is logged and ends that connection only.  A failed
accept (out of file descriptors) is retried after a pause.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from .._config import parse_bind
from .._events import NEED_DATA, ProtocolError, Request
from .._metrics import Snapshot, render
from .._protocol._h1 import H1Protocol
from .._protocol._h1parse import H1Limits, parser_factory
from .._types import Address
from ._listeners import listen_on, remove_socket_file, sockname
from ._transport import READ_ERRORS, READ_SIZE

logger = logging.getLogger("triasgi.error")

#: Seconds a scrape's connection may take, from accept to the last byte.
_TIMEOUT = 10.0
_PATHS = (b"/metrics", b"/")
# The request heads of an app's defaults (Config); a scrape's is far smaller.
_LIMITS = H1Limits(max_head=16 * 1024, request_line=8190, fields=100, field_size=8190)
_NEW_PARSER = parser_factory("h11", _LIMITS)


class MetricsEndpoint:
    """The metrics listener, serving what ``source()`` gives at each scrape.

    Args:
        address: the ``metrics_bind`` setting.
        backlog: the listen backlog.
        source: the snapshot to render, taken at each scrape.

    Raises:
        StartupError: the address cannot be listened on.
    """

    def __init__(
        self, address: str, backlog: int, source: Callable[[], Snapshot]
    ) -> None:
        self._listener = listen_on(address, backlog=backlog)
        kind, where, _ = parse_bind(address, default_port=None)
        self._unix_path = str(where) if kind == "unix" else None
        #: The bound address, with the real port when port 0 was asked for.
        self.address: Address = sockname(self._listener.socket)
        self._source = source
        self._scope = trio.CancelScope()

    async def run(self) -> None:
        """Accept scrapes until :meth:`close` (or the owner's cancellation)."""
        logger.info("Serving metrics on %s", describe_metrics_address(self.address))
        with self._scope:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        stream = await self._listener.accept()
                    except OSError as exc:
                        logger.debug("Cannot accept a scrape: %s.", exc)
                        await trio.sleep(0.1)
                        continue
                    nursery.start_soon(self._answer, stream)

    def close(self) -> None:
        """Stop serving: :meth:`run` returns."""
        self._scope.cancel()

    def close_socket(self) -> None:
        """Close the listener, and remove its Unix socket file if it has one."""
        self._listener.socket.close()
        if self._unix_path is not None:
            remove_socket_file(self._unix_path)

    async def _answer(self, stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(_TIMEOUT):
                protocol = H1Protocol(_NEW_PARSER, _LIMITS)
                protocol.closing = True
                event = await _read_head(stream, protocol)
                if type(event) is Request:
                    data = self._response(protocol, event)
                elif type(event) is ProtocolError:
                    data = protocol.error_response(event.status, ())
                else:
                    data = b""  # the client closed
                if data:
                    await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            # Never the owner's problem: the server serves on without metrics.
            logger.exception("Unexpected error answering a scrape; it was closed.")
        finally:
            await trio.aclose_forcefully(stream)

    def _response(self, protocol: H1Protocol, request: Request) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST

        if request.method not in (b"GET", b"HEAD"):
            return protocol.error_response(405, (), [(b"allow", b"GET, HEAD")])
        if request.target.partition(b"?")[0] not in _PATHS:
            return protocol.error_response(404, ())
        body = render(self._source())
        headers = [(b"content-type", CONTENT_TYPE_LATEST.encode())]
        return b"".join(protocol.response_data(200, headers, body, True, ()))


def describe_metrics_address(address: Address) -> str:
    """Where to scrape: ``http://host:port/metrics``, or the Unix socket's path."""
    host, port = address
    if port is None:
        return f"unix socket {host}, path /metrics"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/metrics"


async def _read_head(stream: trio.SocketStream, protocol: H1Protocol) -> object:
    """The protocol's first event: a request head, an error, or the end."""
    while True:
        event = protocol.next_event()
        if event is not NEED_DATA:
            return event
        try:
            data = await stream.receive_some(READ_SIZE)
        except READ_ERRORS:
            data = b""
        protocol.receive_data(data)
