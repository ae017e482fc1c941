"""WebSocket over HTTP/2 (RFC 8441): extended CONNECT, frames as DATA."""

from __future__ import annotations

import h2.errors
import trio
import wsproto.connection
import wsproto.events
from h2client import H2Client, H2Reply, H2Session

from triasgi.testing import open_memory_connection, open_memory_server

ErrorCodes = h2.errors.ErrorCodes


class WSOverH2:
    """A WebSocket client on one stream of an HTTP/2 connection."""

    def __init__(self, client: H2Client, sid: int) -> None:
        self.client = client
        self.sid = sid
        self.ws = wsproto.connection.Connection(
            wsproto.connection.ConnectionType.CLIENT
        )
        self._taken = 0

    @classmethod
    async def connect(
        cls, client: H2Client, path: str = "/ws", headers=(), version: str | None = "13"
    ) -> tuple[WSOverH2, H2Reply]:
        while not client.remote_settings_seen:
            await client.receive()
        assert client.conn.remote_settings.enable_connect_protocol == 1
        sid = client.conn.get_next_available_stream_id()
        client.replies[sid] = H2Reply()
        fields = [
            (b":method", b"CONNECT"),
            (b":protocol", b"websocket"),
            (b":scheme", b"http"),
            (b":path", path.encode()),
            (b":authority", b"example.test"),
        ]
        if version is not None:
            fields.append((b"sec-websocket-version", version.encode()))
        fields += [(k.encode(), v.encode()) for k, v in headers]
        client.conn.send_headers(sid, fields)
        await client.flush()
        reply = client.replies[sid]
        while not reply.status and reply.reset is None:
            await client.receive()
        return cls(client, sid), reply

    async def send(self, event) -> None:
        self.client.conn.send_data(self.sid, self.ws.send(event))
        await self.client.flush()

    async def events(self) -> list:
        """Read until wsproto has at least one event for us."""
        reply = self.client.replies[self.sid]
        while True:
            data = reply.body[self._taken :]
            if data:
                self._taken = len(reply.body)
                self.ws.receive_data(data)
                events = list(self.ws.events())
                if events:
                    return events
            if reply.ended or reply.reset is not None or self.client.closed:
                self.ws.receive_data(None)
                return list(self.ws.events())
            await self.client.receive()


async def ws_app_echo(scope, receive, send):
    assert scope["type"] == "websocket"
    seen = {
        "http_version": scope["http_version"],
        "scheme": scope["scheme"],
        "path": scope["path"],
        "subprotocols": scope["subprotocols"],
    }
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept", "subprotocol": "chat"})
    await send({"type": "websocket.send", "text": repr(seen)})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        if message.get("text") is not None:
            await send({"type": "websocket.send", "text": message["text"].upper()})
        else:
            await send({"type": "websocket.send", "bytes": message["bytes"][::-1]})


async def test_websocket_over_http2_echo_and_close():
    async with H2Session(ws_app_echo) as client:
        ws, reply = await WSOverH2.connect(
            client, "/chat/room", headers=[("sec-websocket-protocol", "chat, other")]
        )
        assert reply.status == 200
        assert reply.header[b"sec-websocket-protocol"] == b"chat"
        assert b"sec-websocket-accept" not in reply.header
        (first,) = await ws.events()
        assert first.data == repr(
            {
                "http_version": "2",
                "scheme": "ws",
                "path": "/chat/room",
                "subprotocols": ["chat", "other"],
            }
        )
        await ws.send(wsproto.events.TextMessage("hello"))
        (echo,) = await ws.events()
        assert echo.data == "HELLO"
        await ws.send(wsproto.events.BytesMessage(b"abc"))
        (echo,) = await ws.events()
        assert echo.data == b"cba"
        await ws.send(wsproto.events.CloseConnection(code=1000))
        events = await ws.events()
        assert isinstance(events[0], wsproto.events.CloseConnection)
        assert events[0].code == 1000
        # The server ends its side of the stream after the closing handshake.
        while not client.replies[ws.sid].ended:
            await client.receive()


async def test_websocket_and_requests_share_the_connection():
    async def app(scope, receive, send):
        if scope["type"] == "websocket":
            await ws_app_echo(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"plain"})

    async with H2Session(app) as client:
        ws, reply = await WSOverH2.connect(
            client, headers=[("sec-websocket-protocol", "chat")]
        )
        assert reply.status == 200
        await ws.events()  # the greeting
        assert (await client.get("/x")).body == b"plain"
        await ws.send(wsproto.events.TextMessage("still here"))
        (echo,) = await ws.events()
        assert echo.data == "STILL HERE"


async def test_websocket_denial_response_over_http2():
    async def app(scope, receive, send):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": 401,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send(
            {"type": "websocket.http.response.body", "body": b"no ", "more_body": True}
        )
        await send({"type": "websocket.http.response.body", "body": b"entry"})

    async with H2Session(app) as client:
        ws, reply = await WSOverH2.connect(client)
        assert reply.status == 401
        reply = await client.response(ws.sid)
        assert reply.body == b"no entry"
        assert reply.ended


async def test_websocket_closed_before_accept_is_403():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.close"})

    async with H2Session(app) as client:
        ws, reply = await WSOverH2.connect(client)
        assert reply.status == 403
        assert (await client.response(ws.sid)).ended


async def test_websocket_without_version_is_400():
    called = []

    async def app(scope, receive, send):
        called.append(scope)

    async with H2Session(app) as client:
        _ws, reply = await WSOverH2.connect(client, version=None)
        assert reply.status == 400
        assert reply.header[b"sec-websocket-version"] == b"13"
        assert called == []


async def test_reset_websocket_stream_disconnects_the_app(autojump_clock):
    seen = []

    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.accept"})
        message = await receive()
        seen.append(message)

    async with H2Session(app) as client:
        ws, reply = await WSOverH2.connect(client)
        assert reply.status == 200
        client.conn.reset_stream(ws.sid, ErrorCodes.CANCEL)
        await client.flush()
        with trio.fail_after(5):
            while not seen:
                await trio.sleep(0.1)
        assert seen == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


async def test_shutdown_closes_websocket_over_http2_with_1012(autojump_clock):
    async with open_memory_server(ws_app_echo, lifespan="off") as server:
        async with open_memory_connection(server) as stream:
            client = H2Client(stream)
            await client.start()
            ws, _reply = await WSOverH2.connect(
                client, headers=[("sec-websocket-protocol", "chat")]
            )
            await ws.events()  # the greeting
            server.shutdown()
            events = await ws.events()
            assert isinstance(events[0], wsproto.events.CloseConnection)
            assert events[0].code == 1012
            await ws.send(events[0].response())
            while client.goaway is None:
                await client.receive()
            assert client.goaway.error_code == ErrorCodes.NO_ERROR


async def test_other_extended_connect_protocols_get_501():
    """A :protocol other than websocket is refused on its stream (501)."""
    async with H2Session(ws_app_echo) as client:
        while not client.remote_settings_seen:
            await client.receive()
        sid = client.conn.get_next_available_stream_id()
        client.replies[sid] = H2Reply()
        client.conn.send_headers(
            sid,
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"webtransport"),
                (b":scheme", b"http"),
                (b":path", b"/"),
                (b":authority", b"example.test"),
            ],
        )
        await client.flush()
        reply = await client.response(sid)
        assert reply.status == 501
