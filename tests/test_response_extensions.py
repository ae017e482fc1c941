"""Response extensions on HTTP/1.1: trailers, early hints, 1xx responses, path send.

Exact bytes from a raw client on a real socket, h11 and httpx as clients,
Starlette's FileResponse, and curl where the system has it.
"""

from __future__ import annotations

import os
import shutil

import h11
import httpx
import pytest
import trio
from conftest import connect, read_until_closed

from triasgi.testing import open_memory_connection, open_memory_server, open_server

pytestmark = pytest.mark.usefixtures("http_backend")

EXTENSIONS = (
    "http.response.trailers",
    "http.response.early_hint",
    "http.response.pathsend",
)


def playing(*messages, log=None):
    """An app that sends ``messages`` in order; errors from send() go to ``log``."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        for message in messages:
            try:
                await send(message)
            except Exception as exc:
                if log is None:
                    raise
                log.append(exc)
                raise

    return app


def start(status=200, headers=(), **more):
    return {
        "type": "http.response.start",
        "status": status,
        "headers": list(headers),
        **more,
    }


def body(data=b"", more=False):
    return {"type": "http.response.body", "body": data, "more_body": more}


def trailers(headers, more=False):
    return {"type": "http.response.trailers", "headers": headers, "more_trailers": more}


async def exchange(server, request: bytes) -> bytes:
    """Send a raw request that closes the connection; everything that comes back."""
    stream = await connect(server)
    await stream.send_all(request)
    return await read_until_closed(stream)


def head_and_body(data: bytes) -> tuple[bytes, bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n", rest


GET_TE = b"GET / HTTP/1.1\r\nhost: x\r\nte: trailers\r\nconnection: close\r\n\r\n"
GET = b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"


# -- the scope -------------------------------------------------------------------


async def test_the_scope_advertises_the_response_extensions():
    scopes = []

    async def app(scope, receive, send):
        if scope["type"] == "http":
            scopes.append(scope)
        await playing(start(), body(b"ok"))(scope, receive, send)

    async with open_server(app) as server:
        await exchange(server, GET)
    for name in EXTENSIONS:
        assert scopes[0]["extensions"][name] == {}


# -- trailers ----------------------------------------------------------------------


async def test_trailers_follow_the_last_chunk_when_the_client_accepts_them():
    app = playing(
        start(headers=[(b"trailer", b"x-sum, x-two")], trailers=True),
        body(b"abc", more=True),
        body(b"de"),
        trailers([(b"x-sum", b"1")], more=True),
        trailers([(b"x-two", b"2")]),
    )
    async with open_server(app) as server:
        data = await exchange(server, GET_TE)
    head, rest = head_and_body(data)
    assert b"\r\ntransfer-encoding: chunked\r\n" in head
    assert rest == b"3\r\nabc\r\n2\r\nde\r\n0\r\nx-sum: 1\r\nx-two: 2\r\n\r\n"


async def test_an_h11_client_reads_the_trailers():
    app = playing(start(trailers=True), body(b"hi"), trailers([(b"x-sum", b"7")]))
    async with open_server(app) as server:
        stream = await connect(server)
        client = h11.Connection(h11.CLIENT)
        request = h11.Request(
            method="GET", target="/", headers=[("host", "x"), ("te", "trailers")]
        )
        await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
        events = []
        while not events or type(events[-1]) is not h11.EndOfMessage:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some(65536))
            else:
                events.append(event)
        await stream.aclose()
    assert events[0].status_code == 200
    assert b"".join(e.data for e in events if type(e) is h11.Data) == b"hi"
    assert list(events[-1].headers) == [(b"x-sum", b"7")]


async def test_trailers_are_dropped_without_te_trailers_and_the_connection_lives():
    app = playing(start(trailers=True), body(b"abc"), trailers([(b"x-sum", b"1")]))
    async with open_server(app) as server:
        stream = await connect(server)
        request = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
        replies = b""
        for _ in range(2):
            await stream.send_all(request)
            while replies.count(b"abc") < _ + 1:
                replies += await stream.receive_some(65536)
        await stream.aclose()
    assert replies.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert b"content-length: 3\r\n" in replies
    assert b"x-sum" not in replies


async def test_trailers_make_a_response_with_a_content_length_chunked():
    app = playing(
        start(headers=[(b"content-length", b"3")], trailers=True),
        body(b"abc"),
        trailers([(b"x-sum", b"1")]),
    )
    async with open_server(app) as server:
        data = await exchange(server, GET_TE)
    head, rest = head_and_body(data)
    assert b"content-length" not in head
    assert b"transfer-encoding: chunked\r\n" in head
    assert rest == b"3\r\nabc\r\n0\r\nx-sum: 1\r\n\r\n"


async def test_trailers_of_a_head_request_are_dropped():
    app = playing(start(trailers=True), body(b"abc"), trailers([(b"x-sum", b"1")]))
    async with open_server(app) as server:
        data = await exchange(server, GET_TE.replace(b"GET", b"HEAD"))
    head, rest = head_and_body(data)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest == b""


@pytest.mark.parametrize(
    "fields",
    [[(b":status", b"200")], [(b"content-length", b"3")], [(b"x-bad", b"a\r\nb: c")]],
    ids=["pseudo", "framing", "crlf"],
)
async def test_a_forbidden_trailer_ends_the_connection_without_the_last_chunk(
    fields, caplog
):
    app = playing(
        start(trailers=True), body(b"abc", more=True), body(), trailers(fields)
    )
    async with open_server(app) as server:
        data = await exchange(server, GET_TE)
    head, rest = head_and_body(data)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest == b"3\r\nabc\r\n"  # no 0-size chunk: the client sees the cut
    assert "Exception in ASGI application" in caplog.text


async def test_trailers_without_announcing_them_are_an_asgi_error():
    app = playing(start(), body(b"a", more=True), trailers([(b"x-sum", b"1")]))
    async with open_server(app) as server:
        data = await exchange(server, GET_TE)
    _, rest = head_and_body(data)
    assert rest == b"1\r\na\r\n"


async def test_trailers_before_anything_was_written_give_a_500():
    app = playing(start(), trailers([(b"x-sum", b"1")]))
    async with open_server(app) as server:
        data = await exchange(server, GET_TE)
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


async def test_an_app_that_never_sends_its_trailers_gets_the_connection_closed(caplog):
    app = playing(start(trailers=True), body(b"abc"))
    async with open_server(app) as server:
        data = await exchange(server, GET_TE)
    _, rest = head_and_body(data)
    assert rest == b"3\r\nabc\r\n"
    assert "returned without completing the response" in caplog.text


# -- early hints and other 1xx responses -------------------------------------------

HINT = {"type": "http.response.early_hint", "links": [b"</a.css>; rel=preload"]}


async def test_early_hints_before_the_start_come_before_the_response():
    hints = {
        "type": "http.response.early_hint",
        "links": [b"</a.css>; rel=preload; as=style", b"</b.js>; rel=preload"],
    }
    app = playing(hints, start(), body(b"ok"))
    async with open_server(app) as server:
        data = await exchange(server, GET)
    assert data.startswith(
        b"HTTP/1.1 103 Early Hints\r\n"
        b"link: </a.css>; rel=preload; as=style\r\n"
        b"link: </b.js>; rel=preload\r\n"
        b"\r\n"
        b"HTTP/1.1 200 OK\r\n"
    )
    assert data.endswith(b"\r\n\r\nok")


async def test_early_hints_after_the_start_and_before_the_body_are_sent():
    app = playing(start(), HINT, HINT, body(b"ok"))
    async with open_server(app) as server:
        data = await exchange(server, GET)
    assert data.count(b"HTTP/1.1 103 Early Hints\r\n") == 2
    assert data.index(b"103") < data.index(b"HTTP/1.1 200 OK")


async def test_early_hints_after_the_body_started_are_an_asgi_error(caplog):
    log = []
    app = playing(start(), body(b"a", more=True), HINT, body(b"b"), log=log)
    async with open_server(app) as server:
        data = await exchange(server, GET)
    assert b"103" not in data
    assert "Expected http.response.body" in str(log[0])


async def test_an_http10_client_gets_no_interim_response():
    app = playing(
        HINT,
        {"type": "http.response.informational", "status": 102},
        start(),
        body(b"ok"),
    )
    async with open_server(app) as server:
        data = await exchange(server, b"GET / HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_an_h11_client_sees_the_informational_response_and_then_the_final_one():
    info = {
        "type": "http.response.informational",
        "status": 102,
        "headers": [(b"x-progress", b"half")],
    }
    app = playing(info, start(201), body(b"made"))
    async with open_server(app) as server:
        stream = await connect(server)
        client = h11.Connection(h11.CLIENT)
        request = h11.Request(method="GET", target="/", headers=[("host", "x")])
        await stream.send_all(client.send(request) + client.send(h11.EndOfMessage()))
        events = []
        while not events or type(events[-1]) is not h11.EndOfMessage:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive_some(65536))
            else:
                events.append(event)
        await stream.aclose()
    assert type(events[0]) is h11.InformationalResponse
    assert events[0].status_code == 102
    assert (b"x-progress", b"half") in list(events[0].headers)
    assert events[1].status_code == 201


@pytest.mark.parametrize("status", [101, 200, 99, "103"])
async def test_an_informational_response_that_is_not_1xx_is_an_asgi_error(
    status, caplog
):
    app = playing(
        {"type": "http.response.informational", "status": status}, start(), body(b"ok")
    )
    async with open_server(app) as server:
        data = await exchange(server, GET)
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert "http.response.informational needs" in caplog.text


@pytest.mark.parametrize("links", [None, b"</a>", ["</a>"]])
async def test_malformed_early_hint_links_are_an_asgi_error(links):
    app = playing(
        {"type": "http.response.early_hint", "links": links}, start(), body(b"ok")
    )
    async with open_server(app) as server:
        data = await exchange(server, GET)
    assert data.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_shows_the_early_hints_before_the_response():
    app = playing(HINT, start(), body(b"ok"))
    async with open_server(app) as server:
        host, port = server.addresses[0]
        result = await trio.run_process(
            ["curl", "-s", "-i", f"http://{host}:{port}/"], capture_stdout=True
        )
    out = result.stdout
    assert out.startswith(
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n"
    )
    assert b"HTTP/1.1 200 OK\r\n" in out
    assert out.endswith(b"ok")


# -- path send ---------------------------------------------------------------------


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "big.bin"
    data = os.urandom(3 * 1024 * 1024 + 7)
    path.write_bytes(data)
    return str(path), data


def path_send(path, headers=()):
    return playing(
        start(headers=headers), {"type": "http.response.pathsend", "path": path}
    )


async def test_path_send_sends_the_file_on_a_socket(big_file):
    path, data = big_file
    app = path_send(path, [(b"content-type", b"application/octet-stream")])
    async with open_server(app) as server, httpx.AsyncClient() as client:
        host, port = server.addresses[0]
        for _ in range(2):  # the connection is kept alive between them
            response = await client.get(f"http://{host}:{port}/")
            assert response.status_code == 200
            assert response.headers["content-length"] == str(len(data))
            assert response.content == data


async def test_path_send_over_an_in_memory_stream_reads_the_file(big_file):
    path, data = big_file
    async with open_memory_server(path_send(path)) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(GET)
            reply = await read_until_closed(stream)
    head, rest = head_and_body(reply)
    assert b"content-length: %d\r\n" % len(data) in head
    assert rest == data


async def test_path_send_keeps_the_declared_length_and_refuses_a_wrong_one(big_file):
    path, data = big_file
    good = path_send(path, [(b"content-length", b"%d" % len(data))])
    wrong = path_send(path, [(b"content-length", b"10")])
    async with open_server(good) as server:
        reply = await exchange(server, GET)
    assert head_and_body(reply)[1] == data
    async with open_server(wrong) as server:
        reply = await exchange(server, GET)
    assert reply.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


async def test_path_send_answers_head_with_the_length_and_no_body(big_file):
    path, data = big_file
    async with open_server(path_send(path)) as server:
        reply = await exchange(server, GET.replace(b"GET", b"HEAD"))
    head, rest = head_and_body(reply)
    assert b"content-length: %d\r\n" % len(data) in head
    assert rest == b""


async def test_path_send_of_a_missing_file_gives_a_500_and_a_log_line(tmp_path, caplog):
    missing = str(tmp_path / "nope.txt")
    async with open_server(path_send(missing)) as server:
        reply = await exchange(server, GET)
    assert reply.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert "http.response.pathsend cannot open" in caplog.text
    assert "nope.txt" in caplog.text


async def test_path_send_after_a_body_is_an_asgi_error(big_file):
    path, _ = big_file
    log = []
    app = playing(
        start(),
        body(b"a", more=True),
        {"type": "http.response.pathsend", "path": path},
        log=log,
    )
    async with open_server(app) as server:
        await exchange(server, GET)
    assert "Expected http.response.body" in str(log[0])


async def test_path_send_with_trailers(tmp_path):
    path = tmp_path / "small.txt"
    path.write_bytes(b"hello")
    app = playing(
        start(trailers=True),
        {"type": "http.response.pathsend", "path": str(path)},
        trailers([(b"x-sum", b"5")]),
    )
    async with open_server(app) as server:
        data = await exchange(server, GET_TE)
    assert head_and_body(data)[1] == b"5\r\nhello\r\n0\r\nx-sum: 5\r\n\r\n"


async def test_starlette_file_response_uses_path_send(big_file):
    from starlette.responses import FileResponse

    path, data = big_file
    sent = []

    async def app(scope, receive, send):
        async def recording_send(message):
            sent.append(message["type"])
            await send(message)

        await FileResponse(path)(scope, receive, recording_send)

    async with open_server(app) as server, httpx.AsyncClient() as client:
        host, port = server.addresses[0]
        response = await client.get(f"http://{host}:{port}/")
    assert response.content == data
    assert sent == ["http.response.start", "http.response.pathsend"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_downloads_a_path_send_whole(big_file, tmp_path):
    path, data = big_file
    out = tmp_path / "out.bin"
    async with open_server(path_send(path)) as server:
        host, port = server.addresses[0]
        await trio.run_process(["curl", "-s", "-o", str(out), f"http://{host}:{port}/"])
    assert out.read_bytes() == data
