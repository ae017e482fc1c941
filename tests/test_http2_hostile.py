"""HTTP/2 clients that break the rules or flood: the right error, bounded work.

Each test sends what a hostile or broken client sends, frame by frame, checks
the GOAWAY or RST_STREAM code RFC 9113 (or the flood defence) calls for, and
then checks that another connection to the same server is still served.
"""

from __future__ import annotations

import contextlib

import h2.errors
import h2.events
import h2.exceptions
import hpack
import pytest
import trio
from h2client import H2Client, H2Reply
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from triasgi.testing import open_memory_connection, open_memory_server

ErrorCodes = h2.errors.ErrorCodes
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Counter:
    def __init__(self) -> None:
        self.calls = 0
        self.running = 0
        self.most_running = 0

    async def __call__(self, scope, receive, send):
        self.calls += 1
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"ok"})
        finally:
            self.running -= 1


def request_block(encoder: hpack.Encoder, path: str = "/", extra=()) -> bytes:
    return encoder.encode(
        [
            (b":method", b"GET"),
            (b":path", path.encode()),
            (b":scheme", b"http"),
            (b":authority", b"example.test"),
            *extra,
        ]
    )


def headers_frame(stream_id: int, block: bytes, *, end_headers=True, end_stream=True):
    frame = HeadersFrame(stream_id)
    frame.data = block
    if end_headers:
        frame.flags.add("END_HEADERS")
    if end_stream:
        frame.flags.add("END_STREAM")
    return frame.serialize()


async def read_goaway(stream: trio.abc.Stream) -> int | None:
    """Read frames until the server's GOAWAY (its error code) or the end."""
    buffer = b""
    with trio.fail_after(30):
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            buffer += data
            while len(buffer) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
                if len(buffer) < 9 + length:
                    break
                frame.parse_body(memoryview(buffer[9 : 9 + length]))
                buffer = buffer[9 + length :]
                if isinstance(frame, GoAwayFrame):
                    return frame.error_code


async def still_serves(server) -> None:
    async with open_memory_connection(server) as stream:
        client = H2Client(stream)
        await client.start()
        reply = await client.get("/")
        assert reply.status == 200
        assert reply.body == b"ok"


async def flood(app, frames: bytes, **settings) -> int | None:
    settings.setdefault("lifespan", "off")
    async with open_memory_server(app, **settings) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(PREFACE + SettingsFrame(0).serialize() + frames)
            code = await read_goaway(stream)
        await still_serves(server)
    return code


async def test_rapid_reset_is_stopped_and_bounded():
    app = Counter()
    encoder = hpack.Encoder()
    frames = b""
    for i in range(5000):
        sid = 2 * i + 1
        frames += headers_frame(sid, request_block(encoder))
        frame = RstStreamFrame(sid)
        frame.error_code = ErrorCodes.CANCEL
        frames += frame.serialize()
    code = await flood(app, frames)
    assert code == ErrorCodes.ENHANCE_YOUR_CALM
    # Far fewer app calls than streams opened, and never more at once than
    # the stream limit.
    assert app.calls < 1000
    assert app.most_running <= 100


async def test_ping_flood_is_stopped():
    frames = b"".join(PingFrame(0, b"12345678").serialize() for _ in range(20000))
    assert await flood(Counter(), frames) == ErrorCodes.ENHANCE_YOUR_CALM


async def test_settings_flood_is_stopped():
    frames = b"".join(SettingsFrame(0).serialize() for _ in range(20000))
    assert await flood(Counter(), frames) == ErrorCodes.ENHANCE_YOUR_CALM


async def test_window_update_flood_is_stopped():
    frames = b""
    for _ in range(20000):
        frame = WindowUpdateFrame(0)
        frame.window_increment = 1
        frames += frame.serialize()
    assert await flood(Counter(), frames) == ErrorCodes.ENHANCE_YOUR_CALM


async def test_window_update_for_every_data_frame_is_no_flood(autojump_clock):
    """A client that credits each DATA frame it gets, on the stream and on the
    connection (as browsers do), downloads a large body to its end."""
    size = 16 * 1024 * 1024  # 1024 DATA frames, 2048 WINDOW_UPDATEs

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"d" * size})

    async with open_memory_server(app, lifespan="off") as server:
        async with open_memory_connection(server) as stream:
            client = H2Client(stream, auto_window=False)
            await client.start()
            sid = client.conn.get_next_available_stream_id()
            client.conn.send_headers(sid, client.headers_for("GET", "/"), True)
            await client.flush()
            received = 0
            ended = False
            while not (ended or client.closed):
                for event in await client.receive():
                    if isinstance(event, h2.events.DataReceived):
                        received += len(event.data)
                        length = event.flow_controlled_length
                        client.conn.increment_flow_control_window(length)
                        # Not after the stream's last frame (maybe in this read).
                        with contextlib.suppress(h2.exceptions.StreamClosedError):
                            client.conn.increment_flow_control_window(length, sid)
                    ended = ended or isinstance(event, h2.events.StreamEnded)
                await client.flush()
            assert client.goaway is None
            assert ended
            assert received == size


async def test_empty_data_flood_is_stopped():
    encoder = hpack.Encoder()
    frames = headers_frame(1, request_block(encoder), end_stream=False)
    frames += b"".join(DataFrame(1, b"").serialize() for _ in range(20000))
    assert await flood(Counter(), frames) == ErrorCodes.ENHANCE_YOUR_CALM


async def test_continuation_flood_is_stopped():
    encoder = hpack.Encoder()
    frames = headers_frame(1, request_block(encoder), end_headers=False)
    frames += b"".join(ContinuationFrame(1, b"").serialize() for _ in range(10000))
    assert await flood(Counter(), frames) == ErrorCodes.PROTOCOL_ERROR


async def test_hpack_bomb_is_refused():
    encoder = hpack.Encoder()
    # One large header indexed once, then referenced many times: a small
    # block that decodes to megabytes.
    first = request_block(encoder, extra=[(b"x-big", b"a" * 4000)])
    frames = headers_frame(1, first)
    bomb = request_block(encoder, extra=[(b"x-big", b"a" * 4000)] * 2000)
    frames += headers_frame(3, bomb)
    assert await flood(Counter(), frames) == ErrorCodes.ENHANCE_YOUR_CALM


async def test_even_stream_id_is_a_connection_error():
    encoder = hpack.Encoder()
    app = Counter()
    assert await flood(app, headers_frame(2, request_block(encoder))) == (
        ErrorCodes.PROTOCOL_ERROR
    )
    assert app.calls == 1  # only still_serves's request


GET = [(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http")]
AUTHORITY = [(b":authority", b"example.test")]


@pytest.mark.parametrize(
    ("name", "fields"),
    [
        ("unknown pseudo-header", [*GET, *AUTHORITY, (b":bogus", b"1")]),
        ("response pseudo-header", [*GET, *AUTHORITY, (b":status", b"200")]),
        ("repeated pseudo-header", [*GET, (b":path", b"/x"), *AUTHORITY]),
        ("pseudo-header after a field", [*GET, (b"x-a", b"1"), *AUTHORITY]),
        ("no :method", [*GET[1:], *AUTHORITY]),
        ("no :scheme", [*GET[:2], *AUTHORITY]),
        ("empty :path", [GET[0], (b":path", b""), GET[2], *AUTHORITY]),
        ("connection", [*GET, *AUTHORITY, (b"connection", b"keep-alive")]),
        ("keep-alive", [*GET, *AUTHORITY, (b"keep-alive", b"5")]),
        ("transfer-encoding", [*GET, *AUTHORITY, (b"transfer-encoding", b"chunked")]),
        ("upgrade", [*GET, *AUTHORITY, (b"upgrade", b"websocket")]),
        ("te other than trailers", [*GET, *AUTHORITY, (b"te", b"gzip")]),
        ("upper-case name", [*GET, *AUTHORITY, (b"X-Upper", b"1")]),
        ("colon inside a name", [*GET, *AUTHORITY, (b"x:y", b"1")]),
        ("space in a name", [*GET, *AUTHORITY, (b"x y", b"1")]),
        ("empty name", [*GET, *AUTHORITY, (b"", b"1")]),
        ("NUL in a value", [*GET, *AUTHORITY, (b"x-a", b"a\x00b")]),
        ("LF in a value", [*GET, *AUTHORITY, (b"x-a", b"a\nb")]),
        ("space around a value", [*GET, *AUTHORITY, (b"x-a", b" a")]),
        ("CR in :path", [GET[0], (b":path", b"/a\rb"), GET[2], *AUTHORITY]),
        ("no :authority or host", GET),
        ("two hosts", [*GET, (b"host", b"a.test"), (b"host", b"b.test")]),
        ("host not :authority", [*GET, *AUTHORITY, (b"host", b"other.test")]),
        (":protocol without CONNECT", [*GET, *AUTHORITY, (b":protocol", b"ws")]),
        (
            "CONNECT with :path",
            [(b":method", b"CONNECT"), (b":path", b"/"), *AUTHORITY],
        ),
    ],
)
async def test_malformed_request_is_a_stream_error(name, fields):
    # RFC 9113 section 8.1.1: RST_STREAM PROTOCOL_ERROR on that stream; the
    # connection, and the streams on it, go on.
    app = Counter()
    async with open_memory_server(app, lifespan="off") as server:
        async with open_memory_connection(server) as stream:
            client = H2Client(stream)
            client.conn.config.validate_outbound_headers = False
            client.conn.config.normalize_outbound_headers = False
            await client.start()
            client.replies[1] = H2Reply()
            client.conn.send_headers(1, fields, end_stream=True)
            await client.flush()
            reply = await client.response(1)
            assert reply.reset == ErrorCodes.PROTOCOL_ERROR, name
            assert reply.status == 0
            again = await client.get("/")
            assert (again.status, again.body) == (200, b"ok")
            assert client.goaway is None
    assert app.calls == 1  # only the good request


async def test_a_flood_of_malformed_requests_is_stopped():
    encoder = hpack.Encoder()
    bad = request_block(encoder, extra=[(b"connection", b"close")])
    frames = b"".join(headers_frame(2 * i + 1, bad) for i in range(300))
    app = Counter()
    assert await flood(app, frames) == ErrorCodes.ENHANCE_YOUR_CALM
    assert app.calls == 1  # only still_serves's request


@pytest.mark.parametrize(
    "trailer",
    [(b":path", b"/late"), (b"connection", b"close"), (b"X-Upper", b"1")],
)
async def test_malformed_request_trailers_end_the_connection(trailer):
    encoder = hpack.Encoder()
    frames = headers_frame(1, request_block(encoder, "/hold"), end_stream=False)
    frames += DataFrame(1, b"body").serialize()
    frames += headers_frame(1, encoder.encode([trailer]))
    app = Counter()
    assert await flood(app, frames) == ErrorCodes.PROTOCOL_ERROR
    assert app.calls == 2  # the request, and still_serves's


async def test_data_beyond_the_window_is_a_flow_control_error():
    encoder = hpack.Encoder()
    frames = headers_frame(1, request_block(encoder, "/hold"), end_stream=False)
    frames += b"".join(DataFrame(1, b"x" * 16384).serialize() for _ in range(5))
    counter = Counter()

    async def app(scope, receive, send):
        if scope["path"] == "/hold":
            await trio.sleep_forever()  # reads no body: nothing is credited
        await counter(scope, receive, send)

    code = await flood(app, frames, disconnect_grace_period=0)
    assert code == ErrorCodes.FLOW_CONTROL_ERROR


async def test_data_on_stream_zero_is_a_protocol_error():
    # A DATA frame (type 0) of 10 bytes on stream 0.
    frame = b"\x00\x00\x0a\x00\x00\x00\x00\x00\x00" + b"x" * 10
    assert await flood(Counter(), frame) == ErrorCodes.PROTOCOL_ERROR


async def test_goaway_after_the_graceful_one_never_names_a_later_stream(autojump_clock):
    """A flood after a shutdown's GOAWAY ends the connection with a GOAWAY
    whose last stream id is not above the first's (RFC 9113 section 6.8),
    though the client opened (refused) streams after it."""
    release = trio.Event()

    async def app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    async with open_memory_server(app, lifespan="off") as server:
        async with open_memory_connection(server) as stream:
            client = H2Client(stream)
            await client.start()
            first = await client.request("GET", "/")
            await trio.sleep(0.1)
            server.shutdown()
            while client.goaway is None:
                await client.receive()
            assert client.goaway.last_stream_id == first
            late = await client.request("GET", "/late")
            assert (await client.response(late)).reset == ErrorCodes.REFUSED_STREAM
            flood = b"".join(PingFrame(0, b"12345678").serialize() for _ in range(5000))
            await client.send_raw(flood)
            goaways = []
            while not client.closed:
                for event in await client.receive():
                    if isinstance(event, h2.events.ConnectionTerminated):
                        goaways.append(event)
            release.set()
        assert goaways[-1].error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert goaways[-1].last_stream_id == first


async def test_a_data_flood_on_a_stream_reset_as_malformed_is_stopped():
    # The malformed head is now a stream error (RST_STREAM PROTOCOL_ERROR),
    # not a connection error: the client may go on sending on that stream,
    # and h2 answers each DATA frame on it with a RST_STREAM of its own.
    encoder = hpack.Encoder()
    bad = request_block(encoder, extra=[(b"connection", b"close")])
    frames = headers_frame(1, bad, end_stream=False)
    frames += b"".join(DataFrame(1, b"").serialize() for _ in range(20000))
    code = await flood(Counter(), frames, timeout_keep_alive=1)
    # Stopped: the connection ends with an error (ENHANCE_YOUR_CALM, say),
    # not with the keep-alive timeout's NO_ERROR after 20000 RST_STREAMs.
    assert code not in (None, ErrorCodes.NO_ERROR)


async def test_the_goaway_of_a_connection_error_goes_out_while_a_stream_writes():
    async def app(scope, receive, send):
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200})
            while True:
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"x" * 512,
                        "more_body": True,
                    }
                )
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    async with open_memory_server(app, lifespan="off") as server:
        async with open_memory_connection(server) as stream:
            client = H2Client(stream)
            client.conn.config.validate_outbound_headers = False
            client.conn.config.normalize_outbound_headers = False
            await client.start()
            sid = await client.request("GET", "/stream")
            while len(client.replies[sid].body) < 4096:
                await client.receive()
            # Malformed trailers: a connection error while stream 1's app
            # writes (and so holds the write lock).
            bad = await client.request("POST", "/hold", body=b"body", end=False)
            client.conn.send_headers(bad, [(b"connection", b"close")], end_stream=True)
            await client.flush()
            with trio.fail_after(10):
                while not client.closed and client.goaway is None:
                    await client.receive()
            assert client.goaway is not None, "EOF without a GOAWAY"
            assert client.goaway.error_code == ErrorCodes.PROTOCOL_ERROR


async def test_a_body_short_of_its_content_length_ended_by_trailers_is_malformed():
    # RFC 9113 section 8.1.1: content-length that does not equal the sum of
    # the DATA payloads makes the request malformed.
    bodies = []

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            body += message.get("body", b"")
            if not message.get("more_body"):
                bodies.append(body)
                break
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    async with open_memory_server(app, lifespan="off") as server:
        async with open_memory_connection(server) as stream:
            client = H2Client(stream)
            await client.start()
            sid = await client.request(
                "POST",
                "/",
                headers=[("content-length", "100")],
                body=b"short",
                end=False,
            )
            client.conn.send_headers(sid, [(b"x-trailer", b"1")], end_stream=True)
            await client.flush()
            with trio.fail_after(5):
                await client.until_closed()
            assert bodies == []  # the app never saw "short" as the whole body
            # As malformed trailers: the connection ends (the body has ended
            # by then, and the app may be reading it).
            assert client.goaway is not None
            assert client.goaway.error_code == ErrorCodes.PROTOCOL_ERROR
