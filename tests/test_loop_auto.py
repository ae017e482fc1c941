"""--loop auto (the default): real Django, Quart and Starlette apps served by the
real command with no loop option, and what the startup line says."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import httpx
import pytest
import trio
from websockets.trio.client import connect as websockets_connect

import triasgi
from triasgi._serve._loop_choice import choose_loop

pytest.importorskip("trio_asyncio")

DJANGO_SETTINGS = """
SECRET_KEY = "test"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "mysite.urls"
INSTALLED_APPS = []
MIDDLEWARE = []
"""

DJANGO_URLS = """
import asyncio
import threading

from django.http import JsonResponse
from django.urls import path


async def async_view(request):
    await asyncio.sleep(0.01)
    return JsonResponse({"view": "async", "body": request.body.decode()})


def sync_view(request):
    return JsonResponse({
        "view": "sync",
        "in_thread": threading.current_thread() is not threading.main_thread(),
    })


urlpatterns = [path("async", async_view), path("sync", sync_view)]
"""

DJANGO_ASGI = """
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from django.core.asgi import get_asgi_application

application = get_asgi_application()


class Timing:
    "Middleware of the project's own, wrapping the Django app."

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        await self.app(scope, receive, send)


wrapped = Timing(application)
"""

QUART_APP = """
import asyncio

import quart

app = quart.Quart(__name__)


@app.before_serving
async def startup():
    app.loop_name = type(asyncio.get_running_loop()).__name__


@app.post("/echo")
async def echo():
    data = await quart.request.get_json()
    await asyncio.sleep(0.01)
    return {"echo": data, "loop": app.loop_name}


@app.websocket("/ws")
async def ws():
    await quart.websocket.accept()
    text = await quart.websocket.receive()
    await asyncio.sleep(0)
    await quart.websocket.send(text.upper())
"""

STARLETTE_APP = """
import sniffio
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def library(request):
    return PlainTextResponse(sniffio.current_async_library())


app = Starlette(routes=[Route("/", library)])
"""

PLAIN_APP = """
import sniffio


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body",
                "body": sniffio.current_async_library().encode()})
"""


@pytest.fixture
def project(tmp_path):
    site = tmp_path / "mysite"
    site.mkdir()
    (site / "__init__.py").write_text("")
    (site / "settings.py").write_text(DJANGO_SETTINGS)
    (site / "urls.py").write_text(DJANGO_URLS)
    (site / "asgi.py").write_text(DJANGO_ASGI)
    (tmp_path / "quartapp.py").write_text(QUART_APP)
    (tmp_path / "starletteapp.py").write_text(STARLETTE_APP)
    (tmp_path / "plainapp.py").write_text(PLAIN_APP)
    return tmp_path


class Triasgi:
    """``python -m triasgi ARGS`` in the project directory."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stderr = b""

    async def read_stderr_until(self, pattern: bytes) -> re.Match[bytes]:
        with trio.fail_after(20):
            while not (match := re.search(pattern, self.stderr)):
                chunk = await self.process.stderr.receive_some()
                if not chunk:
                    raise AssertionError(f"triasgi exited: {self.stderr.decode()}")
                self.stderr += chunk
        return match

    async def url(self) -> str:
        return (await self.read_stderr_until(rb"Listening on (http://\S+)")).group(1).decode()

    def loop_line(self) -> str:
        match = re.search(rb"Running the app on [^\n]*", self.stderr)
        assert match, self.stderr.decode()
        return match.group(0).decode()

    async def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            while chunk := await self.process.stderr.receive_some():
                self.stderr += chunk
            return await self.process.wait()


@pytest.fixture
async def start(project):
    started = []

    async def start(*args: str, env: dict[str, str] | None = None) -> Triasgi:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "triasgi", *args, "--port", "0"],
            cwd=project, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
        )
        started.append(Triasgi(process))
        return started[-1]

    yield start
    for running in started:
        if running.process.returncode is None:
            running.process.kill()
            await running.process.wait()
        await running.process.stderr.aclose()


@pytest.mark.parametrize("app", ["mysite.asgi:application", "mysite.asgi:wrapped"])
async def test_django_app_is_served_on_asyncio_with_no_loop_option(start, app):
    triasgi_ = await start(app)
    url = await triasgi_.url()
    async with httpx.AsyncClient() as client:
        async_reply = await client.post(url + "/async", content=b"payload")
        sync_reply = await client.get(url + "/sync")
    assert await triasgi_.stop() == 0
    assert async_reply.status_code == 200
    assert async_reply.json() == {"view": "async", "body": "payload"}
    assert sync_reply.json() == {"view": "sync", "in_thread": True}
    inside = ", inside mysite.asgi.Timing" if app.endswith("wrapped") else ""
    assert triasgi_.loop_line() == (
        "Running the app on asyncio (trio-asyncio): --loop auto, and it is a Django "
        f"app (django.core.handlers.asgi.ASGIHandler{inside}), which needs asyncio "
        "(--loop trio forces trio)."
    )


async def test_quart_app_is_served_on_asyncio_with_no_loop_option(start):
    triasgi_ = await start("quartapp:app")
    url = await triasgi_.url()
    async with httpx.AsyncClient() as client:
        reply = await client.post(url + "/echo", json={"a": [1, 2]})
    async with websockets_connect(url.replace("http", "ws") + "/ws", proxy=None) as ws:
        await ws.send("hello")
        echoed = await ws.recv()
    assert await triasgi_.stop() == 0
    assert reply.status_code == 200
    assert reply.json() == {"echo": {"a": [1, 2]}, "loop": "TrioEventLoop"}
    assert echoed == "HELLO"
    assert "it is a Quart app (quart.app.Quart), which needs asyncio" in triasgi_.loop_line()


@pytest.mark.parametrize(
    ("app", "why"),
    [
        ("starletteapp:app", "--loop auto, and it is a Starlette app "
         "(starlette.applications.Starlette), which runs on anyio."),
        ("plainapp:app", "--loop auto, and it is not an app of an asyncio-only "
         "framework (--loop asyncio serves an app that needs asyncio)."),
    ],
)
async def test_anyio_and_plain_apps_are_served_on_trio(start, app, why):
    triasgi_ = await start(app)
    url = await triasgi_.url()
    async with httpx.AsyncClient() as client:
        reply = await client.get(url + "/")
    assert await triasgi_.stop() == 0
    assert reply.text == "trio"
    assert triasgi_.loop_line() == f"Running the app on trio: {why}"


@pytest.mark.parametrize(
    ("args", "env", "loop"),
    [
        (["--loop", "trio"], {}, "trio"),
        ([], {"TRIASGI_LOOP": "trio"}, "trio"),
        (["--loop", "asyncio"], {}, "asyncio (trio-asyncio)"),
    ],
)
async def test_loop_trio_and_loop_asyncio_force_either(start, args, env, loop):
    # The plain app answers with the library it runs on; forced to asyncio
    # it answers "asyncio", forced to trio "trio".
    triasgi_ = await start("plainapp:app", *args, env=env)
    url = await triasgi_.url()
    async with httpx.AsyncClient() as client:
        reply = await client.get(url + "/")
    assert await triasgi_.stop() == 0
    assert reply.text == loop.split()[0]
    forced = args[-1] if args else env["TRIASGI_LOOP"]
    assert triasgi_.loop_line() == f"Running the app on {loop}: --loop {forced}."


async def test_quart_forced_onto_trio_fails_at_startup_with_the_hint(start):
    triasgi_ = await start("quartapp:app", "--loop", "trio")
    with trio.fail_after(20):
        while chunk := await triasgi_.process.stderr.receive_some():
            triasgi_.stderr += chunk
    assert await triasgi_.process.wait() == 1
    assert b"serve it with --loop asyncio" in triasgi_.stderr


async def test_asyncio_app_without_trio_asyncio_is_one_sentence(start, project):
    blocker = project / "no-trio-asyncio"
    blocker.mkdir()
    (blocker / "trio_asyncio.py").write_text("raise ImportError('not installed')\n")
    triasgi_ = await start("quartapp:app", env={"PYTHONPATH": str(blocker)})
    with trio.fail_after(20):
        while chunk := await triasgi_.process.stderr.receive_some():
            triasgi_.stderr += chunk
    assert await triasgi_.process.wait() == 1
    stderr = triasgi_.stderr.decode()
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == (
        "Error: The app is a Quart app (quart.app.Quart), which needs asyncio: "
        "install trio-asyncio with pip install 'triasgi[asyncio]' (or force trio "
        "with --loop trio)."
    )


# -- recognising the app object (no server) -------------------------------------


def test_an_asyncio_app_anywhere_in_a_middleware_chain_wins():
    quart = pytest.importorskip("quart")
    from starlette.middleware.cors import CORSMiddleware

    inner = quart.Quart("inner")
    wrapped = CORSMiddleware(CORSMiddleware(inner, allow_origins=["*"]), allow_origins=["*"])
    choice = choose_loop(wrapped, "auto")
    assert choice.loop == "asyncio"
    assert choice.framework == (
        "a Quart app (quart.app.Quart, inside starlette.middleware.cors.CORSMiddleware)"
    )


def test_a_property_named_app_is_not_run():
    class Wrapper:
        @property
        def app(self):
            raise AssertionError("a property was evaluated")

        async def __call__(self, scope, receive, send):
            pass

    assert choose_loop(Wrapper(), "auto").loop == "trio"


async def test_serve_takes_loop_auto_from_config():
    quart = pytest.importorskip("quart")
    app = quart.Quart("served")

    @app.get("/")
    async def index():
        return "on asyncio"

    from triasgi.testing import open_server

    assert triasgi.Config().loop == "auto"
    async with open_server(app) as server, httpx.AsyncClient() as client:
        reply = await client.get(server.url + "/")
    assert reply.text == "on asyncio"

