"""The test fixtures and helpers of triasgi.testing, as an app's tests use them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
import trio
import trio.testing
import trio_websocket

from triasgi import ASGIProtocolError, ClientDisconnected, StartupError
from triasgi.testing import (
    WebSocketClosed,
    WebSocketRejected,
    open_client,
    open_communicator,
    open_memory_server,
    open_server,
    open_websocket,
)

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")

pytest_plugins = ["pytester"]


def lifespan_app(log, *, startup_failure=None):
    """Opens a 'database' at startup; requests report what the state holds."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            if startup_failure is not None:
                await send({"type": "lifespan.startup.failed",
                            "message": startup_failure})
                return
            scope["state"]["db"] = "connected"
            log.append("startup")
            await send({"type": "lifespan.startup.complete"})
            await receive()
            log.append("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = f"{scope['state'].get('db')} {scope['client'][1]}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})

    return app


def all_tasks():
    """Every task of this trio run."""

    def walk(task):
        yield task
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                yield from walk(child)

    return set(walk(trio.lowlevel.current_root_task()))


def open_fds():
    return set(os.listdir("/proc/self/fd"))


# -- triasgi_server: a real socket ---------------------------------------------


async def test_server_fixture_serves_on_an_ephemeral_port(triasgi_server):
    log = []
    server = await triasgi_server(lifespan_app(log))
    assert server.host == "127.0.0.1"
    assert server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.ws_url == f"ws://127.0.0.1:{server.port}"
    async with httpx.AsyncClient() as client:
        response = await client.get(server.url + "/")
    assert response.status_code == 200
    assert response.text.startswith("connected ")
    assert response.headers["server"] == "triasgi"
    assert server.state == {"db": "connected"}
    assert log == ["startup"]


async def test_server_fixture_takes_config_settings(triasgi_server):
    server = await triasgi_server(lifespan_app([]), headers=["x-test: yes"],
                                  server_header=False)
    async with httpx.AsyncClient() as client:
        response = await client.get(server.url)
    assert response.headers["x-test"] == "yes"
    assert "server" not in response.headers


async def test_open_server_leaves_no_task_and_no_socket_behind():
    log = []
    tasks_before, fds_before = all_tasks(), open_fds()
    async with open_server(lifespan_app(log)) as server:
        async with httpx.AsyncClient() as client:
            assert (await client.get(server.url)).status_code == 200
        assert len(open_fds()) > len(fds_before)
    assert all_tasks() == tasks_before
    assert open_fds() == fds_before
    assert log == ["startup", "shutdown"]
    with pytest.raises(OSError, match=r"refused|connect"):
        await trio.open_tcp_stream(server.host, server.port)


async def test_failing_startup_raises_startup_error_from_the_fixture(triasgi_server):
    with pytest.raises(StartupError, match="database is down"):
        await triasgi_server(lifespan_app([], startup_failure="database is down"))


async def test_a_misspelt_setting_is_named(triasgi_server, triasgi_client):
    with pytest.raises(TypeError, match="'timeout_keepalive' is not a triasgi setting"):
        await triasgi_server(lifespan_app([]), timeout_keepalive=1)
    with pytest.raises(TypeError, match="'timeout_keepalive' is not a triasgi setting"):
        await triasgi_client(lifespan_app([]), timeout_keepalive=1)


# -- triasgi_client: in memory -------------------------------------------------


async def test_client_fixture_sees_lifespan_state(triasgi_client):
    log = []
    client = await triasgi_client(lifespan_app(log))
    response = await client.get("/")
    assert response.status_code == 200
    assert response.text == "connected 50000"
    assert client.server.state == {"db": "connected"}
    assert log == ["startup"]


async def test_open_client_runs_lifespan_shutdown_and_leaves_no_task():
    log = []
    tasks_before = all_tasks()
    async with open_client(lifespan_app(log)) as client:
        assert (await client.get("/")).status_code == 200
        assert len(all_tasks()) > len(tasks_before)
    assert all_tasks() == tasks_before
    assert log == ["startup", "shutdown"]


async def test_failing_startup_raises_startup_error_from_the_client_fixture(
    triasgi_client,
):
    with pytest.raises(StartupError, match="database is down"):
        await triasgi_client(lifespan_app([], startup_failure="database is down"))


async def test_keep_alive_timeout_is_observed_in_virtual_time(
    triasgi_client, autojump_clock
):
    client = await triasgi_client(lifespan_app([]), timeout_keep_alive=60)
    real_start, virtual_start = time.perf_counter(), trio.current_time()
    first = (await client.get("/")).text
    await trio.sleep(59)
    reused = (await client.get("/")).text
    await trio.sleep(61)
    after_timeout = (await client.get("/")).text
    # Each connection shows the app a port of its own: the first two
    # requests shared one, then the server closed it as idle.
    assert first == reused == "connected 50000"
    assert after_timeout == "connected 50001"
    assert trio.current_time() - virtual_start >= 120
    assert time.perf_counter() - real_start < 1


def disconnect_app(log, started):
    """Waits for the client to go away, as a long poll would."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        assert (await receive())["type"] == "http.request"
        started.set()
        message = await receive()
        log.append((message["type"], trio.current_time()))
        try:
            await send({"type": "http.response.start", "status": 200})
        except ClientDisconnected:
            log.append(("send raised", trio.current_time()))

    return app


async def test_client_giving_up_is_a_disconnect_the_app_sees(
    triasgi_client, autojump_clock
):
    log = []
    client = await triasgi_client(disconnect_app(log, trio.Event()))
    with trio.move_on_after(3):
        await client.get("/poll")
    await trio.testing.wait_all_tasks_blocked()
    assert log == [("http.disconnect", pytest.approx(3)),
                   ("send raised", pytest.approx(3))]


async def test_client_timeouts_run_on_trio_time(triasgi_client, autojump_clock):
    log = []
    client = await triasgi_client(disconnect_app(log, trio.Event()))
    with pytest.raises(httpx.ReadTimeout):
        await client.get("/poll")  # httpx's default: five seconds
    with pytest.raises(httpx.ReadTimeout):
        await client.get("/poll", timeout=20)
    await trio.testing.wait_all_tasks_blocked()
    assert [time for kind, time in log if kind == "http.disconnect"] == [
        pytest.approx(5), pytest.approx(25)]


async def test_drop_connections_disconnects_a_request_in_flight(
    triasgi_client, autojump_clock
):
    log = []
    started = trio.Event()
    client = await triasgi_client(disconnect_app(log, started))
    async with trio.open_nursery() as nursery:

        async def request():
            with pytest.raises(httpx.ReadError):
                await client.post("/upload", content=b"data")

        nursery.start_soon(request)
        await started.wait()
        await trio.sleep(3)
        assert await client.drop_connections() == 1
    await trio.testing.wait_all_tasks_blocked()
    assert [kind for kind, _ in log] == ["http.disconnect", "send raised"]
    assert log[0][1] == pytest.approx(3)
    # The client still works: the next request gets a new connection.
    assert await client.drop_connections() == 0


async def test_client_giving_up_mid_response_disconnects(triasgi_client, autojump_clock):
    outcome = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200})
        try:
            for i in range(100):
                await send({"type": "http.response.body", "body": b"tick %d\n" % i,
                            "more_body": True})
                await trio.sleep(1)
        except ClientDisconnected:
            outcome.append(("disconnected at", i))
            raise

    client = await triasgi_client(app)
    async with client.stream("GET", "/ticks") as response:
        assert response.status_code == 200
        with trio.move_on_after(2.5):
            await response.aread()
    await trio.sleep(5)
    assert outcome == [("disconnected at", 3)]


async def test_disconnect_grace_period_is_virtual_time(triasgi_client, autojump_clock):
    log = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()
        try:
            await receive()  # the disconnect
            log.append(("disconnect", trio.current_time()))
            await trio.sleep(100)  # cleanup that takes too long
        except trio.Cancelled:
            log.append(("cancelled", trio.current_time()))
            raise

    client = await triasgi_client(app, disconnect_grace_period=30)
    with trio.move_on_after(1):
        await client.get("/")
    await trio.sleep(60)
    assert log == [("disconnect", pytest.approx(1)), ("cancelled", pytest.approx(31))]


async def test_client_sees_the_real_servers_answer_to_a_broken_app(triasgi_client):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        raise RuntimeError("boom")

    client = await triasgi_client(app)
    response = await client.get("/")
    assert response.status_code == 500
    assert response.headers["connection"] == "close"


async def test_client_requests_see_base_url_host_and_port(triasgi_client):
    scopes = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        scopes.append(scope)
        await send({"type": "http.response.start", "status": 204})
        await send({"type": "http.response.body"})

    client = await triasgi_client(app, base_url="http://api.example:8080/v1/")
    await client.get("items?x=1")
    (scope,) = scopes
    assert scope["server"] == ("api.example", 8080)
    assert scope["path"] == "/v1/items"
    assert scope["query_string"] == b"x=1"
    assert dict(scope["headers"])[b"host"] == b"api.example:8080"


async def test_request_body_and_keep_alive_between_requests(triasgi_client):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": body[::-1]})

    async def chunks():
        for part in (b"abc", b"def"):
            yield part

    client = await triasgi_client(app)
    assert (await client.post("/", content=b"hello")).text == "olleh"
    assert (await client.post("/", content=chunks())).text == "fedcba"


async def test_a_starlette_app_with_lifespan_state(triasgi_client):
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    @asynccontextmanager
    async def lifespan(app):
        yield {"greeting": "hello from startup"}

    async def home(request):
        return PlainTextResponse(request.state.greeting)

    app = Starlette(routes=[Route("/", home)], lifespan=lifespan)
    client = await triasgi_client(app)
    response = await client.get("/")
    assert response.text == "hello from startup"


# -- WebSocket through the client ------------------------------------------------


def ws_app(log):
    """Echoes messages; 'bye' makes it close with 4000."""

    async def app(scope, receive, send):
        if scope["type"] != "websocket":
            return
        log.append(scope)
        assert (await receive())["type"] == "websocket.connect"
        if scope["path"] == "/private":
            await send({"type": "websocket.http.response.start", "status": 401,
                        "headers": [(b"www-authenticate", b"Token")]})
            await send({"type": "websocket.http.response.body",
                        "body": b"token required"})
            return
        if scope["path"] == "/closed":
            await send({"type": "websocket.close"})
            return
        offered = scope["subprotocols"]
        await send({"type": "websocket.accept",
                    "subprotocol": offered[-1] if offered else None,
                    "headers": [(b"x-room", scope["path"].encode())]})
        while True:
            message = await receive()
            log.append(message)
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "bye":
                await send({"type": "websocket.close", "code": 4000, "reason": "done"})
                return
            await send({"type": "websocket.send", "text": message.get("text"),
                        "bytes": message.get("bytes")})

    return app


async def test_websocket_session_through_the_client(triasgi_client):
    log = []
    client = await triasgi_client(ws_app(log))
    async with client.open_websocket("/room/1", subprotocols=["v1", "v2"]) as ws:
        assert ws.subprotocol == "v2"
        assert (b"x-room", b"/room/1") in ws.headers
        await ws.send_text("héllo")
        assert await ws.receive_text() == "héllo"
        await ws.send_bytes(b"\x00\xff")
        assert await ws.receive_bytes() == b"\x00\xff"
    assert ws.closed
    assert ws.close_code == 1000
    await trio.testing.wait_all_tasks_blocked()
    assert log[-1] == {"type": "websocket.disconnect", "code": 1000, "reason": ""}


async def test_websocket_closed_by_the_app(triasgi_client):
    client = await triasgi_client(ws_app([]))
    async with client.open_websocket("/") as ws:
        await ws.send_text("bye")
        with pytest.raises(WebSocketClosed) as closed:
            await ws.receive()
        with pytest.raises(WebSocketClosed):
            await ws.send_text("anyone?")
    assert (closed.value.code, closed.value.reason) == (4000, "done")
    assert ws.close_code == 4000


async def test_websocket_denied_by_the_app(triasgi_client):
    client = await triasgi_client(ws_app([]))
    with pytest.raises(WebSocketRejected) as rejected:
        async with client.open_websocket("/private"):
            pytest.fail("the handshake should have been denied")
    assert rejected.value.status == 401
    assert rejected.value.body == b"token required"
    assert (b"www-authenticate", b"Token") in rejected.value.headers
    with pytest.raises(WebSocketRejected) as rejected:
        async with client.open_websocket("/closed"):
            pytest.fail("the handshake should have been denied")
    assert rejected.value.status == 403


async def test_dropped_websocket_is_a_1006_disconnect_for_the_app(triasgi_client):
    log = []
    client = await triasgi_client(ws_app(log))
    async with client.open_websocket("/") as ws:
        await ws.send_text("one")
        assert await ws.receive() == "one"
        await ws.drop()
    await trio.testing.wait_all_tasks_blocked()
    assert ws.close_code == 1006
    assert log[-1] == {"type": "websocket.disconnect", "code": 1006, "reason": ""}


async def test_websocket_answers_pings_while_the_test_sleeps(
    triasgi_client, autojump_clock
):
    client = await triasgi_client(ws_app([]), ws_ping_interval=5, ws_ping_timeout=5)
    async with client.open_websocket("/") as ws:
        await trio.sleep(600)
        await ws.send_text("still here")
        assert await ws.receive() == "still here"


async def test_open_websocket_without_pytest_fixtures():
    log = []
    async with open_memory_server(ws_app(log)) as server, open_websocket(
        server, "/plain", host="chat.example", port=8080, client=("10.0.0.7", 4321)
    ) as ws:
        await ws.send_text("ping")
        assert await ws.receive() == "ping"
    assert ws.close_code == 1000
    scope = log[0]
    assert scope["client"] == ("10.0.0.7", 4321)
    assert scope["server"] == ("chat.example", 8080)
    assert (b"host", b"chat.example:8080") in scope["headers"]


async def test_websocket_on_the_real_socket_via_ws_url(triasgi_server):
    server = await triasgi_server(ws_app([]))
    async with trio_websocket.open_websocket_url(server.ws_url + "/tcp") as ws:
        await ws.send_message("over TCP")
        assert await ws.get_message() == "over TCP"


# -- the communicator ----------------------------------------------------------


async def echo_app(scope, receive, send):
    message = await receive()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"x-path", scope["path"].encode())]})
    await send({"type": "http.response.body", "body": message["body"]})


async def test_communicator_drives_an_app_message_by_message():
    async with open_communicator(echo_app, {"type": "http", "path": "/a"}) as app_call:
        await app_call.send({"type": "http.request", "body": b"hi"})
        start = await app_call.receive()
        body = await app_call.receive()
        await app_call.wait()
    assert start == {"type": "http.response.start", "status": 200,
                     "headers": [(b"x-path", b"/a")]}
    assert body == {"type": "http.response.body", "body": b"hi"}
    assert app_call.finished
    assert app_call.scope["method"] == "GET"
    assert app_call.scope["raw_path"] == b"/a"


async def test_communicator_reports_a_message_out_of_order():
    seen_by_app = []

    async def app(scope, receive, send):
        try:
            await send({"type": "http.response.body", "body": b"no start"})
        except ASGIProtocolError as exc:
            seen_by_app.append(exc)
            raise

    async with open_communicator(app, {"type": "http"}) as app_call:
        with pytest.raises(ASGIProtocolError,
                           match=r"message order: Expected http\.response\.start"):
            await app_call.receive()
        await app_call.wait()
    assert len(seen_by_app) == 1


async def test_communicator_times_out_on_trio_time(autojump_clock):
    async with open_communicator(echo_app, {"type": "http"}, timeout=30) as app_call:
        with pytest.raises(trio.TooSlowError, match="within 30 seconds; it is waiting"):
            await app_call.receive()
        assert trio.current_time() == pytest.approx(30)
        await app_call.receive_nothing(5)
        with pytest.raises(trio.TooSlowError, match="did not return"):
            await app_call.wait(timeout=1)


async def test_communicator_receive_nothing_fails_on_a_message():
    async with open_communicator(echo_app, {"type": "http"}) as app_call:
        await app_call.send({"type": "http.request", "body": b""})
        with pytest.raises(AssertionError, match=r"http\.response\.start"):
            await app_call.receive_nothing()


async def test_communicator_says_when_the_app_returns_without_a_response():
    async def app(scope, receive, send):
        await receive()

    async with open_communicator(app, {"type": "http"}) as app_call:
        await app_call.send({"type": "http.request"})
        with pytest.raises(AssertionError,
                           match=r"without completing the response .*http\.response\.start"):
            await app_call.receive()


async def test_communicator_reraises_the_apps_exception():
    async def app(scope, receive, send):
        raise KeyError("missing")

    async with open_communicator(app, {"type": "http"}) as app_call:
        with pytest.raises(KeyError, match="missing"):
            await app_call.receive()


async def test_communicator_raises_an_unseen_app_exception_on_exit():
    async def app(scope, receive, send):
        raise ValueError("never looked at")

    with pytest.raises(ValueError, match="never looked at"):
        async with open_communicator(app, {"type": "http"}):
            await trio.testing.wait_all_tasks_blocked()


async def test_communicator_cancels_a_running_app_on_exit():
    cancelled = []

    async def app(scope, receive, send):
        try:
            await receive()
        except trio.Cancelled:
            cancelled.append(True)
            raise

    async with open_communicator(app, {"type": "http"}) as app_call:
        await trio.testing.wait_all_tasks_blocked()
        assert not app_call.finished
    assert cancelled == [True]


async def test_communicator_checks_the_websocket_message_order():
    async def app(scope, receive, send):
        await receive()
        await send({"type": "websocket.send", "text": "before accepting"})

    async with open_communicator(app, {"type": "websocket"}) as app_call:
        await app_call.send({"type": "websocket.connect"})
        with pytest.raises(ASGIProtocolError, match=r"Expected websocket\.accept"):
            await app_call.receive()


async def test_communicator_needs_a_scope_type():
    with pytest.raises(ValueError, match="'type'"):
        async with open_communicator(echo_app, {"path": "/"}):
            pass  # pragma: no cover


# -- errors come out as themselves ------------------------------------------------


async def test_an_assertion_in_the_block_is_not_wrapped_in_a_group():
    with pytest.raises(AssertionError, match="the test's own"):
        async with open_memory_server(lifespan_app([])):
            raise AssertionError("the test's own")


# -- the plugin as a user gets it ---------------------------------------------------

PYTEST_INI = """
[pytest]
trio_mode = true
filterwarnings = error
"""


def test_plugin_fixtures_tear_down_gracefully_after_the_test(pytester):
    pytester.makeini(PYTEST_INI)
    pytester.makepyfile(test_user_app="""
        import socket

        import httpx
        import pytest

        LOG = []

        async def app(scope, receive, send):
            if scope["type"] == "lifespan":
                await receive()
                await send({"type": "lifespan.startup.complete"})
                await receive()
                LOG.append("lifespan shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"ok"})

        async def test_both(triasgi_server, triasgi_client):
            server = await triasgi_server(app)
            client = await triasgi_client(app)
            async with httpx.AsyncClient() as real:
                assert (await real.get(server.url)).text == "ok"
            assert (await client.get("/")).text == "ok"
            LOG.append(server.port)

        def test_after():
            assert LOG[1:] == ["lifespan shutdown", "lifespan shutdown"]
            # The listening socket is closed.
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", LOG[0]), timeout=5).close()
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_failing_startup_is_one_clear_error_in_the_test_report(pytester):
    pytester.makeini(PYTEST_INI)
    pytester.makepyfile(test_broken_app="""
        async def app(scope, receive, send):
            await receive()
            await send({"type": "lifespan.startup.failed",
                        "message": "cannot reach the database"})

        async def test_it(triasgi_client):
            await triasgi_client(app)
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-ra")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*triasgi.StartupError: Lifespan startup failed: cannot reach the database",
        "*short test summary info*",
        "FAILED test_broken_app.py::test_it - StartupError(*",
    ])
    # The one group is pytest-trio's, around every failing test; the helpers
    # add none of their own.
    assert result.stdout.str().count("ExceptionGroup:") == 1


def test_loading_the_plugin_imports_neither_httpx_nor_pytest_trio():
    code = (
        "import sys, triasgi.testing._plugin\n"
        "print(sorted(m for m in ('httpx', 'httpcore', 'pytest_trio') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
