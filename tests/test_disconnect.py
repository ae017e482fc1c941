"""What an app sees when its client goes away, and when it is cancelled."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import triasgi
from triasgi.testing import open_memory_connection, open_memory_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")

REQUEST = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"


def long_poll_app(log, *, cleanup_seconds):
    """Reads the request, then waits for the disconnect and cleans up."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        assert (await receive())["type"] == "http.request"
        try:
            message = await receive()
            log.append(("received", message["type"], trio.current_time()))
            try:
                await send({"type": "http.response.start", "status": 200})
            except OSError as exc:
                log.append(("send raised", type(exc), trio.current_time()))
            await trio.sleep(cleanup_seconds)
            log.append(("cleaned up", None, trio.current_time()))
        except trio.Cancelled:
            log.append(("cancelled", None, trio.current_time()))
            raise

    return app


async def test_disconnect_reaches_a_pending_receive_and_send_raises(autojump_clock):
    log = []
    app = long_poll_app(log, cleanup_seconds=1)
    async with open_memory_server(app) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            await trio.sleep(7)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(5)
    kinds = [entry[:2] for entry in log]
    assert kinds == [
        ("received", "http.disconnect"),
        ("send raised", triasgi.ClientDisconnected),
        ("cleaned up", None),
    ]
    assert issubclass(triasgi.ClientDisconnected, OSError)
    # Noticed at once, while the app was waiting.
    assert log[0][2] == pytest.approx(7)


async def test_app_that_finishes_within_the_grace_period_is_not_cancelled(autojump_clock):
    log = []
    app = long_poll_app(log, cleanup_seconds=2.9)
    async with open_memory_server(app, disconnect_grace_period=3) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            await trio.sleep(1)
        await trio.sleep(10)
    assert [entry[0] for entry in log] == ["received", "send raised", "cleaned up"]


async def test_app_is_cancelled_when_the_grace_period_ends(autojump_clock):
    log = []
    app = long_poll_app(log, cleanup_seconds=100)
    async with open_memory_server(app, disconnect_grace_period=3) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            await trio.sleep(1)
        await trio.sleep(10)
    assert [entry[0] for entry in log] == ["received", "send raised", "cancelled"]
    assert log[-1][2] - log[0][2] == pytest.approx(3)


async def test_zero_grace_period_cancels_at_once(autojump_clock):
    log = []
    app = long_poll_app(log, cleanup_seconds=100)
    async with open_memory_server(app, disconnect_grace_period=0) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            await trio.sleep(1)
        await trio.sleep(10)
    # The pending receive() returns the disconnect, and the app's very next
    # checkpoint (its send) is cancelled: no cleanup time at all.
    assert [entry[0] for entry in log] == ["received", "cancelled"]
    assert log[-1][2] == pytest.approx(1)


async def test_disconnect_during_the_request_body(autojump_clock):
    messages = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            messages.append(message["type"])
            if message["type"] == "http.disconnect":
                return

    async with open_memory_server(app) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\n"
                                  b"\r\npartial")
            await trio.sleep(1)
        await trio.sleep(1)
    assert messages == ["http.request", "http.disconnect"]


async def test_is_disconnected_check_inside_a_cancelled_scope_sees_the_disconnect(
    autojump_clock,
):
    # This is what Starlette's Request.is_disconnected() does.
    seen = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()
        for _ in range(10):
            with trio.CancelScope() as cs:
                cs.cancel()
                message = {}
                message = await receive()
            seen.append(message.get("type"))
            if message.get("type") == "http.disconnect":
                return
            await trio.sleep(1)

    async with open_memory_server(app) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            await trio.sleep(2.5)
        await trio.sleep(5)
    assert seen == [None, None, None, "http.disconnect"]


async def test_keep_alive_timeout_closes_an_idle_connection(autojump_clock):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    async with open_memory_server(app, timeout_keep_alive=7) as server, \
            open_memory_connection(server) as stream:
        await stream.send_all(REQUEST)
        response = await stream.receive_some()
        assert response.startswith(b"HTTP/1.1 204 ")
        answered = trio.current_time()
        assert await stream.receive_some() == b""
        assert trio.current_time() - answered == pytest.approx(7)


async def test_keep_alive_timeout_does_not_cancel_work_after_the_response(
    autojump_clock,
):
    # A BackgroundTask runs after its response: the idle connection still
    # closes at the keep-alive timeout, and the task still runs to its end.
    log = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})
        try:
            await trio.sleep(20)
            log.append(("finished", trio.current_time()))
        except trio.Cancelled:
            log.append(("cancelled", trio.current_time()))
            raise

    async with open_memory_server(app, timeout_keep_alive=7) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            assert (await stream.receive_some()).startswith(b"HTTP/1.1 204 ")
            answered = trio.current_time()
            assert await stream.receive_some() == b""
            assert trio.current_time() - answered == pytest.approx(7)
        await trio.sleep(30)
    assert log == [("finished", pytest.approx(answered + 20))]


async def test_each_request_restarts_the_keep_alive_timeout(autojump_clock):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    async with open_memory_server(app, timeout_keep_alive=5) as server, \
            open_memory_connection(server) as stream:
        for _ in range(3):
            await trio.sleep(4)
            await stream.send_all(REQUEST)
            assert (await stream.receive_some()).startswith(b"HTTP/1.1 204 ")
        answered = trio.current_time()
        assert await stream.receive_some() == b""
        assert trio.current_time() - answered == pytest.approx(5)


async def test_keep_alive_timeout_applies_before_the_first_request(autojump_clock):
    async with open_memory_server(None, lifespan="off", timeout_keep_alive=5) as server, \
            open_memory_connection(server) as stream:
        start = trio.current_time()
        assert await stream.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(5)


async def test_a_request_longer_than_the_keep_alive_timeout_is_answered(autojump_clock):
    # The keep-alive deadline of the idle time before a request must not end
    # the connection while the app works on that request.
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] == "/slow":
            await trio.sleep(12)
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    slow = REQUEST.replace(b"GET / ", b"GET /slow ")
    async with open_memory_server(app, timeout_keep_alive=5) as server, \
            open_memory_connection(server) as stream:
        await stream.send_all(REQUEST)
        assert (await stream.receive_some()).startswith(b"HTTP/1.1 204 ")
        await trio.sleep(3)
        asked = trio.current_time()
        await stream.send_all(slow)
        assert (await stream.receive_some()).startswith(b"HTTP/1.1 204 ")
        answered = trio.current_time()
        assert answered - asked == pytest.approx(12)
        assert await stream.receive_some() == b""
        assert trio.current_time() - answered == pytest.approx(5)


async def test_client_gone_during_the_last_write_gets_the_grace_period(autojump_clock):
    """The last body went to send() but not yet to the client: it is not done."""
    from triasgi import ClientDisconnected
    from triasgi.testing import open_memory_connection, open_memory_server

    seen = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200})
        try:
            await send({"type": "http.response.body", "body": b"x" * 1_000_000})
        except ClientDisconnected:
            seen.append(("disconnected", trio.current_time()))
            try:
                await trio.sleep_forever()  # cleanup that never ends
            except trio.Cancelled:
                seen.append(("cancelled", trio.current_time()))
                raise

    async with open_memory_server(app, disconnect_grace_period=3) as server:
        async with open_memory_connection(server, lockstep=True) as stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            await stream.receive_some(1000)  # part of the response, then gone
        with trio.fail_after(30):
            while len(seen) < 2:
                await trio.sleep(0.5)
    (_, gone_at), (what, cancelled_at) = seen
    assert what == "cancelled"
    assert cancelled_at - gone_at == pytest.approx(3, abs=0.6)
