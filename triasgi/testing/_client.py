"""An httpx client whose connections are in-memory streams into the real server.

The layers, from the test down::

    MemoryClient (an httpx.AsyncClient)
    └── _MemoryTransport: httpx requests <-> httpcore requests
        └── httpcore.AsyncConnectionPool: HTTP/1.1, keep-alive, pooling
            └── _MemoryBackend.connect_tcp(): a trio memory stream pair whose
                server end is served by Server.serve_stream in the client's
                nursery

Nothing touches the network or the real clock, so ``autojump_clock`` makes
the server's timeouts instant, and what the app sees is what the real
connection handler gives it.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, final

import httpcore
import httpx
import trio
import trio.testing

from .._serve._server import Server
from .._types import ASGIApp
from ._server import open_memory_server, open_nursery_unwrapped
from ._wsclient import MemoryWebSocket, open_websocket

# The port of the first in-memory connection as the app sees it in
# scope["client"]; each new connection gets the next one, so a test can tell
# connections apart the way it could with real sockets.
_FIRST_CLIENT_PORT = 50000

_HTTPCORE_TO_HTTPX: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
}


@contextlib.contextmanager
def _as_httpx_errors(request: httpx.Request) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        for core_error, httpx_error in _HTTPCORE_TO_HTTPX.items():
            if isinstance(exc, core_error):
                raise httpx_error(str(exc), request=request) from exc
        raise


@contextlib.contextmanager
def _network_errors(
    error: type[httpcore.NetworkError],
    timeout_error: type[httpcore.TimeoutException],
    timeout: float | None,
) -> Iterator[None]:
    """Turn trio's stream errors and a missed deadline into httpcore's."""
    with trio.move_on_after(timeout if timeout is not None else float("inf")) as scope:
        try:
            yield
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise error("The in-memory connection is closed.") from exc
    if scope.cancelled_caught:
        raise timeout_error(f"Timed out after {timeout:g} seconds.")


@final
class _ServerEnd(trio.abc.HalfCloseableStream):
    """The server's end of an in-memory connection, counting what it sends.

    The count lets the client's end answer httpcore's "is_readable" question
    without reading: an idle pooled connection the server has written to or
    closed (a keep-alive timeout) is not reused, as with a real socket.
    """

    def __init__(self, stream: trio.StapledStream[Any, Any]) -> None:
        self._stream = stream
        self.sent = 0
        self.closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += len(data)
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        self.closed = True
        await self._stream.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        self.closed = True
        await self._stream.aclose()


@final
class _ClientEnd(httpcore.AsyncNetworkStream):
    """The client's end of an in-memory connection, as httpcore wants it."""

    def __init__(
        self,
        stream: trio.StapledStream[Any, Any],
        server_end: _ServerEnd,
        backend: _MemoryBackend,
        client: tuple[str, int],
        sockname: tuple[str, int],
    ) -> None:
        self._stream = stream
        self._server_end = server_end
        self._backend = backend
        self._received = 0
        self._client = client
        self._sockname = sockname

    # The timeout parameters are httpcore's interface.
    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        with _network_errors(httpcore.ReadError, httpcore.ReadTimeout, timeout):
            data = bytes(await self._stream.receive_some(max_bytes))
        self._received += len(data)
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        with _network_errors(httpcore.WriteError, httpcore.WriteTimeout, timeout):
            await self._stream.send_all(buffer)

    async def aclose(self) -> None:
        self._backend.forget(self)
        await trio.aclose_forcefully(self._stream)

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("The in-memory client does not speak TLS.")

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            server = self._server_end
            return server.closed or server.sent > self._received
        if info == "client_addr":
            return self._client
        if info == "server_addr":
            return self._sockname
        return None


@final
class _MemoryBackend(httpcore.AsyncNetworkBackend):
    """Connects by starting ``server.serve_stream`` on a memory stream pair."""

    def __init__(self, server: Server, nursery: trio.Nursery) -> None:
        self.server = server
        self._nursery = nursery
        self._ports = itertools.count(_FIRST_CLIENT_PORT)
        self._open: set[_ClientEnd] = set()

    def next_client_address(self) -> tuple[str, int]:
        return ("127.0.0.1", next(self._ports))

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if self.server.shutting_down:
            await trio.lowlevel.checkpoint()
            raise httpcore.ConnectError("The server is shutting down.")
        client_stream, server_stream = trio.testing.memory_stream_pair()
        server_end = _ServerEnd(server_stream)
        client = self.next_client_address()
        sockname = (host, port)
        self._nursery.start_soon(self.server.serve_stream, server_end, client, sockname)
        end = _ClientEnd(client_stream, server_end, self, client, sockname)
        self._open.add(end)
        await trio.lowlevel.checkpoint()
        return end

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("The in-memory client has no Unix sockets.")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    def forget(self, end: _ClientEnd) -> None:
        self._open.discard(end)

    async def drop_all(self) -> int:
        ends = list(self._open)
        for end in ends:
            await end.aclose()
        return len(ends)


@final
class _ResponseStream(httpx.AsyncByteStream):
    """The response body; an iterator class rather than an async generator,
    so a body left unread adds no generator for trio to warn about."""

    def __init__(self, response: httpcore.Response, request: httpx.Request) -> None:
        self._response = response
        self._request = request
        stream = response.stream
        assert isinstance(stream, AsyncIterable)
        self._chunks = stream.__aiter__()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        with _as_httpx_errors(self._request):
            return await self._chunks.__anext__()

    async def aclose(self) -> None:
        with _as_httpx_errors(self._request):
            await self._response.aclose()


@final
class _MemoryTransport(httpx.AsyncBaseTransport):
    """httpx requests carried by httpcore over in-memory streams.

    HTTP/1.1, or HTTP/2 with prior knowledge (``http2``): every request of
    the client then shares one HTTP/2 connection, as streams.
    """

    def __init__(self, backend: _MemoryBackend, *, http2: bool = False) -> None:
        # No keep-alive expiry of the pool's own: whether an idle connection
        # is still good is for the server's keep-alive timeout to say.
        self._pool = httpcore.AsyncConnectionPool(
            max_connections=100,
            keepalive_expiry=None,
            network_backend=backend,
            http1=not http2,
            http2=http2,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert isinstance(request.stream, httpx.AsyncByteStream)
        core_request = httpcore.Request(
            method=request.method,
            url=httpcore.URL(
                scheme=request.url.raw_scheme,
                host=request.url.raw_host,
                port=request.url.port,
                target=request.url.raw_path,
            ),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _as_httpx_errors(request):
            core_response = await self._pool.handle_async_request(core_request)
        return httpx.Response(
            status_code=core_response.status,
            headers=core_response.headers,
            stream=_ResponseStream(core_response, request),
            extensions=core_response.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class MemoryClient(httpx.AsyncClient):
    """An :class:`httpx.AsyncClient` connected to a server through memory.

    Every connection it opens is a pair of in-memory trio streams whose
    server end is handled by the real triasgi connection handler, so the app
    sees exactly what it would see behind a socket, and the server's
    keep-alive timeout, disconnect grace period and shutdown run on trio's
    clock (``autojump_clock`` makes them instant).  Get one from the
    ``triasgi_client`` fixture or :func:`open_client`.

    Each connection shows the app a client address of its own
    (``127.0.0.1:50000``, ``127.0.0.1:50001``, ...), and ``scope["server"]``
    is the host and port of the request's URL.

    Attributes:
        server: the running :class:`~triasgi.Server`; ``server.state`` is
            the lifespan state.
    """

    def __init__(
        self,
        server: Server,
        nursery: trio.Nursery,
        *,
        base_url: str = "http://testserver",
        http2: bool = False,
        **kwargs: Any,
    ) -> None:
        """Create a client; :func:`open_client` is the usual way to get one.

        Args:
            server: a server started with ``listen=False`` (see
                :func:`open_memory_server`).
            nursery: where the server side of each connection runs; it must
                outlive the client.
            base_url: the URL requests are relative to.
            http2: speak HTTP/2 (prior knowledge) instead of HTTP/1.1.
            **kwargs: further :class:`httpx.AsyncClient` arguments.
        """
        self.server = server
        self._backend = _MemoryBackend(server, nursery)
        super().__init__(
            base_url=base_url,
            transport=_MemoryTransport(self._backend, http2=http2),
            **kwargs,
        )

    async def drop_connections(self) -> int:
        """Close every connection this client holds, without a word, at once.

        A request in flight on one of them fails with :class:`httpx.ReadError`
        in the task that sent it, and the app sees the client disconnect
        (``http.disconnect``, or ``send()`` raising
        :class:`~triasgi.ClientDisconnected`).  Call it from another task
        than the one waiting for the response.

        Returns:
            How many connections were closed.
        """
        return await self._backend.drop_all()

    def open_websocket(
        self,
        path: str,
        *,
        subprotocols: Iterable[str] = (),
        headers: Iterable[tuple[str, str]] = (),
    ) -> AbstractAsyncContextManager[MemoryWebSocket]:
        """Open a WebSocket session with the server on a new in-memory connection.

        Args:
            path: the request target, such as ``/ws?room=1``; it is resolved
                against the client's ``base_url``.
            subprotocols: subprotocols to offer, in order of preference.
            headers: extra request headers.

        Returns:
            An async context manager yielding the open
            :class:`MemoryWebSocket`; leaving it closes the session with code
            1000 if it is still open.

        Raises:
            WebSocketRejected: the app denied the handshake (on entry).
        """
        url = self.base_url.join(path)
        port = url.port or (443 if url.scheme in ("https", "wss") else 80)
        target = url.raw_path.decode("ascii")
        return open_websocket(
            self.server,
            target,
            host=url.host,
            port=port,
            subprotocols=subprotocols,
            headers=headers,
            client=self._backend.next_client_address(),
        )


@asynccontextmanager
async def open_client(
    app: ASGIApp, *, base_url: str = "http://testserver", **settings: Any
) -> AsyncIterator[MemoryClient]:
    """Run ``app`` in memory and yield an httpx client connected to it.

    Lifespan startup has run when the body starts.  On exit the client
    closes its connections, the server shuts down gracefully and lifespan
    shutdown runs.

    Args:
        app: the ASGI application.
        base_url: the URL requests are relative to.
        **settings: :class:`~triasgi.Config` settings, such as
            ``timeout_keep_alive=1``.  ``http2=True`` (a setting too, on by
            default on the server) makes the client speak HTTP/2, so that
            the app's tests run over HTTP/2 streams.

    Yields:
        The client.

    Raises:
        StartupError: lifespan startup failed.
    """
    http2 = settings.get("http2", False) is True
    async with open_memory_server(app, **settings) as server:
        async with open_nursery_unwrapped() as nursery:
            async with MemoryClient(
                server, nursery, base_url=base_url, http2=http2
            ) as client:
                yield client
