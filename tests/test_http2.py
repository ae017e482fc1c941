"""HTTP/2: negotiation, streams, flow control, shutdown, extensions (real clients)."""

from __future__ import annotations

import json

import h2.errors
import h2.events
import h2.settings
import pytest
import trio
import trio.testing
from conftest import connect, hello_app
from h2client import H2Client, H2Reply, H2Session
from hyperframe.frame import DataFrame, GoAwayFrame

from triasgi.testing import open_memory_connection, open_memory_server, open_server

ErrorCodes = h2.errors.ErrorCodes


async def scope_app(scope, receive, send):
    """Answers with what the app saw: the scope's wire facts and the body."""
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    facts = {
        "http_version": scope["http_version"],
        "method": scope["method"],
        "path": scope["path"],
        "query_string": scope["query_string"].decode(),
        "scheme": scope["scheme"],
        "headers": [[k.decode(), v.decode()] for k, v in scope["headers"]],
        "extensions": sorted(scope["extensions"]),
        "priority": scope["extensions"].get("http.response.priority"),
        "body_length": len(body),
    }
    data = json.dumps(facts).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"connection", b"keep-alive"),
                (b"content-length", b"%d" % len(data)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


def memory_server(app, **settings):
    """A server on memory streams for apps that take only http scopes."""
    settings.setdefault("lifespan", "off")
    return open_memory_server(app, **settings)


async def test_prior_knowledge_request_and_scope():
    async with H2Session(scope_app) as client:
        sid = await client.request(
            "POST",
            "/items/3?x=1",
            headers=[("cookie", "a=1"), ("cookie", "b=2"), ("te", "trailers")],
            body=b"abc",
        )
        reply = await client.response(sid)
        assert reply.status == 200
        assert reply.ended
        # A connection-specific field of the app's is not sent on HTTP/2.
        assert b"connection" not in reply.header
        assert reply.header[b"server"] == b"triasgi"
        facts = json.loads(reply.body)
        assert facts["http_version"] == "2"
        assert facts["method"] == "POST"
        assert facts["path"] == "/items/3"
        assert facts["query_string"] == "x=1"
        assert facts["scheme"] == "http"
        assert facts["body_length"] == 3
        headers = facts["headers"]
        assert ["host", "example.test"] in headers
        assert not [k for k, _ in headers if k.startswith(":")]
        # Cookie fields are joined into one (RFC 9113 section 8.2.3).
        assert ["cookie", "a=1; b=2"] in headers
        assert set(facts["extensions"]) >= {
            "http.response.trailers",
            "http.response.early_hint",
            "http.response.priority",
        }
        assert facts["priority"] == {"weight": 16, "depends_on": 0}


async def test_stream_priority_reaches_the_scope():
    async with H2Session(scope_app) as client:
        sid = client.conn.get_next_available_stream_id()
        client.replies[sid] = H2Reply()
        client.conn.send_headers(
            sid,
            client.headers_for("GET", "/"),
            end_stream=True,
            priority_weight=200,
            priority_depends_on=0,
        )
        await client.flush()
        reply = await client.response(sid)
        assert json.loads(reply.body)["priority"] == {"weight": 200, "depends_on": 0}


async def test_many_streams_at_once_one_slow():
    release = trio.Event()

    async def app(scope, receive, send):
        if scope["path"] == "/slow":
            await release.wait()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    async with H2Session(app) as client:
        slow = await client.request("GET", "/slow")
        others = [await client.request("GET", f"/{i}") for i in range(20)]
        for i, sid in enumerate(others):
            reply = await client.response(sid)
            assert reply.body == f"/{i}".encode()
        assert not client.replies[slow].ended
        release.set()
        reply = await client.response(slow)
        assert reply.body == b"/slow"


async def test_reset_stream_gives_that_stream_alone_the_grace_period(autojump_clock):
    seen: dict[str, object] = {}

    async def app(scope, receive, send):
        if scope["path"] == "/doomed":
            message = await receive()  # the request's end
            message = await receive()
            seen["message"] = message["type"]
            seen["at"] = trio.current_time()
            try:
                await trio.sleep(100)
            except trio.Cancelled:
                seen["cancelled_at"] = trio.current_time()
                raise
            return
        await trio.sleep(1)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"fine"})

    async with H2Session(app, disconnect_grace_period=3) as client:
        doomed = await client.request("GET", "/doomed")
        fine = await client.request("GET", "/fine")
        await trio.sleep(0.1)
        client.conn.reset_stream(doomed, ErrorCodes.CANCEL)
        await client.flush()
        reply = await client.response(fine)
        assert reply.body == b"fine"
        await trio.sleep(5)
        assert seen["message"] == "http.disconnect"
        assert seen["cancelled_at"] - seen["at"] == pytest.approx(3, abs=0.01)
        # The connection still serves.
        again = await client.get("/again")
        assert again.body == b"fine"


async def test_send_after_reset_raises_client_disconnected(autojump_clock):
    from triasgi import ClientDisconnected

    outcome = []
    started = trio.Event()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
        started.set()
        await trio.sleep(1)
        try:
            await send({"type": "http.response.body", "body": b"y", "more_body": True})
        except ClientDisconnected:
            outcome.append("disconnected")
            raise

    async with H2Session(app) as client:
        sid = await client.request("GET", "/")
        await started.wait()
        client.conn.reset_stream(sid, ErrorCodes.CANCEL)
        await client.flush()
        await trio.sleep(2)
        assert outcome == ["disconnected"]


async def test_connection_lost_disconnects_every_stream(autojump_clock):
    seen = []

    async def app(scope, receive, send):
        await receive()
        message = await receive()
        seen.append(message["type"])

    async with memory_server(app) as server:
        async with open_memory_connection(server) as stream:
            client = H2Client(stream)
            await client.start()
            for _ in range(3):
                await client.request("GET", "/")
            await trio.sleep(0.1)
        await trio.sleep(1)
    assert seen == ["http.disconnect"] * 3


async def test_expect_100_continue_gets_100_when_the_app_reads(autojump_clock):
    read = trio.Event()

    async def app(scope, receive, send):
        if scope["path"] == "/refuse":
            await send({"type": "http.response.start", "status": 413})
            await send({"type": "http.response.body", "body": b"no"})
            return
        read.set()
        message = await receive()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": message["body"]})

    async with H2Session(app) as client:
        expect = [("expect", "100-continue")]
        # An app that answers without reading: no 100, the client sends nothing.
        refused = await client.request("POST", "/refuse", headers=expect, end=False)
        reply = await client.response(refused)
        assert reply.status == 413
        assert reply.informational == []
        sid = await client.request("POST", "/", headers=expect, end=False)
        reply = client.replies[sid]
        await read.wait()
        with trio.fail_after(1):
            while not reply.informational:
                await client.receive()
        assert reply.informational == [(100, [])]
        await client.send_body(sid, b"payload")
        reply = await client.response(sid)
        assert reply.status == 200
        assert reply.body == b"payload"


async def test_request_body_larger_than_the_window_is_credited_as_read():
    big = b"x" * (3 * 1024 * 1024)

    async def app(scope, receive, send):
        total = 0
        while True:
            message = await receive()
            total += len(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": str(total).encode()})

    async with H2Session(app) as client:
        sid = await client.request("POST", "/", end=False)
        await client.send_body(sid, big)
        reply = await client.response(sid)
        assert reply.body == str(len(big)).encode()


async def test_slow_app_bounds_the_request_body_buffered():
    """Body the app has not read is not credited: the client's window stays shut."""
    release = trio.Event()

    async def app(scope, receive, send):
        await release.wait()
        total = 0
        while True:
            message = await receive()
            total += len(message["body"])
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": str(total).encode()})

    async with H2Session(app) as client:
        sid = await client.request("POST", "/", end=False)
        window = client.conn.local_flow_control_window(sid)
        assert window == 65535
        await client.send_body(sid, b"y" * window, end=False)
        with trio.move_on_after(0.5):
            while True:
                await client.receive()
        # Nothing credited while the app has not read.
        assert client.conn.local_flow_control_window(sid) == 0
        release.set()
        while client.conn.local_flow_control_window(sid) == 0:
            await client.receive()
        client.conn.end_stream(sid)
        await client.flush()
        reply = await client.response(sid)
        assert reply.body == b"65535"


async def test_response_waits_for_the_window_and_other_streams_go_on():
    big = b"z" * 200_000

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        if scope["path"] == "/big":
            await send({"type": "http.response.body", "body": big})
        else:
            await send({"type": "http.response.body", "body": b"small"})

    async with memory_server(app) as server:
        async with open_memory_connection(server) as stream:
            client = H2Client(stream, auto_window=False)
            await client.start()
            big_sid = await client.request("GET", "/big")
            # The client credits nothing: the big response stops at 65535.
            with trio.move_on_after(0.5):
                while len(client.replies[big_sid].body) < 65535:
                    await client.receive()
            assert len(client.replies[big_sid].body) == 65535
            assert not client.replies[big_sid].ended
            # Another stream still gets its (small) answer: the connection
            # window has room beyond the stalled stream.
            client.conn.increment_flow_control_window(1_000_000)
            await client.flush()
            small = await client.request("GET", "/small")
            reply = await client.response(small)
            assert reply.body == b"small"
            # Opening the big stream's window lets the rest through.
            client.auto_window = True
            client.conn.increment_flow_control_window(1_000_000, big_sid)
            await client.flush()
            reply = await client.response(big_sid)
            assert reply.body == big


async def test_stalled_window_resets_that_stream_after_the_write_timeout(
    autojump_clock,
):
    from triasgi import ClientDisconnected

    outcome = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        try:
            await send({"type": "http.response.body", "body": b"q" * 100_000})
        except ClientDisconnected:
            outcome.append("disconnected")
            raise

    async with memory_server(app, timeout_write=2) as server:
        async with open_memory_connection(server) as stream:
            client = H2Client(stream, auto_window=False)
            await client.start()
            sid = await client.request("GET", "/")
            reply = await client.response(sid)
            assert reply.reset == ErrorCodes.CANCEL
            assert outcome == ["disconnected"]


@pytest.mark.parametrize("stall", ["response window", "request body"])
async def test_stream_the_server_resets_gets_the_grace_period(autojump_clock, stall):
    """An app that goes on after its stream was reset is cancelled, as on a
    client's reset: it cannot hold a stream (and its slot) forever."""
    from triasgi import ClientDisconnected

    seen = {}

    async def app(scope, receive, send):
        try:
            if stall == "request body":
                while (await receive())["type"] == "http.request":
                    pass
            else:
                await send({"type": "http.response.start", "status": 200})
                await send({"type": "http.response.body", "body": b"q" * 100_000})
        except ClientDisconnected:
            pass
        seen["gone"] = trio.current_time()
        try:
            await trio.sleep(1000)  # an app that ignores the disconnect
        except trio.Cancelled:
            seen["cancelled"] = trio.current_time()
            raise

    settings = {"timeout_write": 2, "timeout_request_body": 2}
    async with memory_server(app, disconnect_grace_period=3, **settings) as server:
        async with open_memory_connection(server) as stream:
            client = H2Client(stream, auto_window=False)
            await client.start()
            sid = await client.request("POST", "/", body=b"part", end=False)
            reply = await client.response(sid)
            assert reply.reset == ErrorCodes.CANCEL
            await trio.sleep(10)
            assert seen["gone"] == pytest.approx(2, abs=0.01)
            assert seen["cancelled"] - seen["gone"] == pytest.approx(3, abs=0.01)


async def test_connection_lost_while_the_last_body_waits_gives_the_grace_period(
    autojump_clock,
):
    from triasgi import ClientDisconnected

    seen = {}

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        try:
            await send({"type": "http.response.body", "body": b"q" * 100_000})
        except ClientDisconnected:
            seen["gone"] = trio.current_time()
        try:
            await trio.sleep(1000)
        except trio.Cancelled:
            seen["cancelled"] = trio.current_time()
            raise

    async with memory_server(app, disconnect_grace_period=3) as server:
        async with open_memory_connection(server) as stream:
            client = H2Client(stream, auto_window=False)
            await client.start()
            sid = await client.request("GET", "/")
            while len(client.replies[sid].body) < 65535:
                await client.receive()
            await trio.sleep(1)
        await trio.sleep(10)
    assert seen["gone"] == pytest.approx(1, abs=0.01)
    assert seen["cancelled"] - seen["gone"] == pytest.approx(3, abs=0.01)


class Stalling(trio.abc.Stream):
    """The server's end of a memory connection, whose client stops reading at
    ``stall()``: from then on a write waits for good, as on a socket whose
    buffers are full."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.stalled = False

    def stall(self) -> None:
        self.stalled = True

    async def send_all(self, data) -> None:
        if self.stalled:
            await trio.sleep_forever()
        await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None):
        return await self.stream.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.stream.aclose()


async def stalling_client(server, nursery, **client_args) -> tuple[H2Client, Stalling]:
    """An HTTP/2 client with windows wide open, on a connection that can stall."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    stalling = Stalling(server_stream)
    nursery.start_soon(server.serve_stream, stalling, ("127.0.0.1", 50000), None)
    client = H2Client(client_stream, settings={4: 2**31 - 1}, **client_args)
    await client.start()
    client.conn.increment_flow_control_window(2**30)
    await client.flush()
    return client, stalling


async def endless_body(scope, receive, send):
    await send({"type": "http.response.start", "status": 200})
    while True:
        await send(
            {"type": "http.response.body", "body": b"e" * 16384, "more_body": True}
        )


async def test_client_that_stops_reading_is_dropped_after_one_write_timeout(
    autojump_clock,
):
    """Streams whose writes queue behind the one that timed out do not each
    wait for the write timeout again."""
    from triasgi import ClientDisconnected

    gone = {}
    release = trio.Event()

    async def app(scope, receive, send):
        if scope["path"] != "/first":
            await release.wait()
        try:
            await endless_body(scope, receive, send)
        except ClientDisconnected:
            gone[scope["path"]] = trio.current_time()
            raise

    async with memory_server(app, timeout_write=2) as server:
        async with trio.open_nursery() as nursery:
            client, stalling = await stalling_client(server, nursery)
            for path in ("/first", "/b", "/c"):
                await client.request("GET", path)
            while not client.replies[1].body:
                await client.receive()
            stalling.stall()
            stalled_at = trio.current_time()
            await trio.sleep(0.5)  # a write now waits: the others queue behind it
            release.set()
            await trio.sleep(30)
            assert sorted(gone) == ["/b", "/c", "/first"]
            for at in gone.values():
                assert at - stalled_at == pytest.approx(2, abs=0.01)


async def test_shutdown_timeout_bounds_a_write_to_a_client_that_stopped_reading(
    autojump_clock,
):
    """The shielded write is cut by the hard stop after the graceful-shutdown
    timeout, not left to run for the (longer) write timeout."""
    settings = {"timeout_write": 60, "timeout_graceful_shutdown": 1}
    async with memory_server(endless_body, **settings) as server:
        async with trio.open_nursery() as nursery:
            client, stalling = await stalling_client(server, nursery)
            sid = await client.request("GET", "/")
            while not client.replies[sid].body:
                await client.receive()
            stalling.stall()
            await trio.sleep(0.5)  # a write now waits for the client
            start = trio.current_time()
            server.shutdown()
        # The connection's task has ended: the nursery is done.
        assert trio.current_time() - start == pytest.approx(1, abs=0.01)


async def test_stream_over_the_limit_is_refused_alone():
    release = trio.Event()

    async def app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    async with H2Session(app, h2_max_concurrent_streams=2) as client:
        # Settings come first: the client learns the limit but does not honour it.
        while not client.remote_settings_seen:
            await client.receive()
        assert client.conn.remote_settings.max_concurrent_streams == 2
        client.conn.ignore_stream_limit()
        a = await client.request("GET", "/a")
        b = await client.request("GET", "/b")
        c = await client.request("GET", "/c")
        reply = await client.response(c)
        assert reply.reset == ErrorCodes.REFUSED_STREAM
        release.set()
        assert (await client.response(a)).body == b"ok"
        assert (await client.response(b)).body == b"ok"
        assert client.goaway is None
        # The slot is free again.
        assert (await client.get("/d")).body == b"ok"


async def test_graceful_shutdown_goaway_and_in_flight_streams_finish(autojump_clock):
    started = trio.Event()
    release = trio.Event()

    async def app(scope, receive, send):
        started.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"w" * 100_000})

    async with memory_server(app) as server:
        async with open_memory_connection(server) as stream:
            client = H2Client(stream, auto_window=False)
            await client.start()
            sid = await client.request("GET", "/")
            await started.wait()
            server.shutdown()
            while client.goaway is None:
                await client.receive()
            assert client.goaway.error_code == ErrorCodes.NO_ERROR
            assert client.goaway.last_stream_id == sid
            release.set()
            # The response needs WINDOW_UPDATEs sent after the GOAWAY.
            client.auto_window = True
            client.conn.increment_flow_control_window(200_000)
            client.conn.increment_flow_control_window(200_000, sid)
            await client.flush()
            reply = await client.response(sid)
            assert reply.ended
            assert len(reply.body) == 100_000
            await client.until_closed()


async def test_client_goaway_keeps_the_frames_after_it_in_the_same_read(
    autojump_clock,
):
    """A client's GOAWAY NO_ERROR and the rest of a stream's body, sent together."""

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": body})

    async with H2Session(app) as client:
        sid = await client.request("POST", "/", body=b"abc", end=False)
        goaway = GoAwayFrame(0)
        goaway.last_stream_id = 0
        goaway.error_code = ErrorCodes.NO_ERROR
        data = DataFrame(sid, b"defg")
        data.flags.add("END_STREAM")
        await client.send_raw(goaway.serialize() + data.serialize())
        reply = await client.response(sid)
        assert reply.status == 200
        assert reply.body == b"abcdefg"


async def test_new_stream_after_goaway_is_refused(autojump_clock):
    release = trio.Event()

    async def app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"done"})

    async with memory_server(app) as server:
        async with open_memory_connection(server) as stream:
            client = H2Client(stream)
            await client.start()
            first = await client.request("GET", "/")
            await trio.sleep(0.1)
            server.shutdown()
            while client.goaway is None:
                await client.receive()
            late = await client.request("GET", "/late")
            reply = await client.response(late)
            assert reply.reset == ErrorCodes.REFUSED_STREAM
            release.set()
            assert (await client.response(first)).body == b"done"


async def test_idle_connection_gets_goaway_after_keep_alive(autojump_clock):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"hi"})

    async with H2Session(app, timeout_keep_alive=5) as client:
        assert (await client.get("/")).body == b"hi"
        start = trio.current_time()
        await client.until_closed()
        assert client.goaway is not None
        assert client.goaway.error_code == ErrorCodes.NO_ERROR
        assert trio.current_time() - start == pytest.approx(5, abs=0.1)


async def test_trailers_every_message_kept():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"data"})
        await send(
            {
                "type": "http.response.trailers",
                "headers": [(b"grpc-status", b"0")],
                "more_trailers": True,
            }
        )
        await send(
            {"type": "http.response.trailers", "headers": [(b"grpc-message", b"ok")]}
        )

    async with H2Session(app) as client:
        reply = await client.get("/", headers=[("te", "trailers")])
        assert reply.body == b"data"
        assert reply.trailers == [(b"grpc-status", b"0"), (b"grpc-message", b"ok")]
        assert reply.ended
        # Without TE: trailers they are dropped (the ASGI trailers extension).
        reply = await client.get("/")
        assert reply.body == b"data"
        assert reply.trailers == []
        assert reply.ended


async def test_early_hints_are_interim_headers():
    async def app(scope, receive, send):
        await send(
            {
                "type": "http.response.early_hint",
                "links": [
                    b"</style.css>; rel=preload; as=style",
                    b"</app.js>; rel=preload",
                ],
            }
        )
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"page"})

    async with H2Session(app) as client:
        reply = await client.get("/")
        assert reply.informational == [
            (
                103,
                [
                    (b"link", b"</style.css>; rel=preload; as=style"),
                    (b"link", b"</app.js>; rel=preload"),
                ],
            )
        ]
        assert reply.status == 200
        assert reply.body == b"page"


async def test_response_before_the_request_body_ends_is_followed_by_a_reset(
    autojump_clock,
):
    """RST_STREAM NO_ERROR goes out when the app returns, not with a later write."""

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"early"})

    async with H2Session(app) as client:
        await client.round_trip()  # nothing else of the client's is coming
        sid = await client.request("POST", "/", body=b"part", end=False)
        reply = client.replies[sid]
        with trio.fail_after(1):
            while reply.reset is None:
                await client.receive()
        assert reply.body == b"early"
        assert reply.ended
        assert reply.reset == ErrorCodes.NO_ERROR
        assert client.goaway is None


async def test_head_and_204_have_no_body():
    async def app(scope, receive, send):
        status = 204 if scope["path"] == "/empty" else 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-length", b"5")] if status == 200 else [],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if status == 204 else b"hello"}
        )

    async with H2Session(app) as client:
        head = await client.response(await client.request("HEAD", "/"))
        assert head.status == 200
        assert head.header[b"content-length"] == b"5"
        assert head.body == b""
        empty = await client.get("/empty")
        assert empty.status == 204
        assert empty.body == b""


@pytest.mark.parametrize(
    "field",
    [
        (b"x-bad", b"one\r\nset-cookie: injected"),
        (b"x-bad", b"nul\x00"),
        (b"x-bad", b" padded"),
        (b"x bad", b"1"),
        (b"", b"1"),
        (b":path", b"/"),
    ],
)
async def test_invalid_response_header_is_a_500_and_the_connection_goes_on(field):
    async def app(scope, receive, send):
        headers = [(b"x-first", b"kept")]
        if scope["path"] == "/bad":
            headers.append(field)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    async with H2Session(app) as client:
        bad = await client.get("/bad")
        assert bad.status == 500
        assert bad.ended
        # HPACK's state is whole: the field before the bad one decodes right.
        good = await client.get("/good")
        assert good.status == 200
        assert good.header[b"x-first"] == b"kept"
        assert good.body == b"ok"


@pytest.mark.parametrize(
    ("bodies", "status", "reset"),
    [
        ([b"hello world"], 500, None),  # longer, in one message: a 500
        ([b"hel"], 500, None),  # shorter, in one message
        ([b"hel", b"lo world"], 200, ErrorCodes.INTERNAL_ERROR),  # longer, later
        ([b"hel", b""], 200, ErrorCodes.INTERNAL_ERROR),  # shorter, at the end
    ],
)
async def test_body_that_does_not_match_its_content_length(bodies, status, reset):
    """Never a malformed response, which would make the client end the
    connection: the connection goes on."""

    async def app(scope, receive, send):
        if scope["path"] == "/good":
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"5")],
            }
        )
        for i, body in enumerate(bodies):
            more = i < len(bodies) - 1
            await send({"type": "http.response.body", "body": body, "more_body": more})

    async with H2Session(app) as client:
        reply = await client.get("/bad")
        assert reply.status == status
        assert reply.reset == reset
        assert (await client.get("/good")).body == b"ok"


async def test_body_that_matches_its_content_length_in_pieces():
    async def app(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", b"5")],
            }
        )
        await send({"type": "http.response.body", "body": b"he", "more_body": True})
        await send({"type": "http.response.body", "body": b"llo", "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async with H2Session(app) as client:
        reply = await client.get("/")
        assert reply.body == b"hello"
        assert reply.ended
        head = await client.response(await client.request("HEAD", "/"))
        assert head.header[b"content-length"] == b"5"
        assert head.ended


async def test_response_te_header_is_dropped():
    async def app(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"te", b"gzip"), (b"x-a", b"1")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    async with H2Session(app) as client:
        reply = await client.get("/")
        assert reply.status == 200
        assert b"te" not in reply.header
        assert reply.header[b"x-a"] == b"1"


async def test_invalid_trailer_resets_the_stream_and_the_connection_goes_on():
    async def app(scope, receive, send):
        if scope["path"] == "/good":
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        await send({"type": "http.response.start", "status": 200, "trailers": True})
        await send({"type": "http.response.body", "body": b"data"})
        await send({"type": "http.response.trailers", "headers": [(b"x-t", b"a\r\nb")]})

    async with H2Session(app) as client:
        bad = await client.get("/bad", headers=[("te", "trailers")])
        assert bad.reset == ErrorCodes.INTERNAL_ERROR
        assert bad.trailers == []
        assert (await client.get("/good")).body == b"ok"


async def test_204_carries_no_content_length():
    async def app(scope, receive, send):
        status = 204 if scope["path"] == "/none" else 304
        headers = [(b"content-length", b"12"), (b"etag", b'"x"')]
        await send(
            {"type": "http.response.start", "status": status, "headers": headers}
        )
        await send({"type": "http.response.body", "body": b""})

    async with H2Session(app) as client:
        none = await client.get("/none")
        assert none.status == 204
        assert b"content-length" not in none.header
        assert none.header[b"etag"] == b'"x"'
        # A 304 may give the length the full response would have.
        same = await client.get("/same")
        assert same.status == 304
        assert same.header[b"content-length"] == b"12"


async def test_app_error_before_the_response_is_500_after_it_a_reset():
    async def app(scope, receive, send):
        if scope["path"] == "/late":
            await send({"type": "http.response.start", "status": 200})
            await send(
                {"type": "http.response.body", "body": b"part", "more_body": True}
            )
        raise RuntimeError("boom")

    async with H2Session(app) as client:
        early = await client.get("/early")
        assert early.status == 500
        late = await client.get("/late")
        assert late.reset == ErrorCodes.INTERNAL_ERROR
        # The connection goes on.
        assert (await client.get("/early")).status == 500


async def test_pathsend_over_http2(tmp_path):
    path = tmp_path / "file.bin"
    payload = bytes(range(256)) * 2000
    path.write_bytes(payload)

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.pathsend", "path": str(path)})

    async with H2Session(app) as client:
        reply = await client.get("/")
        assert reply.header[b"content-length"] == str(len(payload)).encode()
        assert reply.body == payload


async def test_limit_concurrency_answers_503_on_the_stream():
    release = trio.Event()

    async def app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    async with H2Session(app, limit_concurrency=1) as client:
        first = await client.request("GET", "/")
        second = await client.request("GET", "/")
        reply = await client.response(second)
        assert reply.status == 503
        release.set()
        assert (await client.response(first)).body == b"ok"


async def test_body_of_a_request_answered_503_is_credited_to_the_connection():
    """Body that came with a request the server answered itself is not lost."""
    release = trio.Event()

    async def app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    async with H2Session(app, limit_concurrency=1) as client:
        await client.round_trip()
        first = await client.request("GET", "/")
        window = client.conn.outbound_flow_control_window
        assert window == 1024 * 1024
        # Each body comes in the same read as its request head.
        for _ in range(10):
            sid = await client.request("POST", "/", body=b"x" * 60_000)
            assert (await client.response(sid)).status == 503
        await client.round_trip()
        # 600,000 bytes sent: the server credits them back (in steps of half
        # its window), instead of letting the connection window shrink.
        assert client.conn.outbound_flow_control_window > window - 600_000
        release.set()
        assert (await client.response(first)).body == b"ok"


async def test_503_before_the_request_body_ends_resets_the_stream(autojump_clock):
    """The rest of the body is not wanted: RST_STREAM NO_ERROR after the 503."""
    release = trio.Event()

    async def app(scope, receive, send):
        await release.wait()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    async with H2Session(app, limit_concurrency=1) as client:
        first = await client.request("GET", "/")
        sid = await client.request("POST", "/", body=b"part", end=False)
        reply = client.replies[sid]
        with trio.fail_after(1):
            while reply.reset is None:
                await client.receive()
        assert reply.status == 503
        assert reply.ended
        assert reply.reset == ErrorCodes.NO_ERROR
        release.set()
        assert (await client.response(first)).body == b"ok"


async def test_http2_off_preface_never_reaches_the_app():
    called = []

    async def app(scope, receive, send):
        called.append(scope)

    async with memory_server(app, http2=False) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            data = b""
            with trio.fail_after(5):
                while True:
                    chunk = await stream.receive_some(65536)
                    if not chunk:
                        break
                    data += chunk
    assert data.startswith(b"HTTP/1.1 505 ") or data == b""
    assert called == []


async def test_plain_connect_gets_405_on_its_stream():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    async with H2Session(app) as client:
        sid = client.conn.get_next_available_stream_id()
        client.replies[sid] = H2Reply()
        client.conn.send_headers(
            sid, [(b":method", b"CONNECT"), (b":authority", b"example.test:443")]
        )
        await client.flush()
        reply = await client.response(sid)
        assert reply.status == 405
        # The connection goes on.
        assert (await client.get("/")).body == b"ok"


async def test_ping_is_answered():
    async with H2Session(hello_app) as client:
        client.conn.ping(b"12345678")
        await client.flush()
        with trio.fail_after(5):
            while not any(
                isinstance(e, h2.events.PingAckReceived) for e in client.events
            ):
                await client.receive()
        ack = next(e for e in client.events if isinstance(e, h2.events.PingAckReceived))
        assert ack.ping_data == b"12345678"


async def test_root_path_and_proxy_headers_over_http2():
    async def app(scope, receive, send):
        text = f"{scope['path']} {scope['root_path']} {scope['client'][0]} {scope['scheme']}"
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": text.encode()})

    async with H2Session(
        app, root_path="/api", proxy_headers=True, forwarded_allow_ips="127.0.0.1"
    ) as client:
        reply = await client.get(
            "/items/3",
            headers=[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-proto", "https"),
            ],
        )
        assert reply.body == b"/api/items/3 /api 203.0.113.9 https"


async def test_head_limits_answer_on_the_stream_as_on_http11():
    async def app(scope, receive, send):
        cookie = dict(scope["headers"]).get(b"cookie", b"")
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": cookie})

    async with H2Session(
        app,
        limit_request_fields=10,
        limit_request_field_size=200,
        limit_request_line=100,
    ) as client:
        many = await client.get("/", headers=[(f"x-{i}", "v") for i in range(11)])
        assert many.status == 431
        big = await client.get("/", headers=[("x-big", "v" * 300)])
        assert big.status == 431
        long = await client.get("/" + "p" * 200)
        assert long.status == 414
        # Cookie crumbs are one field, as on HTTP/1.1.
        crumbs = await client.get(
            "/", headers=[("cookie", f"c{i}=1") for i in range(20)]
        )
        assert crumbs.status == 200
        assert crumbs.body == "; ".join(f"c{i}=1" for i in range(20)).encode()
        # The connection goes on.
        assert (await client.get("/")).status == 200


async def test_repeated_and_changing_heads_decode_and_encode_right():
    """Heads the HPACK sides remember stay right as the tables change."""

    async def app(scope, receive, send):
        value = dict(scope["headers"]).get(b"x-value", b"none")
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"x-echo", value), (b"x-path", scope["path"].encode())],
            }
        )
        await send({"type": "http.response.body", "body": value})

    async with H2Session(app) as client:
        # "b" after "a" takes "a"'s index: the second "b" is the same bytes
        # as the second "a" was, and must not decode as "a".
        values = ["a", "a", "b", "b", "a", "a", "c" * 100, "b", "b"]
        for i, value in enumerate(values):
            path = "/same" if i < 6 else f"/p{i % 2}"
            reply = await client.get(path, headers=[("x-value", value)])
            assert reply.body == value.encode()
            assert reply.header[b"x-echo"] == value.encode()
            assert reply.header[b"x-path"] == path.encode()
        # The client shrinks the server's encoder table: the next heads must
        # carry the size update, and still decode.
        client.conn.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
        await client.flush()
        for value in ["a", "a", "d"]:
            reply = await client.get("/same", headers=[("x-value", value)])
            assert reply.header[b"x-echo"] == value.encode()


async def test_a_connection_error_while_a_stream_write_waits_closes_cleanly(caplog):
    """The client stops reading a large response, then breaks the protocol
    on another stream: the connection ends with a GOAWAY, not an error."""

    async def app(scope, receive, send):
        if scope["path"] == "/stream":
            await send({"type": "http.response.start", "status": 200})
            while True:
                chunk = {"type": "http.response.body", "body": b"x" * 65536}
                await send({**chunk, "more_body": True})
        while (await receive()).get("more_body"):
            pass

    async with open_server(app, lifespan="off") as server:
        stream = await connect(server)
        client = H2Client(stream, settings={4: 2**31 - 1})
        client.conn.config.validate_outbound_headers = False
        client.conn.config.normalize_outbound_headers = False
        await client.start()
        client.conn.increment_flow_control_window(2**31 - 1 - 65535)
        await client.flush()
        while not client.remote_settings_seen:
            await client.receive()
        await client.request("GET", "/stream")
        await trio.sleep(0.5)  # the socket's buffers fill: the write waits
        bad = await client.request("POST", "/hold", body=b"body", end=False)
        # Malformed trailers: a connection error (PROTOCOL_ERROR).
        client.conn.send_headers(bad, [(b"connection", b"close")], end_stream=True)
        await client.flush()
        await trio.sleep(0.5)
        with trio.fail_after(10):
            await client.until_closed()
        assert client.goaway is not None
        assert client.goaway.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    errors = [r.getMessage() for r in caplog.records if r.name == "triasgi.error"]
    assert errors == []
