"""serve(): listeners, accept loops, connection nurseries and shutdown."""

from __future__ import annotations

import errno
import logging
import random
import socket
import time
from collections.abc import Callable
from email.utils import formatdate
from math import inf
from typing import Any, final

import trio

from .._asgi._proxy_headers import TrustedProxies
from .._config import Config
from .._errors import StartupError
from .._events import Request
from .._logging import AccessLogFormat
from .._metrics import Metrics, Snapshot
from .._protocol._h1parse import H1Limits, parser_factory
from .._protocol._h2 import H2Limits
from .._protocol._proxy import ProxyProtocolError
from .._types import Address, ASGIApp
from ._asyncio import open_app_loop, wrap_app
from ._connection import HTTP11Connection
from ._edge import read_proxy_preamble
from ._h2 import H2Connection
from ._lifespan import Lifespan, LifespanFailure
from ._listeners import (
    bind,
    describe_address,
    peername,
    remove_socket_file,
    sockname,
    unix_paths,
)
from ._loop_choice import choose_loop
from ._metrics_endpoint import MetricsEndpoint
from ._tls import TLS, TLSSetupError

logger = logging.getLogger("triasgi.error")

# accept() errors that mean "out of resources for now", not "listener broken".
_ACCEPT_BATCH = 63
_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}

#: Seconds the app's tasks get to end once cancelled.  Cancellation reaches
#: a task at its next checkpoint, within milliseconds; one still running
#: after this waits where it cannot reach (a thread, a shielded cancel scope).
CANCEL_GRACE = 1.0
#: The log line for such a task, with CANCEL_GRACE and what it is.
STUCK_MESSAGE = (
    "Still running %g second(s) after being cancelled: %s; the app waits where "
    "cancellation cannot reach it (in a thread, or in a shielded cancel scope)."
)


@final
class Server:
    """A running triasgi server, as handed out by ``nursery.start(serve, ...)``.

    Attributes:
        config: the settings it runs with.
        addresses: the bound addresses, ``(host, port)`` for TCP (with the real
            port when port 0 was asked for) and ``(path, None)`` for a Unix
            socket.
        state: the lifespan state namespace; each request gets a shallow copy.
        metrics: the counts behind ``metrics_bind`` (docs/metrics.md), or
            None.  Each place that counts checks this attribute, and only
            this, so that a server without metrics pays nothing more.
        metrics_address: where the metrics endpoint listens, once running.
    """

    def __init__(
        self,
        app: ASGIApp,
        config: Config | None = None,
        *,
        on_limit_max_requests: Callable[[], None] | None = None,
        first_request_grace: float = 0.0,
        on_stuck: Callable[[str], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """Create a server; ``run()`` starts it.

        Args:
            app: the ASGI app.
            config: the settings.
            on_limit_max_requests: called once, when ``limit_max_requests``
                requests have been admitted; by default the server shuts
                down gracefully.  A worker uses it to ask its supervisor for
                a replacement first.
            first_request_grace: on shutdown, seconds an idle connection
                waits for a request after the listeners have closed; the
                request is served with ``connection: close``.  A worker
                sharing its listening socket with others sets it, so that a
                client that connected just before the shutdown, or whose next
                request is on its way, is served instead of finding its
                connection closed.
            on_stuck: called during a graceful shutdown when a task of the
                app did not end within :data:`CANCEL_GRACE` seconds of its
                cancellation, with what it is (for the log), after lifespan
                shutdown has run.  Such a task would keep ``run()`` from ever
                returning: the CLI's processes exit from here.  Without it,
                ``run()`` waits for the task.
            metrics: the counts to keep, for someone else to serve: a
                worker's, which its supervisor sums (the worker has no
                ``metrics_bind``).  By default a server with ``metrics_bind``
                keeps its own.
        """
        self.config = config if config is not None else Config()
        #: The loop the app runs on, and why (``--loop``).
        self.loop_choice = choose_loop(app, self.config.loop)
        self.app = wrap_app(app, self.loop_choice)
        self.addresses: list[Address] = []
        self.state: dict[str, Any] = {}
        self.access_log = self.config.access_log
        self.metrics = metrics
        if metrics is None and self.config.metrics_bind is not None:
            self.metrics = Metrics()
        self.metrics_address: Address | None = None
        self._shutdown_requested = trio.Event()
        self._connections: set[HTTP11Connection | H2Connection] = set()
        self._closed_lot = trio.lowlevel.ParkingLot()
        self._in_flight = 0
        self._limit = self.config.limit_concurrency
        self._served = 0
        self._max_requests = _max_requests(self.config)
        self._on_max_requests = on_limit_max_requests or self._max_requests_reached
        self._first_request_grace = first_request_grace
        #: On a graceful shutdown, when idle connections stop waiting for a
        #: request (``first_request_grace`` after it began); inf before.
        self.close_idle_at = inf
        self._on_stuck = on_stuck
        self._connections_closing = False
        self._static_headers = self._make_static_headers()
        self._static_lines = [
            (name, b"%s: %s\r\n" % (name, value))
            for name, value in self._static_headers
        ]
        # The defaults with the current date, as pairs and as header lines;
        # remade once a second.
        self._default_pairs = self._static_headers
        self._default_lines = self._static_lines
        # The second whose date the defaults hold; without a date header, a
        # second that never ends.
        self._defaults_second = -1.0
        self._defaults_until = 0.0 if self.config.date_header else inf
        config = self.config
        self.h1_limits = H1Limits(
            max_head=config.h11_max_incomplete_event_size,
            request_line=config.limit_request_line,
            fields=config.limit_request_fields,
            field_size=config.limit_request_field_size,
        )
        self.new_parser = parser_factory(config.http, self.h1_limits)
        self.h2_limits = H2Limits(
            max_concurrent_streams=config.h2_max_concurrent_streams,
            max_header_list_size=config.h11_max_incomplete_event_size,
            enable_connect_protocol=True,
            fields=config.limit_request_fields,
            field_size=config.limit_request_field_size,
            target=config.limit_request_line,
        )
        self._edge_init()

    def _edge_init(self) -> None:
        config = self.config
        self.trusted_proxies = (
            TrustedProxies.parse(config.forwarded_allow_ips)
            if config.proxy_headers
            else None
        )
        self.access_format = AccessLogFormat(config.access_log_format)
        self._tls: TLS | None = None
        self._open_sockets = 0
        self._socket_closed_lot = trio.lowlevel.ParkingLot()
        # Connections still in their PROXY preamble or TLS handshake.
        self._opening: set[trio.CancelScope] = set()

    # -- public --------------------------------------------------------------

    def shutdown(self) -> None:
        """Begin a graceful shutdown.

        The server stops accepting at once, closes idle keep-alive
        connections, lets in-flight requests finish within
        ``timeout_graceful_shutdown`` seconds, cancels what is left, runs
        lifespan shutdown, and then ``serve()`` returns.  Calling it again
        does nothing.
        """
        self._shutdown_requested.set()

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`shutdown` has been called."""
        return self._shutdown_requested.is_set()

    def busy(self) -> str:
        """What keeps the server from stopping, in words for the log.

        The open connections and the request or WebSocket each serves; with
        none left, the app's lifespan task.
        """
        if not self._connections:
            return "the app's lifespan task"
        parts = [_describe_connection(conn) for conn in self._connections]
        shown = "; ".join(sorted(parts)[:5])
        if len(parts) > 5:
            shown += f"; and {len(parts) - 5} more"
        return f"{len(parts)} connection(s) ({shown})"

    @property
    def url(self) -> str:
        """``http://host:port`` (or ``https``) of the first TCP address."""
        for address in self.addresses:
            if address[1] is not None:
                return describe_address(address, self.config)
        raise LookupError("The server has no TCP address.")

    async def serve_stream(
        self,
        stream: trio.abc.Stream,
        client: Address | None = None,
        sockname: Address | None = None,
    ) -> None:
        """Serve HTTP on one already-connected stream until it closes.

        This is what each accepted socket runs; the test helpers call it with
        in-memory streams.  It never raises for a client's misbehaviour.
        With ``proxy_protocol`` it first reads the PROXY preamble, and with
        TLS configured it does the handshake.
        """
        await self._serve(stream, client, sockname, False)

    async def _serve(
        self,
        stream: trio.abc.Stream,
        client: Address | None,
        sockname: Address | None,
        accepted: bool,
    ) -> None:
        """:meth:`serve_stream`; ``accepted`` counts the stream as an open socket.

        Accepted sockets start here directly rather than through
        serve_stream: one coroutine frame less for each idle connection.
        """
        if accepted and self.metrics is not None:
            self.metrics.connection_opened()
        try:
            edge = await self._open_edge(stream, client, sockname)
            if edge is None:
                return
            stream, client, sockname, tls = edge
            scheme = "https" if tls is not None else "http"
            conn: HTTP11Connection | H2Connection
            if (
                isinstance(stream, trio.SSLStream)
                and stream.selected_alpn_protocol() == "h2"
            ):
                conn = H2Connection(self, stream, client, sockname, scheme, tls=tls)
            else:
                conn = HTTP11Connection(self, stream, client, sockname, scheme, tls=tls)
            while True:
                self._connections.add(conn)
                if self._connections_closing:
                    conn.begin_shutdown()
                grace_ran_out = False
                try:
                    grace_ran_out = await conn.run()
                except Exception:
                    logger.exception("Unexpected error in a connection; it was closed.")
                finally:
                    self._connections.discard(conn)
                    self._closed_lot.unpark_all()
                if self.metrics is not None:
                    bytes_in = conn.protocol.take_request_body_bytes()
                    self.metrics.connection_closed(
                        bytes_in, grace_cancelled=grace_ran_out
                    )
                if type(conn) is not HTTP11Connection or conn.h2_preface is None:
                    break
                # The connection opened with the HTTP/2 preface.
                conn = H2Connection(
                    self, stream, client, sockname, scheme, received=conn.h2_preface
                )
        finally:
            if accepted:
                self._open_sockets -= 1
                self._socket_closed_lot.unpark_all()

    async def _open_edge(
        self, stream: trio.abc.Stream, client: Address | None, sockname: Address | None
    ) -> tuple[trio.abc.Stream, Address | None, Address | None, Any] | None:
        """PROXY preamble and TLS handshake; None when the connection is over.

        A shutdown cancels this once ``close_idle_at`` has come: no request
        has started yet.
        """
        if not self.config.proxy_protocol and self._tls is None:
            return stream, client, sockname, None
        with trio.CancelScope() as scope:
            self._opening.add(scope)
            if self._connections_closing:
                scope.deadline = self.close_idle_at
            try:
                return await self._handshakes(stream, client, sockname)
            finally:
                self._opening.discard(scope)
        await trio.aclose_forcefully(stream)
        return None

    async def _handshakes(
        self, stream: trio.abc.Stream, client: Address | None, sockname: Address | None
    ) -> tuple[trio.abc.Stream, Address | None, Address | None, Any] | None:
        if self.config.proxy_protocol:
            preamble = None
            with trio.move_on_after(self.config.timeout_request_header):
                try:
                    preamble, stream = await read_proxy_preamble(stream)
                except ProxyProtocolError as exc:
                    logger.debug("Closing a connection from %s: %s.", client, exc)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass
            if preamble is None:
                await trio.aclose_forcefully(stream)
                return None
            client = preamble.client or client
            sockname = preamble.server or sockname
        tls = None
        if self._tls is not None:
            tls_stream = await self._tls.handshake(stream)
            if tls_stream is None:
                return None
            stream = tls_stream
            tls = self._tls.extension(tls_stream)
        return stream, client, sockname, tls

    def metrics_snapshot(self) -> Snapshot:
        """The counts of :attr:`metrics`, with the gauges the server keeps."""
        assert self.metrics is not None
        return self.metrics.snapshot(
            requests_in_flight=self._in_flight, connections_open=self._open_sockets
        )

    # -- used by connections -------------------------------------------------

    def admit_request(self) -> bool:
        """Count a request in; False when ``limit_concurrency`` is reached."""
        if self._limit is not None and self._in_flight >= self._limit:
            return False
        self._in_flight += 1
        self._served += 1
        if self._served == self._max_requests:
            self._on_max_requests()
        return True

    def release_request(self) -> None:
        self._in_flight -= 1

    def _max_requests_reached(self) -> None:
        logger.info(
            "Served %d requests (limit_max_requests): shutting down gracefully.",
            self._served,
        )
        self.shutdown()

    def response_headers(
        self, headers: list[tuple[bytes, bytes]]
    ) -> list[tuple[bytes, bytes]]:
        """The app's headers plus the server's defaults the app did not set."""
        self._refresh_defaults()
        defaults = self._default_pairs
        if not defaults:
            return headers
        if headers:
            present = {name.lower() for name, _ in headers}
            defaults = [pair for pair in defaults if pair[0] not in present]
        return [*headers, *defaults]

    def default_header_pairs(self) -> list[tuple[bytes, bytes]]:
        """The server's default headers, ``(name, value)``, the date current."""
        self._refresh_defaults()
        return self._default_pairs

    def default_header_lines(self) -> list[tuple[bytes, bytes]]:
        """The server's default headers for ResponseWriter.head: ``(name, line)``.

        Serialized once (the date once a second), since they are the same
        for every response.
        """
        # _refresh_defaults' test, inline: this runs for every response.
        if not self._defaults_second <= time.time() < self._defaults_until:
            self._refresh_defaults()
        return self._default_lines

    def _refresh_defaults(self) -> None:
        """Put the current date in the default headers, once a second."""
        now = time.time()
        if not self._defaults_second <= now < self._defaults_until:
            second = int(now)
            self._defaults_second = second
            self._defaults_until = second + 1
            date = formatdate(second, usegmt=True).encode()
            self._default_pairs = [(b"date", date), *self._static_headers]
            self._default_lines = [
                (b"date", b"date: %s\r\n" % date),
                *self._static_lines,
            ]

    def _make_static_headers(self) -> list[tuple[bytes, bytes]]:
        headers = []
        if self.config.server_header:
            headers.append((b"server", b"triasgi"))
        headers.extend(self.config.default_headers)
        return headers

    # -- running -------------------------------------------------------------

    async def run(
        self,
        *,
        listen: bool = True,
        task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind, start up, serve until shutdown; see :func:`serve`.

        Args:
            listen: with False, bind nothing: lifespan and shutdown run as
                usual and connections come only through :meth:`serve_stream`
                (the in-memory test helpers use this).
        """
        if self.config.ssl_certfile is not None:
            try:
                self._tls = TLS(self.config)
            except TLSSetupError as exc:
                raise StartupError(str(exc)) from None
        listeners = bind(self.config) if listen else []
        failure: LifespanFailure | None = None
        endpoint: MetricsEndpoint | None = None
        try:
            self.addresses = [sockname(ln.socket) for ln in listeners]
            if listen and self.config.metrics_bind is not None:
                endpoint = MetricsEndpoint(
                    self.config.metrics_bind,
                    self.config.backlog,
                    self.metrics_snapshot,
                )
                self.metrics_address = endpoint.address
            lifespan = Lifespan(
                self.app,
                self.config.lifespan,
                self.state,
                startup_timeout=self.config.timeout_lifespan_startup,
                shutdown_timeout=self.config.timeout_lifespan_shutdown,
            )
            async with open_app_loop(self.app), trio.open_nursery() as root:
                if endpoint is not None:
                    root.start_soon(endpoint.run)
                try:
                    await lifespan.startup(root)
                except LifespanFailure as exc:
                    failure = exc
                    root.cancel_scope.cancel()
                else:
                    await self._serve_connections(listeners, task_status, lifespan)
                    await lifespan.shutdown()
                    await self._lifespan_ended(lifespan)
                    if endpoint is not None:
                        endpoint.close()
        finally:
            for listener in listeners:
                listener.socket.close()
            if endpoint is not None:
                endpoint.close_socket()
            if listen:
                for path in unix_paths(self.config):
                    remove_socket_file(path)
        if failure is not None:
            raise StartupError(str(failure))

    async def _lifespan_ended(self, lifespan: Lifespan) -> None:
        """After lifespan shutdown: the lifespan task ends, or is reported stuck."""
        if self._on_stuck is None:
            await trio.lowlevel.checkpoint()
            return
        with trio.move_on_after(CANCEL_GRACE):
            await lifespan.ended()
        if not lifespan.has_ended:
            what = "the app's lifespan task"
            logger.error(STUCK_MESSAGE, CANCEL_GRACE, what)
            self._on_stuck(what)

    async def _serve_connections(
        self,
        listeners: list[trio.SocketListener],
        task_status: trio.TaskStatus[Server],
        lifespan: Lifespan,
    ) -> None:
        async with trio.open_nursery() as connections:
            accept_scopes = [trio.CancelScope() for _ in listeners]
            for listener, scope in zip(listeners, accept_scopes, strict=True):
                connections.start_soon(self._accept_loop, listener, scope, connections)
            # Beside the "Listening on" lines; an error before this point is
            # the only line.
            logger.info(self.loop_choice.startup_line())
            task_status.started(self)
            await self._shutdown_requested.wait()
            for scope in accept_scopes:
                scope.cancel()
            for listener in listeners:
                listener.socket.close()
            # From now on every response says connection: close, and an idle
            # connection serves the request that reaches it within the grace
            # (HTTP11Connection.begin_shutdown).
            self.close_idle_at = trio.current_time() + self._first_request_grace
            self._connections_closing = True
            for conn in list(self._connections):
                conn.begin_shutdown()
            for opening in self._opening:
                # A PROXY preamble or TLS handshake under way gets the grace
                # too, and no more: no request has started on these yet.
                opening.deadline = self.close_idle_at
            if self._in_flight:
                logger.info(
                    "Waiting up to %g seconds for %d in-flight request(s).",
                    self.config.timeout_graceful_shutdown,
                    self._in_flight,
                )
            with trio.move_on_after(self.config.timeout_graceful_shutdown):
                await self._connections_closed()
            if self._connections:
                logger.warning(
                    "Cancelling %d connection(s) still busy after the %g second "
                    "graceful shutdown timeout.",
                    len(self._connections),
                    self.config.timeout_graceful_shutdown,
                )
                for conn in list(self._connections):
                    conn.cancel()
                if self._on_stuck is not None:
                    with trio.move_on_after(CANCEL_GRACE):
                        await self._connections_closed()
                    if self._connections:
                        what = self.busy()
                        logger.error(STUCK_MESSAGE, CANCEL_GRACE, what)
                        # The app's own cleanup still runs; then the process
                        # leaves the stuck task behind.
                        await lifespan.shutdown()
                        self._on_stuck(what)
        # Connections served from other nurseries (serve_stream) count too.
        await self._connections_closed()

    async def _connections_closed(self) -> None:
        while self._connections:
            await self._closed_lot.park()

    async def _accept_loop(
        self,
        listener: trio.SocketListener,
        scope: trio.CancelScope,
        nursery: trio.Nursery,
    ) -> None:
        listener_name = sockname(listener.socket)
        # The plain socket under trio's, for non-blocking accepts in a batch.
        raw = getattr(listener.socket, "_sock", None)
        if not isinstance(raw, socket.socket):
            raw = None
        warned_at = -float("inf")
        limit = self.config.limit_max_connections
        with scope:
            while True:
                if limit is not None and self._open_sockets >= limit:
                    now = trio.current_time()
                    if now - warned_at > 10:
                        warned_at = now
                        logger.warning(
                            "%d connections open (limit_max_connections): not "
                            "accepting more until some close.",
                            self._open_sockets,
                        )
                    while self._open_sockets >= limit:
                        await self._socket_closed_lot.park()
                try:
                    stream = await listener.accept()
                except OSError as exc:
                    if exc.errno not in _CAPACITY_ERRNOS:
                        raise
                    now = trio.current_time()
                    if now - warned_at > 10:
                        warned_at = now
                        logger.error(
                            "Cannot accept connections: %s; retrying.", exc.strerror
                        )
                    await trio.sleep(0.1)
                    continue
                self._open_sockets += 1
                nursery.start_soon(
                    self._serve, stream, peername(stream.socket), listener_name, True
                )
                self._accept_waiting(raw, nursery, listener_name, limit)

    def _accept_waiting(
        self,
        raw: socket.socket | None,
        nursery: trio.Nursery,
        listener_name: Address,
        limit: int | None,
    ) -> None:
        """Take connections already waiting, without a pass of the scheduler each.

        One ``accept()`` per pass is slow when many connections keep the
        scheduler busy: clients that connect together (a load balancer's
        pool) would wait in the backlog for their first request.
        """
        if raw is None:
            return
        for _ in range(_ACCEPT_BATCH):
            if limit is not None and self._open_sockets >= limit:
                return
            try:
                conn, _ = raw.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _CAPACITY_ERRNOS:
                    return  # the accept loop reports it on its next call
                raise
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(conn))
            self._open_sockets += 1
            nursery.start_soon(
                self._serve, stream, peername(stream.socket), listener_name, True
            )


def _describe_connection(conn: HTTP11Connection | H2Connection) -> str:
    """What one connection serves, for the log: ``GET /x from 10.0.0.1:5000``."""
    # The server's view into the connection's own fields, for the log only.
    if type(conn) is H2Connection:
        what = conn.describe()
    else:
        assert type(conn) is HTTP11Connection
        if conn._websocket is not None:
            request: Request | None = conn._websocket._request
            kind = "WebSocket "
        else:
            request = conn._cycle.request if conn._cycle is not None else None
            kind = ""
        if request is None:
            what = "idle"
        else:
            method = request.method.decode("ascii", "replace")
            target = request.target.decode("ascii", "replace")[:100]
            what = f"{kind}{method} {target}"
    client = conn.client
    if client is not None:
        host, port = client
        what += f" from {host}:{port}" if port is not None else f" from {host}"
    return what


async def serve(
    app: ASGIApp,
    config: Config | None = None,
    *,
    task_status: trio.TaskStatus[Server] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` until shut down.

    Binds the listeners of ``config``, runs lifespan startup, then reports
    ``task_status.started(server)`` with a :class:`Server` whose ``addresses``
    are the real bound addresses, and serves.  ``server.shutdown()`` starts a
    graceful shutdown; cancelling the scope around ``serve()`` stops it at
    once.  When it returns, none of its tasks or sockets is left.

    Example::

        async with trio.open_nursery() as nursery:
            server = await nursery.start(triasgi.serve, app, Config(port=0))
            print(server.addresses)

    Raises:
        StartupError: a listener could not be bound or lifespan startup failed.
    """
    await Server(app, config).run(task_status=task_status)


def _max_requests(config: Config) -> int | None:
    """The request count after which to leave, jitter included, or None."""
    if config.limit_max_requests is None:
        return None
    return config.limit_max_requests + random.randint(
        0, config.limit_max_requests_jitter
    )
