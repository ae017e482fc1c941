from __future__ import annotations

import os
import signal
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
        lambda _configured, limits: choose(backend, limits),
    )
    monkeypatch.setenv("TRIASGI_HTTP", backend)
    return backend


# -- the time limit of a test (pytest-timeout, ``timeout`` in pyproject.toml) --
#
# pytest-timeout's own SIGALRM handler raises wherever the test happens to
# be, which inside trio.run breaks the run and the next trio test with it.
# In a trio test this one cancels the test's tasks instead, through the run's
# TrioToken, and the test then fails with the timeout; a test that does not
# end within a few more seconds gets pytest-timeout's way.

_TIMED_OUT = pytest.StashKey[float]()
_GRACE_SECONDS = 5


def _cancel_the_test() -> None:
    """Cancel every nursery under the run's main task (pytest-trio's)."""
    tasks = [
        task
        for nursery in trio.lowlevel.current_root_task().child_nurseries
        for task in nursery.child_tasks
    ]
    while tasks:
        task = tasks.pop()
        for nursery in task.child_nurseries:
            nursery.cancel_scope.cancel()
            tasks.extend(nursery.child_tasks)


@pytest.hookimpl(optionalhook=True)
def pytest_timeout_set_timer(item, settings):
    if settings.timeout <= 0 or settings.method != "signal":
        return None

    def handler(signum, frame):
        __tracebackhide__ = True
        if trio.lowlevel.in_trio_run() and _TIMED_OUT not in item.stash:
            item.stash[_TIMED_OUT] = settings.timeout
            trio.lowlevel.current_trio_token().run_sync_soon(_cancel_the_test)
            signal.setitimer(signal.ITIMER_REAL, _GRACE_SECONDS)
            return
        pytest.fail(f"Timeout (>{settings.timeout}s) from pytest-timeout.")

    previous = signal.signal(signal.SIGALRM, handler)

    def cancel():
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    item.cancel_timeout = cancel
    signal.setitimer(signal.ITIMER_REAL, settings.timeout)
    return True


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    try:
        return (yield)
    finally:
        timeout = item.stash.get(_TIMED_OUT, None)
        if timeout is not None:
            pytest.fail(f"Timeout (>{timeout}s): the test was cancelled.")
