"""A frame-exact HTTP/2 client (the h2 library) on any trio stream, for tests."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.settings
import trio


@dataclass
class H2Reply:
    status: int = 0
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[bytes, bytes]] = field(default_factory=list)
    informational: list[tuple[int, list[tuple[bytes, bytes]]]] = field(
        default_factory=list
    )
    ended: bool = False
    reset: int | None = None

    @property
    def header(self) -> dict[bytes, bytes]:
        return dict(self.headers)


class _Connection(h2.connection.H2Connection):
    """h2's client, kept open after a GOAWAY without an error.

    h2 closes its state on any GOAWAY; a client must go on with the streams
    the GOAWAY lets finish (RFC 9113 section 6.8), sending WINDOW_UPDATE for
    them, as curl and browsers do.  Tests also open a stream after it.
    """

    def _receive_goaway_frame(self, frame):
        if frame.error_code:
            return super()._receive_goaway_frame(frame)
        event = h2.events.ConnectionTerminated()
        event.error_code = frame.error_code
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    def ignore_stream_limit(self) -> None:
        """Open streams over the server's SETTINGS_MAX_CONCURRENT_STREAMS."""
        self.remote_settings._settings[
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS
        ] = collections.deque([2**31])


class H2Client:
    """An HTTP/2 client connection: send requests, read what the server says.

    ``events`` keeps every h2 event received, in order, for frame-exact tests.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        settings: dict[int, int] | None = None,
        auto_window: bool = True,
    ) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = _Connection(config)
        if settings:
            self.conn.local_settings = h2.settings.Settings(
                client=True, initial_values=settings
            )
        self.replies: dict[int, H2Reply] = {}
        self.events: list[h2.events.Event] = []
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = False
        self.auto_window = auto_window
        self.remote_settings_seen = False

    async def start(self) -> None:
        self.conn.initiate_connection()
        await self.flush()

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.send_all(data)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    def headers_for(
        self,
        method: str = "GET",
        path: str = "/",
        headers: list[tuple[str, str]] | None = None,
        authority: str = "example.test",
        scheme: str = "http",
    ) -> list[tuple[bytes, bytes]]:
        return [
            (b":method", method.encode()),
            (b":path", path.encode()),
            (b":scheme", scheme.encode()),
            (b":authority", authority.encode()),
            *((k.encode(), v.encode()) for k, v in (headers or [])),
        ]

    async def request(
        self,
        method: str = "GET",
        path: str = "/",
        *,
        headers: list[tuple[str, str]] | None = None,
        body: bytes | None = None,
        end: bool = True,
        stream_id: int | None = None,
    ) -> int:
        """Send a request head (and body); its stream id."""
        sid = (
            stream_id
            if stream_id is not None
            else self.conn.get_next_available_stream_id()
        )
        fields = self.headers_for(method, path, headers)
        self.replies[sid] = H2Reply()
        self.conn.send_headers(sid, fields, end_stream=end and not body)
        if body:
            await self.send_body(sid, body, end=end)
        await self.flush()
        return sid

    async def send_body(self, sid: int, body: bytes, *, end: bool = True) -> None:
        """Send ``body`` in frames, waiting for the server's window as needed."""
        sent = 0
        while sent < len(body):
            window = self.conn.local_flow_control_window(sid)
            if window == 0:
                await self.flush()
                await self.receive()
                continue
            n = min(window, self.conn.max_outbound_frame_size, len(body) - sent)
            self.conn.send_data(
                sid, body[sent : sent + n], end_stream=end and sent + n == len(body)
            )
            sent += n
        await self.flush()

    async def receive(self) -> list[h2.events.Event]:
        """One read: the events it made (empty at EOF)."""
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = True
            return []
        events = self.conn.receive_data(data)
        for event in events:
            self.events.append(event)
            self._note(event)
        await self.flush()
        return events

    def _note(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", None)
        reply = self.replies.get(sid) if sid else None
        if isinstance(event, h2.events.ResponseReceived) and reply is not None:
            headers = list(event.headers)
            reply.status = int(dict(headers)[b":status"])
            reply.headers = [(k, v) for k, v in headers if not k.startswith(b":")]
        elif isinstance(event, h2.events.InformationalResponseReceived) and reply:
            headers = list(event.headers)
            reply.informational.append(
                (
                    int(dict(headers)[b":status"]),
                    [(k, v) for k, v in headers if not k.startswith(b":")],
                )
            )
        elif isinstance(event, h2.events.DataReceived) and reply is not None:
            reply.body += event.data
            if self.auto_window:
                self.conn.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
        elif isinstance(event, h2.events.TrailersReceived) and reply is not None:
            reply.trailers = list(event.headers)
        elif isinstance(event, h2.events.StreamEnded) and reply is not None:
            reply.ended = True
        elif isinstance(event, h2.events.StreamReset) and reply is not None:
            reply.reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.remote_settings_seen = True

    async def response(self, sid: int) -> H2Reply:
        """Read until stream ``sid`` has ended or been reset."""
        reply = self.replies[sid]
        while not (reply.ended or reply.reset is not None):
            if self.closed:
                raise AssertionError(f"the connection closed before stream {sid} ended")
            await self.receive()
        return reply

    async def get(self, path: str = "/", **kwargs: object) -> H2Reply:
        sid = await self.request("GET", path, **kwargs)  # type: ignore[arg-type]
        return await self.response(sid)

    async def round_trip(self) -> None:
        """PING and read until its ACK: what the server wrote before it is here."""
        self._pings = getattr(self, "_pings", 0) + 1
        payload = b"%08d" % self._pings
        self.conn.ping(payload)
        await self.flush()
        while not any(
            isinstance(event, h2.events.PingAckReceived) and event.ping_data == payload
            for event in self.events
        ):
            if self.closed:
                raise AssertionError("the connection closed before the PING ACK")
            await self.receive()

    async def until_closed(self) -> None:
        while not self.closed:
            await self.receive()


class H2Session:
    """``async with H2Session(app, **settings) as client``: a server on memory
    streams (lifespan off unless asked) and one started HTTP/2 client to it."""

    def __init__(self, app, **settings):
        settings.setdefault("lifespan", "off")
        self.app = app
        self.settings = settings

    async def __aenter__(self) -> H2Client:
        from triasgi.testing import open_memory_connection, open_memory_server

        self._server_cm = open_memory_server(self.app, **self.settings)
        self.server = await self._server_cm.__aenter__()
        self._conn_cm = open_memory_connection(self.server)
        stream = await self._conn_cm.__aenter__()
        client = H2Client(stream)
        client.server = self.server
        await client.start()
        return client

    async def __aexit__(self, *exc):
        await self._conn_cm.__aexit__(*exc)
        return await self._server_cm.__aexit__(*exc)
