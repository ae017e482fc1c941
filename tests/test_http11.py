"""HTTP/1.1 behaviour as a client sees it, over real sockets and in memory."""

from __future__ import annotations

import logging

import h11
import pytest
import trio
import trio.testing
from conftest import H11Client, connect, read_until_closed

from triasgi.testing import open_memory_connection, open_memory_server, open_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")


def capture_scope(scopes):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        scopes.append(scope)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def test_scope_has_every_key_of_the_spec():
    scopes = []
    async with open_server(capture_scope(scopes), root_path="/mount") as server:
        stream = await connect(server)
        client = H11Client(stream)
        reply = await client.request_response(
            "GET",
            "/caf%C3%A9/a%20b?x=1&y=%20",
            headers=[("X-B", "1"), ("X-A", "2"), ("x-b", "3")],
        )
        await stream.aclose()
    assert reply.status == 200
    (scope,) = scopes
    host, port = server.addresses[0]
    assert scope["type"] == "http"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert scope["http_version"] == "1.1"
    assert scope["method"] == "GET"
    assert scope["scheme"] == "http"
    # The root path is part of the path (docs/cli.md, --root-path).
    assert scope["path"] == "/mount/café/a b"
    assert scope["raw_path"] == b"/mount/caf%C3%A9/a%20b"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["root_path"] == "/mount"
    assert scope["headers"] == [
        (b"host", b"example.test"),
        (b"x-b", b"1"),
        (b"x-a", b"2"),
        (b"x-b", b"3"),
    ]
    assert scope["client"][0] == "127.0.0.1"
    assert isinstance(scope["client"][1], int)
    assert scope["server"] == (host, port)
    assert scope["state"] == {}
    assert scope["extensions"] == {
        "http.response.trailers": {},
        "http.response.early_hint": {},
        "http.response.pathsend": {},
    }


async def test_absolute_form_target_gives_path_and_query():
    scopes = []
    async with open_server(capture_scope(scopes)) as server:
        stream = await connect(server)
        await stream.send_all(
            b"GET http://example.test/p/q?z=9 HTTP/1.1\r\nhost: example.test\r\n"
            b"connection: close\r\n\r\n"
        )
        await read_until_closed(stream)
    assert scopes[0]["path"] == "/p/q"
    assert scopes[0]["query_string"] == b"z=9"


def echo_path_app():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = scope["path"].encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


async def test_keep_alive_serves_several_requests_on_one_connection():
    async with open_server(echo_path_app()) as server:
        stream = await connect(server)
        client = H11Client(stream)
        bodies = [
            (await client.request_response("GET", f"/{i}")).body for i in range(3)
        ]
        await stream.aclose()
    assert bodies == [b"/0", b"/1", b"/2"]


@pytest.mark.parametrize(
    ("connection", "kept"),
    [
        ("keep-alive, closed-captions", True),
        ("x-close-notify", True),
        ("Keep-Alive, CLOSE", False),
        ("x-a ,\tclose", False),
    ],
)
async def test_only_a_close_token_in_connection_ends_the_connection(connection, kept):
    async with open_server(echo_path_app()) as server:
        stream = await connect(server)
        client = H11Client(stream)
        first = await client.request_response(
            "GET", "/1", headers=[("connection", connection)]
        )
        if kept:
            second = await client.request_response("GET", "/2")
            assert second.body == b"/2"
        else:
            assert await read_until_closed(stream) == b""
        await stream.aclose()
    assert first.body == b"/1"
    assert (first.headers.get(b"connection") == b"close") is not kept


async def test_pipelined_requests_are_answered_in_order():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await trio.sleep(0.05)
        body = scope["path"].encode()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": body})

    async with open_server(app) as server:
        stream = await connect(server)
        await stream.send_all(
            b"GET /slow HTTP/1.1\r\nhost: a\r\n\r\n"
            b"GET /fast HTTP/1.1\r\nhost: a\r\n\r\n"
            b"GET /last HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        )
        data = await read_until_closed(stream)
    assert data.count(b"HTTP/1.1 200 OK") == 3
    assert data.index(b"/slow") < data.index(b"/fast") < data.index(b"/last")


async def test_http_1_0_request_gets_a_response_then_close():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        assert scope["http_version"] == "1.0"
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"part1-", "more_body": True})
        await send({"type": "http.response.body", "body": b"part2"})

    async with open_server(app) as server:
        stream = await connect(server)
        await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
        data = await read_until_closed(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"part1-part2"


async def test_client_connection_close_is_honoured():
    async with open_server(echo_path_app()) as server:
        stream = await connect(server)
        client = H11Client(stream)
        reply = await client.request_response(
            "GET", "/x", headers=[("connection", "close")]
        )
        assert reply.headers[b"connection"] == b"close"
        assert await read_until_closed(stream) == b""


async def test_app_connection_close_closes_after_the_response():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"connection", b"close")],
            }
        )
        await send({"type": "http.response.body", "body": b"bye"})

    async with open_server(app) as server:
        stream = await connect(server)
        client = H11Client(stream)
        reply = await client.request_response()
        assert reply.body == b"bye"
        assert await read_until_closed(stream) == b""


async def test_head_response_has_headers_but_no_body():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"twelve bytes"})

    async with open_server(app) as server:
        stream = await connect(server)
        await stream.send_all(
            b"HEAD / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        )
        data = await read_until_closed(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    assert b"content-length: 12" in head
    assert body == b""


def body_echo_app(log):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            log.append(message)
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200})
        for i in range(0, len(body), 3):
            await send(
                {
                    "type": "http.response.body",
                    "body": body[i : i + 3],
                    "more_body": True,
                }
            )
        await send({"type": "http.response.body", "body": b""})

    return app


async def test_chunked_request_and_chunked_response_bodies():
    log = []
    async with open_server(body_echo_app(log)) as server:
        stream = await connect(server)
        client = H11Client(stream)
        await client.send(
            h11.Request(
                method="POST",
                target="/",
                headers=[("host", "a"), ("transfer-encoding", "chunked")],
            )
        )
        await client.send(h11.Data(data=b"hello "))
        await trio.sleep(0.01)
        await client.send(h11.Data(data=b"world"))
        await client.send(h11.EndOfMessage())
        reply = await client.response()
        await stream.aclose()
    assert reply.body == b"hello world"
    assert reply.headers[b"transfer-encoding"] == b"chunked"
    assert all(m["type"] == "http.request" for m in log), log
    assert b"".join(m["body"] for m in log) == b"hello world"
    assert log[-1]["more_body"] is False
    assert all(m["more_body"] for m in log[:-1])


async def test_expect_100_continue_is_answered_only_when_the_app_reads(autojump_clock):
    may_read = trio.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await may_read.wait()
        message = await receive()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": message["body"]})

    async with (
        open_memory_server(app) as server,
        open_memory_connection(server) as stream,
    ):
        await stream.send_all(
            b"POST / HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n"
            b"content-length: 5\r\n\r\n"
        )
        with trio.move_on_after(10):
            early = await stream.receive_some()
            pytest.fail(f"server answered before the app read: {early!r}")
        may_read.set()
        interim = await stream.receive_some()
        assert interim.startswith(b"HTTP/1.1 100 ")
        await stream.send_all(b"hello")
        client = H11Client(stream)
        client.conn.send(
            h11.Request(
                method="POST",
                target="/",
                headers=[
                    ("host", "a"),
                    ("content-length", "5"),
                    ("expect", "100-continue"),
                ],
            )
        )
        client.conn.send(h11.Data(data=b"hello"))
        client.conn.send(h11.EndOfMessage())
        reply = await client.response()
    assert reply.body == b"hello"


async def test_expect_100_continue_without_reading_the_body_closes(autojump_clock):
    async with (
        open_memory_server(echo_path_app()) as server,
        open_memory_connection(server) as stream,
    ):
        await stream.send_all(
            b"POST /x HTTP/1.1\r\nhost: a\r\nexpect: 100-continue\r\n"
            b"content-length: 5\r\n\r\n"
        )
        data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 200 OK")
    assert b"100 Continue" not in data
    assert data.endswith(b"/x")


async def test_request_body_is_read_only_as_the_app_asks(autojump_clock):
    may_read = trio.Event()
    received = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await may_read.wait()
        while True:
            message = await receive()
            received.append(len(message["body"]))
            if not message["more_body"]:
                break
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"done"})

    total = 4 * 1024 * 1024
    sent = 0
    async with (
        open_memory_server(app) as server,
        open_memory_connection(server, lockstep=True) as stream,
    ):

        async def upload():
            nonlocal sent
            await stream.send_all(
                b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: %d\r\n\r\n" % total
            )
            piece = b"x" * 16384
            for _ in range(total // len(piece)):
                await stream.send_all(piece)
                sent += len(piece)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            await trio.sleep(30)
            # The app has not asked for the body: the server holds at most a
            # small bounded amount of it.
            assert sent <= 256 * 1024
            may_read.set()
        assert sent == total
        data = await read_until_closed_after_request(stream)
    assert sum(received) == total
    assert data.endswith(b"done")


async def read_until_closed_after_request(stream):
    client = H11Client(stream)
    client.conn.send(h11.Request(method="GET", target="/", headers=[("host", "a")]))
    client.conn.send(h11.EndOfMessage())
    reply = await client.response()
    return reply.body


async def test_send_returns_only_once_the_client_has_taken_the_data(autojump_clock):
    sent = trio.Event()
    size = 1024 * 1024

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"y" * size})
        sent.set()

    async with (
        open_memory_server(app) as server,
        open_memory_connection(server, lockstep=True) as stream,
    ):
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        first = await stream.receive_some(1000)
        await trio.sleep(30)
        assert not sent.is_set()
        client = H11Client(stream)
        client.conn.send(h11.Request(method="GET", target="/", headers=[("host", "a")]))
        client.conn.send(h11.EndOfMessage())
        client.conn.receive_data(first)
        reply = await client.response()
        await trio.testing.wait_all_tasks_blocked()
        assert sent.is_set()
    assert len(reply.body) == size


BAD_REQUESTS = [
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="not-http"),
    pytest.param(b"GET / HTTP/1.1\r\n\r\n", 400, id="missing-host"),
    pytest.param(b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\n\r\n", 400, id="two-hosts"),
    pytest.param(b"GET / HTTP/1.1\r\nhost : a\r\n\r\n", 400, id="space-before-colon"),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: +5\r\n\r\nhello",
        400,
        id="signed-content-length",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n"
        b"content-length: 6\r\n\r\nhello!",
        400,
        id="conflicting-content-length",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5, 6\r\n\r\nhello!",
        400,
        id="content-length-list",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip, chunked\r\n\r\n"
        b"0\r\n\r\n",
        501,
        id="unknown-transfer-coding",
    ),
    pytest.param(
        b"POST / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        id="http10-transfer-encoding",
    ),
    pytest.param(
        b"GET / HTTP/1.1\r\nhost: a\r\nx" + b"a" * 20000 + b": 1\r\n\r\n",
        431,
        id="head-too-large",
    ),
]


@pytest.mark.parametrize(("raw", "status"), BAD_REQUESTS)
async def test_malformed_request_gets_an_error_and_close(raw, status, caplog):
    calls = []
    async with open_server(capture_scope(calls)) as server:
        stream = await connect(server)
        with caplog.at_level(logging.DEBUG, logger="triasgi"):
            await stream.send_all(raw)
            data = await read_until_closed(stream)
            await stream.aclose()
        # The server still serves everyone else.
        other = H11Client(await connect(server))
        assert (await other.request_response()).status == 200
        await other.stream.aclose()
    assert data.startswith(b"HTTP/1.1 %d " % status)
    assert b"connection: close" in data.lower()
    assert len(calls) == 1  # only the well-formed request reached the app
    assert any(
        "request" in r.getMessage().lower()
        for r in caplog.records
        if r.levelno == logging.DEBUG
    )


SMUGGLING = [
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n",
        id="cl-te",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n"
        b"content-length: 50\r\n\r\n0\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n",
        id="te-cl",
    ),
    pytest.param(
        b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n"
        b"transfer-encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n",
        id="te-te",
    ),
]


@pytest.mark.parametrize("raw", SMUGGLING)
async def test_smuggled_second_request_is_never_answered(raw):
    scopes = []
    async with open_server(capture_scope(scopes)) as server:
        stream = await connect(server)
        await stream.send_all(raw)
        data = await read_until_closed(stream)
    assert data.count(b"HTTP/1.1") == 1
    assert data.split(b" ")[1] in (b"400", b"501")
    assert not any(s["path"] == "/smuggled" for s in scopes)


def failing_app(kind):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if kind == "raise-before-start":
            raise RuntimeError("boom")
        if kind == "return-without-response":
            return
        headers = [(b"content-length", b"10")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        if kind == "raise-after-start":
            await send(
                {"type": "http.response.body", "body": b"12345", "more_body": True}
            )
            raise RuntimeError("boom")
        if kind == "body-too-long":
            await send(
                {"type": "http.response.body", "body": b"12345", "more_body": True}
            )
            await send({"type": "http.response.body", "body": b"123456"})
        if kind == "body-too-short":
            await send(
                {"type": "http.response.body", "body": b"12345", "more_body": True}
            )
            await send({"type": "http.response.body", "body": b""})
        if kind == "one-body-too-long":
            await send({"type": "http.response.body", "body": b"12345678901"})
        if kind == "return-mid-body":
            await send(
                {"type": "http.response.body", "body": b"12345", "more_body": True}
            )

    return app


@pytest.mark.parametrize(
    "kind", ["raise-before-start", "return-without-response", "one-body-too-long"]
)
async def test_app_failure_before_the_response_gives_500(kind, caplog):
    async with open_server(failing_app(kind)) as server:
        stream = await connect(server)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert b"connection: close" in data
    assert any(
        r.levelno == logging.ERROR and r.name == "triasgi.error" for r in caplog.records
    )


@pytest.mark.parametrize(
    "kind", ["raise-after-start", "body-too-long", "body-too-short", "return-mid-body"]
)
async def test_app_failure_after_the_response_started_closes_the_connection(
    kind, caplog
):
    async with open_server(failing_app(kind)) as server:
        stream = await connect(server)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        data = await read_until_closed(stream)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK")
    assert b"content-length: 10" in head
    assert len(body) < 10  # the body was never completed
    assert any(r.levelno == logging.ERROR for r in caplog.records)


async def test_receive_after_the_response_returns_disconnect():
    messages = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})
        with trio.fail_after(5):
            messages.append(await receive())

    async with open_server(app) as server:
        client = H11Client(await connect(server))
        assert (await client.request_response()).status == 204
        await client.stream.aclose()
    assert messages == [{"type": "http.disconnect"}]


async def test_messages_after_the_response_are_ignored():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"one"})
        await send({"type": "http.response.body", "body": b"two"})

    async with open_server(app) as server:
        client = H11Client(await connect(server))
        assert (await client.request_response()).body == b"one"
        assert (await client.request_response()).body == b"one"
        await client.stream.aclose()


async def test_date_and_server_headers_by_default():
    async with open_server(echo_path_app()) as server:
        client = H11Client(await connect(server))
        reply = await client.request_response()
        await client.stream.aclose()
    assert reply.headers[b"server"] == b"triasgi"
    assert reply.headers[b"date"].endswith(b" GMT")


async def test_default_headers_can_be_turned_off_and_extended():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"x-own", b"1"), (b"x-team", b"app")],
            }
        )
        await send({"type": "http.response.body"})

    async with open_server(
        app,
        server_header=False,
        date_header=False,
        headers=["X-Team: infra", "X-Extra:  yes"],
    ) as server:
        client = H11Client(await connect(server))
        reply = await client.request_response()
        await client.stream.aclose()
    names = [name for name, _ in reply.header_list]
    assert b"server" not in names
    assert b"date" not in names
    assert reply.headers[b"x-extra"] == b"yes"
    assert [v for n, v in reply.header_list if n == b"x-team"] == [b"app"]


async def test_limit_concurrency_answers_503_beyond_the_limit():
    release = trio.Event()
    entered = trio.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    async with open_server(app, limit_concurrency=1) as server:
        first = H11Client(await connect(server))
        await first.request()
        await entered.wait()
        second = await connect(server)
        await second.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        data = await read_until_closed(second)
        assert data.startswith(b"HTTP/1.1 503 Service Unavailable")
        release.set()
        assert (await first.response()).status == 200
        await first.stream.aclose()


async def test_send_to_a_reset_connection_raises_client_disconnected():
    import socket
    import struct

    import triasgi

    outcome = []
    streaming = trio.Event()

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200})
        streaming.set()
        try:
            with trio.fail_after(10):
                while True:
                    await send(
                        {
                            "type": "http.response.body",
                            "body": b"x" * 65536,
                            "more_body": True,
                        }
                    )
        except OSError as exc:
            outcome.append(type(exc))

    async with open_server(app) as server:
        stream = await connect(server)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        await streaming.wait()
        # Close with a reset (SO_LINGER 0), as a crashed client would.
        stream.socket.setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
        await stream.aclose()
        with trio.fail_after(10):
            while not outcome:
                await trio.sleep(0.01)
    assert outcome == [triasgi.ClientDisconnected]


@pytest.mark.parametrize("chunks", [1, 3])
async def test_large_body_reaches_a_slow_reader_whole_and_in_order(chunks):
    # Larger than the socket buffers: the kernel takes part of the head and
    # body, and the rest follows as the client reads.
    body = bytes(range(256)) * (16 * 1024)  # 4 MiB
    parts = [body[i::chunks] for i in range(chunks)] if chunks > 1 else [body]

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        headers = [(b"content-length", b"%d" % sum(map(len, parts)))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, part in enumerate(parts):
            await send(
                {
                    "type": "http.response.body",
                    "body": part,
                    "more_body": i < len(parts) - 1,
                }
            )

    async with open_server(app) as server:
        client = H11Client(await connect(server))
        await client.request()
        await trio.sleep(0.2)  # let the server fill the socket buffers first
        reply = await client.response()
        await client.stream.aclose()
    assert reply.status == 200
    assert reply.body == b"".join(parts)


def test_write_leftovers_are_views_of_what_was_not_sent():
    from triasgi._serve._transport import views_after as _after

    parts = (b"head", b"0123456789", b"end")
    assert [bytes(v) for v in _after(parts, 0)] == [b"head", b"0123456789", b"end"]
    assert [bytes(v) for v in _after(parts, 6)] == [b"23456789", b"end"]
    assert [bytes(v) for v in _after(parts, 14)] == [b"end"]
    assert [bytes(v) for v in _after(parts, 17)] == []


async def test_half_a_head_then_eof_is_answered_with_400():
    # A client that shuts its sending side down in the middle of a head
    # learns that its request was incomplete.
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    async with open_server(app) as server:
        stream = await connect(server)
        client = H11Client(stream)
        assert (await client.request_response("GET", "/")).status == 204
        await stream.send_all(b"GET / HTTP/1.1\r\nhost")
        await stream.send_eof()
        data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 400 ")


async def test_pipelined_requests_sent_while_responses_are_written():
    # Requests keep arriving while earlier ones are answered, so a response
    # often ends in the same pass of the scheduler in which the next bytes
    # arrive: every request must still get its own answer, in order.
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": scope["path"].encode()})

    count = 400
    async with open_server(app) as server:
        stream = await connect(server)

        async def send_requests():
            for i in range(count):
                close = b"connection: close\r\n" if i == count - 1 else b""
                await stream.send_all(
                    b"GET /%d HTTP/1.1\r\nhost: a\r\n%s\r\n" % (i, close)
                )
                if i % 3 == 0:
                    await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_requests)
            data = await read_until_closed(stream)
    assert data.count(b"HTTP/1.1 200 OK") == count
    bodies = [
        part.rsplit(b"\r\n\r\n", 1)[-1] for part in data.split(b"HTTP/1.1 200 OK")[1:]
    ]
    assert bodies == [b"/%d" % i for i in range(count)]


@pytest.mark.parametrize(
    ("target", "host"),
    [
        (b"http://evil.test/x", b"evil.test"),
        (b"http://user:pw@evil.test:8080/x?y", b"evil.test:8080"),
        (b"https://evil.test?y=1", b"evil.test"),
    ],
)
async def test_absolute_form_target_authority_replaces_the_host_header(target, host):
    scopes = []
    async with open_server(capture_scope(scopes)) as server:
        stream = await connect(server)
        await stream.send_all(
            b"GET " + target + b" HTTP/1.1\r\nhost: good.test\r\nx-a: 1\r\n"
            b"connection: close\r\n\r\n"
        )
        await read_until_closed(stream)
    headers = scopes[0]["headers"]
    assert headers[0] == (b"host", host)
    assert [name for name, _ in headers].count(b"host") == 1
    assert (b"x-a", b"1") in headers
