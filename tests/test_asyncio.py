"""asyncio apps on trio (--loop asyncio): real apps through the real server."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import subprocess
import sys
import threading
import types

import httpx
import pytest
import trio
import trio.testing
import websockets
from websockets.trio.client import connect as websockets_connect

import triasgi
from triasgi.testing import open_memory_connection, open_memory_server, open_server

ASYNCIO_HINT = (
    "The app needs an asyncio event loop, and the server runs it on trio: serve "
    "it with --loop asyncio (loop='asyncio'), which needs pip install "
    "'triasgi[asyncio]'."
)
REQUEST = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"


async def read_body(receive):
    body = b""
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return body


async def send_text(send, text, status=200):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": text.encode()})


# -- a plain ASGI app that needs asyncio -------------------------------------


def asyncio_only_app():
    """Uses what only asyncio has: its loop, tasks, queues, streams, executor."""

    async def echo(reader, writer):
        writer.write((await reader.readline()).upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def lifespan(receive, send, state):
        assert (await receive())["type"] == "lifespan.startup"
        echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
        state["echo_port"] = echo_server.sockets[0].getsockname()[1]
        await send({"type": "lifespan.startup.complete"})
        assert (await receive())["type"] == "lifespan.shutdown"
        echo_server.close()
        await echo_server.wait_closed()
        await send({"type": "lifespan.shutdown.complete"})

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await lifespan(receive, send, scope["state"])
            return
        body = await asyncio.wait_for(read_body(receive), timeout=5)
        queue = asyncio.Queue()

        async def producer():
            for word in body.split():
                await queue.put(word.decode())
            await queue.put(None)

        task = asyncio.create_task(producer())
        words = []
        while (word := await queue.get()) is not None:
            words.append(word)
        await task
        in_thread = await asyncio.get_running_loop().run_in_executor(
            None, lambda: threading.current_thread() is not threading.main_thread()
        )
        try:
            await asyncio.wait_for(asyncio.sleep(10), timeout=0.01)
            timed_out = False
        except asyncio.TimeoutError:
            timed_out = True
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", scope["state"]["echo_port"])
        writer.write(b"over a stream\n")
        echoed = (await reader.readline()).decode().strip()
        writer.close()
        await writer.wait_closed()
        await send_text(send, json.dumps({
            "words": words, "in_thread": in_thread, "timed_out": timed_out,
            "echoed": echoed,
        }))

    return app


async def test_asyncio_only_app_is_served_with_loop_asyncio():
    async with open_server(asyncio_only_app(), loop="asyncio") as server, \
            httpx.AsyncClient() as client:
        response = await client.post(server.url + "/", content=b"one two three")
    assert response.status_code == 200
    assert response.json() == {
        "words": ["one", "two", "three"], "in_thread": True, "timed_out": True,
        "echoed": "OVER A STREAM",
    }


def recording_app(seen):
    """Records what it is given; it awaits only receive() and send()."""

    async def app(scope, receive, send):
        seen.append(("scope", dict(scope)))
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                seen.append(("received", message))
                if message["type"] == "lifespan.startup":
                    scope["state"]["ready"] = True
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        seen.append(("received", await receive()))
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"x-state", str(scope["state"]).encode())]})
        await send({"type": "http.response.body", "body": b"part ", "more_body": True})
        await send({"type": "http.response.body", "body": b"end"})
        seen.append(("received", await receive()))

    return app


async def serve_one_request(loop):
    seen = []
    async with open_memory_server(recording_app(seen), loop=loop) as server, \
            open_memory_connection(server) as stream:
        await stream.send_all(b"POST /p?q=1 HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\n\r\nhi")
        response = b""
        while not response.endswith(b"0\r\n\r\n"):
            response += await stream.receive_some()
    return seen, response


async def test_scope_messages_and_state_are_the_same_on_both_loops():
    on_trio = await serve_one_request("trio")
    on_asyncio = await serve_one_request("asyncio")
    assert on_asyncio[0] == on_trio[0]
    assert on_asyncio[1].split(b"\r\ndate:")[0] == on_trio[1].split(b"\r\ndate:")[0]
    assert b"x-state: {'ready': True}" in on_asyncio[1]
    assert on_asyncio[1].endswith(b"5\r\npart \r\n3\r\nend\r\n0\r\n\r\n")
    kinds = [item[1]["type"] for item in on_asyncio[0]]
    assert kinds == ["lifespan", "lifespan.startup", "http", "http.request",
                     "http.disconnect", "lifespan.shutdown"]


# -- cancellation across the bridge --------------------------------------------


def cleanup_app(log, *, cleanup_seconds):
    """Waits for the disconnect, then takes cleanup_seconds of asyncio time."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        assert (await receive())["type"] == "http.request"
        try:
            log.append(("received", (await receive())["type"], trio.current_time()))
            try:
                await send({"type": "http.response.start", "status": 200})
            except OSError as exc:
                log.append(("send raised", type(exc), trio.current_time()))
            await asyncio.sleep(cleanup_seconds)
            log.append(("cleaned up", None, trio.current_time()))
        except asyncio.CancelledError:
            log.append(("cancelled", None, trio.current_time()))
            raise

    return app


async def test_asyncio_app_is_cancelled_when_the_grace_period_ends(autojump_clock):
    # asyncio's timers run on trio's clock under trio-asyncio, so the mock
    # clock jumps over asyncio.sleep() as it does over trio.sleep().
    log = []
    app = cleanup_app(log, cleanup_seconds=100)
    async with open_memory_server(app, loop="asyncio", disconnect_grace_period=3) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            await trio.sleep(1)
        await trio.sleep(10)
        assert [entry[:2] for entry in log] == [
            ("received", "http.disconnect"),
            ("send raised", triasgi.ClientDisconnected),
            ("cancelled", None),
        ]
        assert log[0][2] == pytest.approx(1)
        assert log[-1][2] - log[0][2] == pytest.approx(3)


async def test_asyncio_app_within_the_grace_period_is_not_cancelled(autojump_clock):
    log = []
    app = cleanup_app(log, cleanup_seconds=2.5)
    async with open_memory_server(app, loop="asyncio", disconnect_grace_period=3) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            await trio.sleep(1)
        await trio.sleep(10)
        assert [entry[0] for entry in log] == ["received", "send raised", "cleaned up"]


async def test_graceful_shutdown_timeout_cancels_the_asyncio_task(autojump_clock):
    log = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        try:
            await asyncio.sleep(1000)
        except asyncio.CancelledError:
            log.append(("cancelled", trio.current_time()))
            raise

    async with open_memory_server(app, loop="asyncio", timeout_graceful_shutdown=30) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            await trio.sleep(1)
            server.shutdown()
            assert await stream.receive_some() == b""
            assert trio.current_time() == pytest.approx(31)
    assert log == [("cancelled", pytest.approx(31))]


async def test_starlette_sees_the_disconnect_on_asyncio(autojump_clock):
    # Request.is_disconnected() calls receive() in an already-cancelled anyio
    # scope: the disconnect reaches it at its next poll after the one that
    # fetched it.
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    seen = []

    async def poll(request):
        await request.body()
        while not await request.is_disconnected():
            await asyncio.sleep(1)
        seen.append(trio.current_time())
        return Response()

    app = Starlette(routes=[Route("/", poll)])
    async with open_memory_server(app, loop="asyncio", disconnect_grace_period=30) as server:
        async with open_memory_connection(server) as stream:
            await stream.send_all(REQUEST)
            await trio.sleep(2.5)
        await trio.sleep(10)
    assert len(seen) == 1
    assert 3 <= seen[0] <= 4


async def test_tasks_the_app_leaves_running_end_with_the_server(autojump_clock):
    log = []

    async def background():
        try:
            await asyncio.sleep(1000)
        except asyncio.CancelledError:
            log.append("background task cancelled")
            raise

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        app.task = asyncio.create_task(background())
        await send_text(send, "started")

    async with open_memory_server(app, loop="asyncio") as server, \
            open_memory_connection(server) as stream:
        await stream.send_all(REQUEST)
        assert (await stream.receive_some()).endswith(b"started")
        await trio.sleep(5)
        assert log == []
    assert log == ["background task cancelled"]
    assert app.task.cancelled()


async def test_send_after_the_app_call_returned_raises(autojump_clock):
    log = []

    async def late(send):
        await asyncio.sleep(1)
        try:
            await send({"type": "http.response.body", "body": b"late"})
        except RuntimeError as exc:
            log.append(str(exc))

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        app.task = asyncio.create_task(late(send))
        await send_text(send, "on time")

    async with open_memory_server(app, loop="asyncio") as server, \
            open_memory_connection(server) as stream:
        await stream.send_all(REQUEST)
        assert (await stream.receive_some()).endswith(b"on time")
        await trio.sleep(5)
    assert log == ["receive() or send() was called after the ASGI app call had returned."]


async def test_an_unhandled_asyncio_error_is_logged_and_serving_goes_on(caplog):
    def broken():
        raise ZeroDivisionError("in a callback")

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        asyncio.get_running_loop().call_soon(broken)
        await asyncio.sleep(0)
        await send_text(send, "fine")

    async with open_server(app, loop="asyncio") as server, httpx.AsyncClient() as client:
        first = await client.get(server.url)
        second = await client.get(server.url)
    assert (first.text, second.text) == ("fine", "fine")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors
    assert all(r.getMessage().startswith("asyncio: Exception in callback") for r in errors)
    assert isinstance(errors[0].exc_info[1], ZeroDivisionError)


# -- mismatches ----------------------------------------------------------------


async def test_asyncio_app_on_trio_gets_500_and_a_hint(caplog):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await asyncio.sleep(0.01)

    async with open_server(app) as server, httpx.AsyncClient() as client:
        response = await client.get(server.url)
    assert response.status_code == 500
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    # The hint, then the traceback.
    assert errors[0].getMessage() == ASYNCIO_HINT
    assert str(errors[1].exc_info[1]) == "no running event loop"


async def test_quart_app_on_trio_fails_to_start_with_the_hint(caplog):
    # Quart reports its lifespan error as lifespan.startup.failed, text only.
    with pytest.raises(triasgi.StartupError) as info:
        await triasgi.serve(
            quart_app(), triasgi.Config(port=0, lifespan="on", loop="trio")
        )
    assert str(info.value) == "Lifespan startup failed: no running event loop"
    assert ASYNCIO_HINT in [r.getMessage() for r in caplog.records]


async def test_an_ordinary_app_error_gets_no_hint(caplog):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        raise RuntimeError("a bug of the app's own")

    async with open_server(app) as server, httpx.AsyncClient() as client:
        response = await client.get(server.url)
    assert response.status_code == 500
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert str(errors[0].exc_info[1]) == "a bug of the app's own"


async def test_trio_app_on_asyncio_gets_500_and_a_hint(caplog):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await trio.sleep(0.01)

    async with open_server(app, loop="asyncio") as server, httpx.AsyncClient() as client:
        response = await client.get(server.url)
    assert response.status_code == 500
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert messages[0] == (
        "The app awaited trio code while running as asyncio code: serve it without "
        "--loop asyncio."
    )


async def test_without_trio_asyncio_the_server_does_not_start(monkeypatch):
    monkeypatch.setitem(sys.modules, "trio_asyncio", None)
    config = triasgi.Config(port=0, loop="asyncio")
    with pytest.raises(triasgi.StartupError) as info:
        await triasgi.serve(asyncio_only_app(), config)
    assert str(info.value) == (
        "--loop asyncio needs the trio-asyncio package: pip install 'triasgi[asyncio]'."
    )


def test_the_command_without_trio_asyncio_exits_non_zero_with_one_sentence(tmp_path):
    (tmp_path / "myapp.py").write_text("async def app(scope, receive, send): pass\n")
    code = (
        "import sys; sys.modules['trio_asyncio'] = None\n"
        "from triasgi._cli import main\n"
        "main(['myapp:app', '--port', '0', '--loop', 'asyncio'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, timeout=30,
        text=True,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: --loop asyncio needs the trio-asyncio package: "
        "pip install 'triasgi[asyncio]'."
    )
    assert "Traceback" not in result.stderr


WORKER_APP = """
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.01)
    loop = type(asyncio.get_running_loop()).__name__
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": f"{loop} {os.getpid()}".encode()})
"""


async def test_workers_run_the_app_on_asyncio(tmp_path):
    (tmp_path / "aioapp.py").write_text(WORKER_APP)
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "triasgi", "aioapp:app", "--workers", "2",
         "--loop", "asyncio", "--port", "0", "--no-access-log"],
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = b""

    async def read_stderr_until(pattern):
        nonlocal stderr
        while not (match := re.search(pattern, stderr)):
            chunk = await process.stderr.receive_some()
            assert chunk, stderr.decode()
            stderr += chunk
        return match

    try:
        with trio.fail_after(20):
            url = (await read_stderr_until(rb"Listening on (http://\S+)")).group(1)
            async with httpx.AsyncClient() as client:
                response = await client.get(url.decode())
            process.send_signal(signal.SIGINT)
            await read_stderr_until(rb"Supervisor stopped")
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()
    loop, pid = response.text.split()
    assert loop == "TrioEventLoop"
    assert int(pid) != process.pid


# -- frameworks ----------------------------------------------------------------


def quart_app():
    quart = pytest.importorskip("quart")
    app = quart.Quart(__name__)

    @app.before_serving
    async def startup():
        app.ready = asyncio.get_running_loop() is not None

    @app.websocket("/ws")
    async def ws():
        await quart.websocket.accept()
        while (text := await quart.websocket.receive()) != "bye":
            await asyncio.sleep(0)
            await quart.websocket.send(text.upper())
        await quart.websocket.close(1000)

    @app.post("/echo")
    async def echo():
        data = await quart.request.get_json()
        await asyncio.sleep(0.01)
        return {"echo": data, "ready": app.ready}

    return app


async def test_quart_app_over_http():
    async with open_server(quart_app(), loop="asyncio") as server, \
            httpx.AsyncClient() as client:
        response = await client.post(server.url + "/echo", json={"a": [1, 2]})
        missing = await client.get(server.url + "/nowhere")
    assert response.status_code == 200
    assert response.json() == {"echo": {"a": [1, 2]}, "ready": True}
    assert missing.status_code == 404


async def test_quart_app_over_websocket():
    async with open_server(quart_app(), loop="asyncio") as server, \
            websockets_connect(server.ws_url + "/ws", proxy=None) as ws:
        replies = []
        for text in ["hello", "again"]:
            await ws.send(text)
            replies.append(await ws.recv())
        await ws.send("bye")
        with pytest.raises(websockets.ConnectionClosedOK):
            await ws.recv()
    assert replies == ["HELLO", "AGAIN"]
    assert ws.close_code == 1000


def django_app(monkeypatch):
    pytest.importorskip("django")
    from django.conf import settings

    urls = types.ModuleType("triasgi_test_django_urls")

    async def async_view(request):
        await asyncio.sleep(0.01)
        return JsonResponse({"view": "async", "method": request.method,
                             "body": request.body.decode()})

    def sync_view(request):
        return JsonResponse({
            "view": "sync",
            "in_thread": threading.current_thread() is not threading.main_thread(),
        })

    from django.http import JsonResponse
    from django.urls import path

    urls.urlpatterns = [path("async", async_view), path("sync", sync_view)]
    monkeypatch.setitem(sys.modules, urls.__name__, urls)
    if not settings.configured:
        settings.configure(
            DEBUG=False, SECRET_KEY="test", ALLOWED_HOSTS=["*"],
            ROOT_URLCONF=urls.__name__, MIDDLEWARE=[], INSTALLED_APPS=[],
        )
    from django.core.asgi import get_asgi_application

    return get_asgi_application()


async def test_django_async_and_sync_views(monkeypatch):
    app = django_app(monkeypatch)
    async with open_server(app, loop="asyncio", lifespan="off") as server, \
            httpx.AsyncClient() as client:
        async_reply = await client.post(server.url + "/async", content=b"payload")
        sync_reply = await client.get(server.url + "/sync")
    assert async_reply.status_code == 200
    assert async_reply.json() == {"view": "async", "method": "POST", "body": "payload"}
    assert sync_reply.status_code == 200
    assert sync_reply.json() == {"view": "sync", "in_thread": True}
