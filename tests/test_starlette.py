"""A real Starlette app served end to end, with httpx as the client."""

from __future__ import annotations

import contextlib

import httpx
import pytest
import trio
from conftest import connect, read_until_closed
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from triasgi.testing import open_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")


def make_app(log):
    async def plain(request: Request):
        return PlainTextResponse("plain text")

    async def json(request: Request):
        return JSONResponse({
            "path": request.url.path,
            "q": request.query_params["q"],
            "started": request.state.started,
        })

    async def echo(request: Request):
        return PlainTextResponse(await request.body())

    async def stream(request: Request):
        async def chunks():
            for i in range(5):
                yield f"chunk{i};"
                await trio.lowlevel.checkpoint()

        return StreamingResponse(chunks(), media_type="text/plain")

    async def background(request: Request):
        async def task():
            await trio.sleep(0.05)
            log.append("background done")

        return PlainTextResponse("queued", background=BackgroundTask(task))

    async def watch(request: Request):
        with trio.move_on_after(5):
            while not await request.is_disconnected():
                await trio.sleep(0.01)
            log.append("disconnect seen")
        return PlainTextResponse("bye")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        log.append("startup")
        yield {"started": True}
        log.append("shutdown")

    return Starlette(
        routes=[
            Route("/plain", plain),
            Route("/json", json),
            Route("/echo", echo, methods=["POST"]),
            Route("/stream", stream),
            Route("/background", background),
            Route("/watch", watch),
        ],
        lifespan=lifespan,
    )


async def test_starlette_responses_end_to_end():
    log = []
    async with open_server(make_app(log)) as server, \
            httpx.AsyncClient(base_url=server.url) as client:
        plain = await client.get("/plain")
        json = await client.get("/json", params={"q": "a b"})
        echo = await client.post("/echo", content=b"x" * 100_000)
        streamed = await client.get("/stream")
        background = await client.get("/background")
    assert plain.status_code == 200
    assert plain.text == "plain text"
    assert plain.headers["server"] == "triasgi"
    assert json.json() == {"path": "/json", "q": "a b", "started": True}
    assert echo.content == b"x" * 100_000
    assert streamed.text == "".join(f"chunk{i};" for i in range(5))
    assert streamed.headers["transfer-encoding"] == "chunked"
    assert background.text == "queued"
    # The background task ran to completion before the server finished.
    assert log == ["startup", "background done", "shutdown"]


async def test_starlette_is_disconnected_sees_the_client_leave():
    log = []
    async with open_server(make_app(log)) as server:
        stream = await connect(server)
        await stream.send_all(b"GET /watch HTTP/1.1\r\nhost: a\r\n\r\n")
        await trio.sleep(0.05)
        await stream.aclose()
        with trio.fail_after(5):
            while "disconnect seen" not in log:
                await trio.sleep(0.01)
    assert log == ["startup", "disconnect seen", "shutdown"]


async def test_connection_closes_while_a_background_task_runs_on():
    # The client of a response with Connection: close gets its EOF at once,
    # not when the BackgroundTask ends; the task still runs to its end.
    log = []
    release = trio.Event()

    async def slow(request: Request):
        async def task():
            await release.wait()
            log.append("background done")

        return PlainTextResponse("queued", background=BackgroundTask(task))

    app = Starlette(routes=[Route("/slow", slow)])
    async with open_server(app) as server:
        stream = await connect(server)
        await stream.send_all(
            b"GET /slow HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n"
        )
        with trio.fail_after(5):
            response = await read_until_closed(stream)
        assert response.startswith(b"HTTP/1.1 200 ")
        assert response.endswith(b"\r\n\r\nqueued")
        assert log == []
        release.set()
        with trio.fail_after(5):
            while not log:
                await trio.sleep(0.01)
    assert log == ["background done"]
