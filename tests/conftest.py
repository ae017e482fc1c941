from __future__ import annotations

import os
from dataclasses import dataclass, field

import h11
import pytest
import trio

import triasgi._serve._server


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    header_list: list[tuple[bytes, bytes]] = field(default_factory=list)
    reason: bytes = b""


class H11Client:
    """A real HTTP/1.1 client (h11) on any trio stream, for exact-bytes tests."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, *events: object) -> None:
        for event in events:
            data = self.conn.send(event)
            if data:
                await self.stream.send_all(data)

    async def request(
        self,
        method: str = "GET",
        target: str = "/",
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
    ) -> None:
        hdrs = [("host", "example.test"), *(headers or [])]
        if body and not any(
            k.lower() in ("content-length", "transfer-encoding") for k, _ in hdrs
        ):
            hdrs.append(("content-length", str(len(body))))
        await self.send(h11.Request(method=method, target=target, headers=hdrs))
        if body:
            await self.send(h11.Data(data=body))
        await self.send(h11.EndOfMessage())

    async def next_event(self) -> object:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
                continue
            return event

    async def response(self) -> Reply:
        event = await self.next_event()
        while isinstance(event, h11.InformationalResponse):
            event = await self.next_event()
        assert isinstance(event, h11.Response), event
        body = b""
        while True:
            part = await self.next_event()
            if isinstance(part, h11.Data):
                body += part.data
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                raise AssertionError(part)
        headers = list(event.headers)
        reply = Reply(event.status_code, dict(headers), body, headers, event.reason)
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return reply

    async def request_response(self, *args: object, **kwargs: object) -> Reply:
        await self.request(*args, **kwargs)  # type: ignore[arg-type]
        return await self.response()


async def read_until_closed(stream: trio.abc.Stream) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while True:
        try:
            chunk = await stream.receive_some(65536)
        except trio.BrokenResourceError:
            return data
        if not chunk:
            return data
        data += chunk


_opened: list[trio.SocketStream] = []


async def connect(server: object) -> trio.SocketStream:
    """A TCP connection to ``server``, closed at the end of the test."""
    host, port = server.addresses[0]  # type: ignore[attr-defined]
    stream = await trio.open_tcp_stream(host, port)
    _opened.append(stream)
    return stream


@pytest.fixture(autouse=True)
def _close_client_sockets():
    yield
    # The test's trio run is over: release the descriptors directly.
    while _opened:
        sock = _opened.pop().socket
        if sock.fileno() != -1:
            os.close(sock.detach())


async def hello_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": b"hello"})


@pytest.fixture
def hello():
    return hello_app


@pytest.fixture(params=["h11", "httptools"])
def http_backend(request, monkeypatch):
    """Run the test once with each request parser backend (``--http``).

    Every server the test starts uses the backend, whatever its config says:
    in this process through the server's parser factory, and in a CLI
    subprocess through ``TRIASGI_HTTP``.
    """
    backend = request.param
    choose = triasgi._serve._server.parser_factory
    monkeypatch.setattr(
        triasgi._serve._server,
        "parser_factory",
        lambda _configured, max_head: choose(backend, max_head),
    )
    monkeypatch.setenv("TRIASGI_HTTP", backend)
    return backend
