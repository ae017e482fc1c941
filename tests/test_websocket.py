"""WebSocket behaviour as clients see it: trio-websocket, websockets, raw bytes.

Timed behaviour (pings, grace periods, backpressure) runs on in-memory
streams so that ``autojump_clock`` makes it instant.
"""

from __future__ import annotations

import logging
from collections import deque
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing
import trio_websocket
from conftest import connect, read_until_closed
from websockets.trio.client import connect as websockets_connect
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.extensions import PerMessageDeflate
from wsproto.frame_protocol import CloseReason

from triasgi._asgi._messages import WebSocketState, next_websocket_state
from triasgi._errors import ASGIProtocolError
from triasgi._serve._websocket import WriteLock
from triasgi.testing import open_memory_connection, open_memory_server, open_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")

HANDSHAKE = (
    b"GET /chat HTTP/1.1\r\nhost: example.test\r\nupgrade: websocket\r\n"
    b"connection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"sec-websocket-version: 13\r\n"
)


def ws_url(server, path="/"):
    host, port = server.addresses[0]
    return f"ws://{host}:{port}{path}"


@asynccontextmanager
async def open_trio_websocket(server, path="/", **kwargs):
    """A trio-websocket client on a socket of our own.

    trio-websocket leaves its socket open when the server closes first, so
    the stream is closed here (and conftest closes it should this fail).
    """
    stream = await connect(server)
    async with trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(
            nursery, stream, "example.test", path, **kwargs
        )
        try:
            yield ws
        finally:
            with trio.move_on_after(5):
                await ws.aclose()
            await stream.aclose()


def open_websockets(server, path="/", **kwargs):
    kwargs.setdefault("proxy", None)
    kwargs.setdefault("ping_interval", None)
    return websockets_connect(ws_url(server, path), **kwargs)


class RawClient:
    """A wsproto client on any stream: exact frames, and no automatic pongs."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.pending: deque[object] = deque()

    async def handshake(self, target="/", **kwargs):
        await self.send(Request(host="example.test", target=target, **kwargs))
        return await self.next_event()

    async def send(self, event):
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self):
        while not self.pending:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)
            self.pending.extend(self.ws.events())
        return self.pending.popleft()

    async def close_code(self):
        """Skip data frames until the server's close frame; its code."""
        while True:
            event = await self.next_event()
            if isinstance(event, CloseConnection):
                return event.code


def parse_status(data: bytes) -> int:
    return int(data.split(b" ", 2)[1])


def echo_app(log=None):
    """Accept, echo every message, record the disconnect in ``log``."""

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                if log is not None:
                    log.append(message)
                return
            await send(
                {
                    "type": "websocket.send",
                    "text": message.get("text"),
                    "bytes": message.get("bytes"),
                }
            )

    return app


# -- the scope and the handshake --------------------------------------------


async def test_scope_has_every_key_of_the_spec():
    scopes = []

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        scopes.append(scope)
        await receive()
        await send({"type": "websocket.accept", "subprotocol": "chat.v2"})
        await send({"type": "websocket.close"})

    async with open_server(app, root_path="/mount") as server:
        async with open_trio_websocket(
            server,
            "/caf%C3%A9/room?x=1&y=%20",
            subprotocols=["chat.v1", "chat.v2"],
            extra_headers=[(b"x-trace", b"7")],
        ) as ws:
            assert ws.subprotocol == "chat.v2"
            with pytest.raises(trio_websocket.ConnectionClosed):
                await ws.get_message()
    (scope,) = scopes
    host, port = server.addresses[0]
    assert scope["type"] == "websocket"
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.5"}
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "ws"
    assert scope["path"] == "/mount/café/room"
    assert scope["raw_path"] == b"/mount/caf%C3%A9/room"
    assert scope["query_string"] == b"x=1&y=%20"
    assert scope["root_path"] == "/mount"
    assert (b"x-trace", b"7") in scope["headers"]
    assert (b"upgrade", b"websocket") in scope["headers"]
    assert scope["client"][0] == "127.0.0.1"
    assert scope["server"] == (host, port)
    assert scope["subprotocols"] == ["chat.v1", "chat.v2"]
    assert scope["state"] == {}
    assert scope["extensions"] == {"websocket.http.response": {}}


async def test_proxy_headers_from_a_trusted_proxy_apply_to_the_scope():
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        await send({"type": "websocket.close"})

    async with open_server(app, lifespan="off") as server:
        stream = await connect(server)
        await stream.send_all(
            HANDSHAKE + b"x-forwarded-for: 203.0.113.9\r\n"
            b"x-forwarded-proto: https\r\n\r\n"
        )
        reply = await read_until_closed(stream)
    assert parse_status(reply) == 403
    assert scopes[0]["client"][0] == "203.0.113.9"
    assert scopes[0]["scheme"] == "wss"


async def test_wss_over_tls_has_the_wss_scheme_and_the_tls_extension(tmp_path):
    import ssl

    import trustme

    ca = trustme.CA()
    certfile = tmp_path / "cert.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(
        str(certfile)
    )
    context = ssl.create_default_context()
    ca.configure_trust(context)
    scopes = []

    async def app(scope, receive, send):
        scopes.append(scope)
        await echo_app()(scope, receive, send)

    async with open_server(app, lifespan="off", ssl_certfile=str(certfile)) as server:
        host, port = server.addresses[0]
        async with websockets_connect(
            f"wss://{host}:{port}/", ssl=context, proxy=None, ping_interval=None
        ) as ws:
            await ws.send("secret")
            assert await ws.recv() == "secret"
    assert scopes[0]["scheme"] == "wss"
    assert "tls" in scopes[0]["extensions"]
    assert "websocket.http.response" in scopes[0]["extensions"]


async def test_accept_headers_and_subprotocol_reach_the_client():
    async def app(scope, receive, send):
        await receive()
        await send(
            {
                "type": "websocket.accept",
                "subprotocol": "b",
                "headers": [(b"x-room", b"42")],
            }
        )
        await send({"type": "websocket.close"})

    async with open_server(app) as server:
        async with open_websockets(server, subprotocols=["a", "b"]) as ws:
            assert ws.subprotocol == "b"
            assert ws.response.headers["x-room"] == "42"
            assert ws.response.headers["sec-websocket-protocol"] == "b"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        pytest.param(
            HANDSHAKE.replace(b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""),
            400,
            id="no-key",
        ),
        pytest.param(
            HANDSHAKE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ="),
            400,
            id="key-not-16-bytes",
        ),
        pytest.param(
            HANDSHAKE.replace(b"sec-websocket-version: 13\r\n", b""),
            400,
            id="no-version",
        ),
        pytest.param(
            HANDSHAKE.replace(b"connection: Upgrade", b"connection: keep-alive"),
            400,
            id="no-connection-upgrade",
        ),
        pytest.param(
            HANDSHAKE.replace(b"GET", b"POST") + b"content-length: 0\r\n",
            400,
            id="post",
        ),
        pytest.param(HANDSHAKE + b"content-length: 3\r\n\r\nabc", 400, id="with-body"),
        pytest.param(
            HANDSHAKE.replace(b"version: 13", b"version: 8"), 426, id="wrong-version"
        ),
    ],
)
async def test_invalid_handshake_is_refused_without_calling_the_app(
    request_bytes, status
):
    called = []

    async def app(scope, receive, send):
        called.append(scope["type"])

    async with open_server(app, lifespan="off") as server:
        stream = await connect(server)
        await stream.send_all(
            request_bytes + (b"" if b"abc" in request_bytes else b"\r\n")
        )
        reply = await read_until_closed(stream)
    assert parse_status(reply) == status
    if status == 426:
        assert b"sec-websocket-version: 13\r\n" in reply
    assert called == []


async def test_handshake_after_http_requests_on_a_keep_alive_connection():
    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"plain"})
            return
        await echo_app()(scope, receive, send)

    async with open_server(app, lifespan="off") as server:
        stream = await connect(server)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: example.test\r\n\r\n")
        data = b""
        while not data.endswith(b"plain"):
            data += await stream.receive_some(65536)
        # The handshake, with a masked text frame right behind it.
        await stream.send_all(HANDSHAKE + b"\r\n" + b"\x81\x82\x00\x00\x00\x00hi")
        data = b""
        while not data.endswith(b"\x81\x02hi"):
            data += await stream.receive_some(65536)
        await stream.aclose()
    assert data.startswith(b"HTTP/1.1 101 ")
    assert b"sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n" in data


async def test_close_before_accept_is_answered_with_403():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.close", "code": 4001})

    async with open_server(app, lifespan="off") as server:
        stream = await connect(server)
        await stream.send_all(HANDSHAKE + b"\r\n")
        reply = await read_until_closed(stream)
        client = RawClient(await connect(server))
        reject = await client.handshake()
    assert parse_status(reply) == 403
    assert isinstance(reject, RejectConnection)
    assert reject.status_code == 403


async def test_denial_response_streams_any_status_and_body():
    async def app(scope, receive, send):
        assert "websocket.http.response" in scope["extensions"]
        await receive()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"www-authenticate", b"Bearer")],
            }
        )
        await send(
            {"type": "websocket.http.response.body", "body": b"log ", "more_body": True}
        )
        await send({"type": "websocket.http.response.body", "body": b"in first"})

    async with open_server(app, lifespan="off") as server:
        client = RawClient(await connect(server))
        reject = await client.handshake()
        body = b""
        while True:
            event = await client.next_event()
            assert isinstance(event, RejectData)
            body += event.data
            if event.body_finished:
                break
    assert isinstance(reject, RejectConnection)
    assert reject.status_code == 401
    assert (b"www-authenticate", b"Bearer") in reject.headers
    assert body == b"log in first"


async def test_denial_response_in_one_body_gets_a_content_length():
    async def app(scope, receive, send):
        await send({"type": "websocket.http.response.start", "status": 404})
        await send({"type": "websocket.http.response.body", "body": b"no room"})

    async with open_server(app, lifespan="off") as server:
        stream = await connect(server)
        await stream.send_all(HANDSHAKE + b"\r\n")
        reply = await read_until_closed(stream)
    assert parse_status(reply) == 404
    assert b"content-length: 7\r\n" in reply
    assert reply.endswith(b"\r\n\r\nno room")


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param(
            [
                {"type": "websocket.http.response.start", "status": 400},
                {"type": "websocket.http.response.start", "status": 401},
            ],
            id="second-start",
        ),
        pytest.param(
            [{"type": "websocket.http.response.start", "status": 101}], id="status-101"
        ),
        pytest.param(
            [{"type": "websocket.http.response.start", "status": "403"}],
            id="status-not-int",
        ),
        pytest.param(
            [{"type": "websocket.send", "text": "too early"}], id="send-before-accept"
        ),
        pytest.param(
            [{"type": "websocket.accept", "subprotocol": "not-offered"}],
            id="subprotocol-not-offered",
        ),
        pytest.param([], id="returns-without-answering"),
        pytest.param(
            [
                {
                    "type": "websocket.http.response.start",
                    "status": 401,
                    "headers": [(b"bad name", b"x")],
                },
                {"type": "websocket.http.response.body", "body": b"no"},
            ],
            id="header-h11-refuses",
        ),
    ],
)
async def test_app_error_before_accept_gives_500(messages, caplog):
    async def app(scope, receive, send):
        await receive()
        for message in messages:
            await send(message)

    async with open_server(app, lifespan="off") as server:
        stream = await connect(server)
        await stream.send_all(HANDSHAKE + b"\r\n")
        reply = await read_until_closed(stream)
    assert parse_status(reply) == 500
    assert any(r.levelno == logging.ERROR for r in caplog.records)


async def test_limit_concurrency_answers_503_to_a_handshake():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await receive()

    async with open_server(app, lifespan="off", limit_concurrency=1) as server:
        async with open_trio_websocket(server):
            stream = await connect(server)
            await stream.send_all(HANDSHAKE + b"\r\n")
            reply = await read_until_closed(stream)
    assert parse_status(reply) == 503


async def test_handshakes_are_in_the_access_log(caplog):
    async def app(scope, receive, send):
        await receive()
        if scope["path"] == "/no":
            await send({"type": "websocket.close"})
        else:
            await send({"type": "websocket.accept"})

    caplog.set_level(logging.INFO, logger="triasgi.access")
    async with open_server(app, lifespan="off", access_log=True) as server:
        for path in ("/yes", "/no"):
            client = RawClient(await connect(server))
            await client.handshake(path)
            await client.stream.aclose()
    lines = [r.getMessage() for r in caplog.records if r.name == "triasgi.access"]
    assert any('"GET /yes HTTP/1.1" 101 0 ' in line for line in lines), lines
    assert any('"GET /no HTTP/1.1" 403 10 ' in line for line in lines), lines


# -- messages ------------------------------------------------------------------


async def test_text_and_binary_messages_echo_with_trio_websocket():
    async with open_server(echo_app()) as server:
        async with open_trio_websocket(server) as ws:
            await ws.send_message("héllo")
            assert await ws.get_message() == "héllo"
            await ws.send_message(b"\x00\xff")
            assert await ws.get_message() == b"\x00\xff"
            await ws.send_message("")
            assert await ws.get_message() == ""


@pytest.mark.parametrize("deflate", [True, False])
async def test_websockets_client_echo_and_deflate_negotiation(deflate):
    payload = "abc" * 10000
    async with open_server(echo_app(), ws_per_message_deflate=deflate) as server:
        async with open_websockets(server) as ws:
            offered = ws.response.headers.get("sec-websocket-extensions")
            await ws.send(payload)
            assert await ws.recv() == payload
            await ws.send(payload.encode())
            assert await ws.recv() == payload.encode()
    if deflate:
        assert offered is not None
        assert offered.startswith("permessage-deflate")
    else:
        assert offered is None


async def test_fragmented_message_is_delivered_whole():
    received = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        for _ in range(2):
            received.append(await receive())
        await send({"type": "websocket.close"})

    async with open_server(app) as server:
        client = RawClient(await connect(server))
        assert isinstance(await client.handshake(), AcceptConnection)
        await client.send(TextMessage(data="frag", message_finished=False))
        # A ping between fragments is allowed (RFC 6455 section 5.4).
        await client.send(Ping(payload=b"mid"))
        await client.send(TextMessage(data="mé", message_finished=False))
        await client.send(TextMessage(data="nted", message_finished=True))
        await client.send(BytesMessage(data=b"a", message_finished=False))
        await client.send(BytesMessage(data=b"b", message_finished=True))
        pong = await client.next_event()
        assert await client.close_code() == 1000
        await client.stream.aclose()
    assert pong.payload == b"mid"
    assert received == [
        {"type": "websocket.receive", "text": "fragménted"},
        {"type": "websocket.receive", "bytes": b"ab"},
    ]


async def test_message_over_max_size_across_fragments_closes_with_1009():
    log = []
    async with open_server(echo_app(log), ws_max_size=1000) as server:
        client = RawClient(await connect(server))
        assert isinstance(await client.handshake(), AcceptConnection)
        await client.send(BytesMessage(data=b"x" * 1000, message_finished=True))
        assert (await client.next_event()).data == b"x" * 1000
        for _ in range(2):
            await client.send(BytesMessage(data=b"x" * 600, message_finished=False))
        code = await client.close_code()
        await client.send(CloseConnection(code=code))
        await client.stream.aclose()
    assert code == 1009
    assert log[0]["code"] == 1009


@pytest.mark.parametrize(
    "header",
    [
        # Masked binary frames: FIN, opcode 2; a 64-bit length of 2**62, and
        # a 16-bit length of 1001; then the masking key.  No payload follows.
        b"\x82\xff" + (2**62).to_bytes(8, "big") + b"mask",
        b"\x82\xfe" + (1001).to_bytes(2, "big") + b"mask",
        # A text message whose second fragment takes it over the limit.
        b"\x01\x83mask"
        + bytes(c ^ m for c, m in zip(b"abc", b"mask", strict=False))
        + b"\x80\xfe"
        + (998).to_bytes(2, "big")
        + b"mask",
    ],
)
async def test_frame_header_declaring_more_than_max_size_closes_with_1009_at_once(
    header,
):
    log = []
    async with open_server(echo_app(log), ws_max_size=1000) as server:
        client = RawClient(await connect(server))
        assert isinstance(await client.handshake(), AcceptConnection)
        await client.stream.send_all(header)
        # Nothing of the payload has been sent: the header alone must do.
        with trio.fail_after(2):
            code = await client.close_code()
        await client.stream.aclose()
    assert code == 1009
    assert log[0]["code"] == 1009


async def test_message_over_max_size_from_trio_websocket_closes_with_1009():
    async with open_server(echo_app(), ws_max_size=100) as server:
        async with open_trio_websocket(server) as ws:
            await ws.send_message("y" * 101)
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
    assert info.value.reason.code == 1009


async def test_compressed_message_is_limited_by_its_decompressed_size():
    log = []
    async with open_server(echo_app(log), ws_max_size=1_000_000) as server:
        async with open_websockets(server, max_size=None) as ws:
            assert ws.response.headers["sec-websocket-extensions"].startswith(
                "permessage-deflate"
            )
            await ws.send("0" * 900_000)  # a few KiB on the wire
            assert len(await ws.recv()) == 900_000
            await ws.send("0" * 5_000_000)
            await ws.wait_closed()
    assert ws.close_code == 1009
    assert log[0]["code"] == 1009


async def test_invalid_utf8_from_client_closes_with_1007():
    async with open_server(echo_app()) as server:
        stream = await connect(server)
        client = RawClient(stream)
        assert isinstance(await client.handshake(), AcceptConnection)
        # A masked text frame (mask 0) whose payload is not UTF-8.
        await stream.send_all(b"\x81\x82\x00\x00\x00\x00\xc3\x28")
        assert await client.close_code() == 1007
        await client.stream.aclose()


async def test_unmasked_frame_from_client_closes_with_1002():
    log = []
    async with open_server(echo_app(log)) as server:
        stream = await connect(server)
        client = RawClient(stream)
        assert isinstance(await client.handshake(), AcceptConnection)
        # RFC 6455 section 5.1: a client must mask every frame.
        await stream.send_all(b"\x81\x02hi")
        assert await client.close_code() == 1002
        await client.stream.aclose()
    assert log[0]["code"] == 1002


async def test_starlette_denial_response_reaches_the_client():
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import WebSocketRoute

    async def endpoint(websocket):
        await websocket.send_denial_response(
            PlainTextResponse("members only", status_code=401)
        )

    app = Starlette(routes=[WebSocketRoute("/", endpoint)])
    async with open_server(app) as server:
        stream = await connect(server)
        await stream.send_all(HANDSHAKE.replace(b"/chat", b"/") + b"\r\n")
        reply = await read_until_closed(stream)
    assert reply.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert reply.endswith(b"members only")


# -- closing -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "code", "reason"),
    [
        ({"type": "websocket.close"}, 1000, ""),
        ({"type": "websocket.close", "code": 1001}, 1001, ""),
        (
            {"type": "websocket.close", "code": 4000, "reason": "bye now"},
            4000,
            "bye now",
        ),
        (
            {"type": "websocket.close", "code": 3000, "reason": "ü" * 100},
            3000,
            "ü" * 61,
        ),
    ],
)
async def test_app_close_code_and_reason_reach_the_client(message, code, reason):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send(message)

    async with open_server(app) as server:
        async with open_trio_websocket(server) as ws:
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
        async with open_websockets(server) as ws2:
            await ws2.wait_closed()
    assert info.value.reason.code == code
    assert (info.value.reason.reason or "") == reason
    assert ws2.close_code == code
    assert ws2.close_reason == reason


@pytest.mark.parametrize(
    ("code", "reason"), [(1000, ""), (1001, "tab closed"), (4321, "custom")]
)
async def test_client_close_code_and_reason_reach_the_app(code, reason):
    log = []
    async with open_server(echo_app(log)) as server:
        async with open_trio_websocket(server) as ws:
            await ws.aclose(code, reason)
        async with open_websockets(server) as ws2:
            await ws2.aclose(code, reason)
    assert log == [{"type": "websocket.disconnect", "code": code, "reason": reason}] * 2
    assert type(log[0]["code"]) is int


async def test_close_frame_without_a_code_is_reported_as_1005():
    log = []
    async with open_server(echo_app(log)) as server:
        client = RawClient(await connect(server))
        assert isinstance(await client.handshake(), AcceptConnection)
        await client.send(CloseConnection(code=CloseReason.NO_STATUS_RCVD))  # no code
        reply = await client.next_event()
        assert await client.stream.receive_some(10) == b""
        await client.stream.aclose()
    assert reply.code == 1005  # echoed back as an empty close frame too
    assert log == [{"type": "websocket.disconnect", "code": 1005, "reason": ""}]


async def test_dropped_connection_is_reported_as_1006():
    log = []
    async with open_server(echo_app(log)) as server:
        stream = await connect(server)
        client = RawClient(stream)
        assert isinstance(await client.handshake(), AcceptConnection)
        await client.send(TextMessage(data="last words"))
        assert (await client.next_event()).data == "last words"
        await stream.aclose()
    assert log == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


async def test_messages_sent_before_a_close_reach_the_app_before_the_disconnect():
    log = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            log.append(await receive())
            if log[-1]["type"] == "websocket.disconnect":
                return

    async with open_server(app) as server:
        client = RawClient(await connect(server))
        assert isinstance(await client.handshake(), AcceptConnection)
        # Both messages and the close frame in one write.
        await client.stream.send_all(
            client.ws.send(TextMessage(data="one"))
            + client.ws.send(BytesMessage(data=b"two"))
            + client.ws.send(CloseConnection(code=1000, reason="done"))
        )
        assert (await client.next_event()).code == 1000
        await client.stream.aclose()
    assert log == [
        {"type": "websocket.receive", "text": "one"},
        {"type": "websocket.receive", "bytes": b"two"},
        {"type": "websocket.disconnect", "code": 1000, "reason": "done"},
    ]


async def test_send_after_the_client_closed_raises_oserror():
    errors = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        assert (await receive())["type"] == "websocket.disconnect"
        for message in (
            {"type": "websocket.send", "text": "late"},
            {"type": "websocket.close"},
        ):
            try:
                await send(message)
            except OSError as exc:
                errors.append(exc)

    async with open_server(app) as server:
        async with open_trio_websocket(server) as ws:
            await ws.aclose()
    assert len(errors) == 2


async def test_app_exception_after_accept_closes_with_1011(caplog):
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await receive()
        raise RuntimeError("boom")

    async with open_server(app) as server:
        async with open_trio_websocket(server) as ws:
            await ws.send_message("go")
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
    assert info.value.reason.code == 1011
    assert "boom" in caplog.text


async def test_bad_message_after_accept_closes_with_1011():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "ok", "bytes": b"both"})

    async with open_server(app) as server:
        async with open_trio_websocket(server) as ws:
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
    assert info.value.reason.code == 1011


async def test_app_returning_without_close_sends_a_normal_close():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "only this"})

    async with open_server(app) as server:
        client = RawClient(await connect(server))
        assert isinstance(await client.handshake(), AcceptConnection)
        assert (await client.next_event()).data == "only this"
        close = await client.next_event()
        await client.send(close.response())
        assert await client.stream.receive_some(10) == b""
        await client.stream.aclose()
    assert isinstance(close, CloseConnection)
    assert close.code == 1000


# -- keepalive, backpressure, grace and shutdown (in memory, instant time) ----


async def test_missing_pong_closes_with_1011_and_app_gets_disconnect(autojump_clock):
    log = []
    async with open_memory_server(
        echo_app(log), ws_ping_interval=5, ws_ping_timeout=2
    ) as server:
        async with open_memory_connection(server) as stream:
            client = RawClient(stream)
            assert isinstance(await client.handshake(), AcceptConnection)
            start = trio.current_time()
            ping = await client.next_event()  # and never answered
            assert isinstance(ping, Ping)
            assert trio.current_time() - start == pytest.approx(5)
            assert await client.close_code() == 1011
            assert trio.current_time() - start == pytest.approx(7)
    assert log == [
        {
            "type": "websocket.disconnect",
            "code": 1011,
            "reason": "keepalive ping timeout",
        }
    ]


async def test_client_answering_pings_stays_connected(autojump_clock):
    async with open_memory_server(
        echo_app(), ws_ping_interval=5, ws_ping_timeout=2
    ) as server:
        async with (
            open_memory_connection(server) as stream,
            trio.open_nursery() as nursery,
        ):
            ws = await trio_websocket.wrap_client_stream(
                nursery, stream, "example.test", "/"
            )
            await trio.sleep(60)
            await ws.send_message("still here")
            assert await ws.get_message() == "still here"
            await ws.aclose()


async def test_server_stops_reading_while_the_app_does_not_receive(autojump_clock):
    release = trio.Event()
    received = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        await release.wait()
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            received.append(message["bytes"])

    async with open_memory_server(app, ws_max_queue=4, ws_ping_interval=0) as server:
        async with open_memory_connection(server, lockstep=True) as stream:
            client = RawClient(stream)
            assert isinstance(await client.handshake(), AcceptConnection)
            sent = 0

            async def sender():
                nonlocal sent
                for i in range(60):
                    await client.send(BytesMessage(data=i.to_bytes(4, "big") * 1024))
                    sent += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender)
                await trio.sleep(30)
                stalled_at = sent
                release.set()
            await client.send(CloseConnection(code=1000))
            assert await client.close_code() == 1000
    # 4 KiB messages: the queue (4) and the connection's read buffer
    # (64 KiB) hold about 20; nothing is read beyond that.
    assert 4 < stalled_at < 40
    assert len(received) == 60
    assert [m[:4] for m in received] == [i.to_bytes(4, "big") for i in range(60)]


async def test_app_send_waits_for_a_client_that_does_not_read(autojump_clock):
    progress = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        for i in range(3):
            await send({"type": "websocket.send", "bytes": b"z" * 100_000})
            progress.append((i, trio.current_time()))
        await send({"type": "websocket.close"})

    async with open_memory_server(app, ws_ping_interval=0) as server:
        async with open_memory_connection(server, lockstep=True) as stream:
            client = RawClient(stream)
            assert isinstance(await client.handshake(), AcceptConnection)
            await trio.sleep(100)
            assert progress == []
            assert await client.close_code() == 1000
    assert [i for i, _ in progress] == [0, 1, 2]
    assert progress[0][1] >= 100


@pytest.mark.parametrize(("how", "code"), [("close-frame", 1001), ("tcp-drop", 1006)])
async def test_client_disconnect_gives_the_app_the_grace_period(
    autojump_clock, how, code
):
    events = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        events.append((message["code"], trio.current_time()))
        try:
            await trio.sleep_forever()  # an app that ignores the disconnect
        finally:
            events.append(("cancelled", trio.current_time()))

    async with open_memory_server(app, disconnect_grace_period=3) as server:
        async with open_memory_connection(server) as stream:
            client = RawClient(stream)
            assert isinstance(await client.handshake(), AcceptConnection)
            if how == "close-frame":
                await client.send(CloseConnection(code=1001))
                assert (await client.next_event()).code == 1001
            else:
                await stream.aclose()
            await trio.sleep(10)
    (seen_code, seen), (what, cancelled) = events
    assert (seen_code, what) == (code, "cancelled")
    assert cancelled - seen == pytest.approx(3)


async def test_graceful_shutdown_closes_open_websockets_with_1012():
    log = []
    async with open_server(echo_app(log)) as server:
        async with open_trio_websocket(server) as ws:
            await ws.send_message("hi")
            assert await ws.get_message() == "hi"
            server.shutdown()
            with pytest.raises(trio_websocket.ConnectionClosed) as info:
                await ws.get_message()
    assert info.value.reason.code == 1012
    assert log[0]["code"] == 1012


async def test_graceful_shutdown_cancels_an_app_that_does_not_finish(autojump_clock):
    events = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        events.append(await receive())
        try:
            await trio.sleep_forever()
        finally:
            events.append(trio.current_time())

    async with open_memory_server(app, timeout_graceful_shutdown=10) as server:
        async with open_memory_connection(server) as stream:
            client = RawClient(stream)
            assert isinstance(await client.handshake(), AcceptConnection)
            start = trio.current_time()
            server.shutdown()
            assert await client.close_code() == 1012
            await client.send(CloseConnection(code=1012))
            while (await client.stream.receive_some(100)) != b"":
                pass
    assert events[0]["code"] == 1012
    assert events[1] - start == pytest.approx(10)


# -- frameworks and examples ---------------------------------------------------


async def test_starlette_websocket_endpoint_end_to_end():
    from starlette.applications import Starlette
    from starlette.endpoints import WebSocketEndpoint
    from starlette.routing import WebSocketRoute

    closed = []

    class Echo(WebSocketEndpoint):
        encoding = "text"

        async def on_receive(self, websocket, data):
            await websocket.send_text(f"{websocket.path_params['room']}: {data}")

        async def on_disconnect(self, websocket, close_code):
            closed.append(close_code)

    app = Starlette(routes=[WebSocketRoute("/rooms/{room}", Echo)])
    async with open_server(app) as server:
        async with open_websockets(server, "/rooms/blue") as ws:
            await ws.send("hello")
            assert await ws.recv() == "blue: hello"
            await ws.aclose(4002)
    assert closed == [4002]


async def test_ws_echo_example_echoes():
    from examples.ws_echo import app

    async with open_server(app) as server:
        async with open_trio_websocket(server) as ws:
            await ws.send_message("ping")
            assert await ws.get_message() == "ping"
            await ws.send_message(b"pong")
            assert await ws.get_message() == b"pong"


# -- the message table, without sockets ---------------------------------------


@pytest.mark.parametrize(
    ("state", "message", "expected"),
    [
        (
            WebSocketState.HANDSHAKE,
            {"type": "websocket.accept"},
            WebSocketState.CONNECTED,
        ),
        (WebSocketState.HANDSHAKE, {"type": "websocket.close"}, WebSocketState.CLOSED),
        (
            WebSocketState.HANDSHAKE,
            {"type": "websocket.http.response.start", "status": 403},
            WebSocketState.RESPONSE,
        ),
        (
            WebSocketState.RESPONSE,
            {"type": "websocket.http.response.body", "more_body": True},
            WebSocketState.RESPONSE,
        ),
        (
            WebSocketState.RESPONSE,
            {"type": "websocket.http.response.body"},
            WebSocketState.CLOSED,
        ),
        (
            WebSocketState.CONNECTED,
            {"type": "websocket.send", "bytes": b"x"},
            WebSocketState.CONNECTED,
        ),
        (
            WebSocketState.CONNECTED,
            {"type": "websocket.close", "code": 4999},
            WebSocketState.CLOSED,
        ),
    ],
)
def test_websocket_message_table_allows(state, message, expected):
    assert next_websocket_state(state, message) is expected


@pytest.mark.parametrize(
    ("state", "message"),
    [
        (WebSocketState.HANDSHAKE, {"type": "websocket.send", "text": "x"}),
        (WebSocketState.CONNECTED, {"type": "websocket.accept"}),
        (
            WebSocketState.CONNECTED,
            {"type": "websocket.http.response.start", "status": 403},
        ),
        (WebSocketState.CONNECTED, {"type": "websocket.send"}),
        (WebSocketState.CONNECTED, {"type": "websocket.send", "text": b"bytes"}),
        (WebSocketState.CONNECTED, {"type": "websocket.close", "code": 1006}),
        (WebSocketState.CONNECTED, {"type": "websocket.close", "code": "1000"}),
        (
            WebSocketState.HANDSHAKE,
            {
                "type": "websocket.accept",
                "headers": [(b"sec-websocket-protocol", b"x")],
            },
        ),
        (
            WebSocketState.RESPONSE,
            {"type": "websocket.http.response.start", "status": 403},
        ),
        (WebSocketState.CLOSED, {"type": "websocket.close"}),
        (WebSocketState.HANDSHAKE, {"no": "type"}),
    ],
)
def test_websocket_message_table_refuses(state, message):
    with pytest.raises(ASGIProtocolError):
        next_websocket_state(state, message)


def test_deflate_negotiation_takes_the_first_acceptable_offer():
    from triasgi._protocol._websocket import negotiate_deflate

    result = negotiate_deflate(
        ["x-unknown", "permessage-deflate; client_max_window_bits"]
    )
    assert result is not None
    extension, header = result
    assert isinstance(extension, PerMessageDeflate)
    assert header.startswith(b"permessage-deflate")
    assert negotiate_deflate(["x-unknown"]) is None


async def test_bytes_after_the_client_close_frame_are_dropped_with_deflate(caplog):
    log = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        log.append(await receive())
        await trio.sleep(0.05)  # still running when the bytes after the close come

    async with open_server(app) as server:
        client = RawClient(await connect(server))
        client.ws = WSConnection(ConnectionType.CLIENT)
        await client.send(
            Request(host="example.test", target="/", extensions=[PerMessageDeflate()])
        )
        assert isinstance(await client.next_event(), AcceptConnection)
        # The close frame and 10 KB more in one write: several deflate slices.
        await client.stream.send_all(
            client.ws.send(CloseConnection(code=1000)) + b"\x00" * 10_000
        )
        assert await client.close_code() == 1000
        await client.stream.aclose()
    assert log == [{"type": "websocket.disconnect", "code": 1000, "reason": ""}]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_write_lock_goes_to_its_waiters_in_order_past_a_cancelled_one(
    autojump_clock,
):
    lock = WriteLock()
    taken = []

    async def write(name, scope=None):
        with scope or trio.CancelScope():
            async with lock:
                taken.append(name)
                await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(write, "first")
        await trio.testing.wait_all_tasks_blocked()
        assert lock.locked()
        with pytest.raises(trio.WouldBlock):
            lock.acquire_nowait()
        cancelled = trio.CancelScope()
        for name, scope in [("second", cancelled), ("third", None)]:
            nursery.start_soon(write, name, scope)
            await trio.testing.wait_all_tasks_blocked()
        cancelled.cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert taken == ["first"]
    assert taken == ["first", "third"]
    assert not lock.locked()
    lock.acquire_nowait()
    assert lock.locked()
