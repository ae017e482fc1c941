"""The lifespan protocol: startup before serving, state, failures, timeouts."""

from __future__ import annotations

import functools
import logging

import pytest
import trio
from conftest import H11Client, connect

from triasgi import Config, Server, StartupError, serve
from triasgi.testing import open_server


def lifespan_app(log, *, startup=None, shutdown=None):
    """Lifespan handlers given as coroutines; HTTP requests report the state."""

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            message = await receive()
            log.append(message["type"])
            if startup is not None:
                await startup(scope["state"], send)
            else:
                await send({"type": "lifespan.startup.complete"})
            message = await receive()
            log.append(message["type"])
            if shutdown is not None:
                await shutdown(scope["state"], send)
            else:
                await send({"type": "lifespan.shutdown.complete"})
            return
        state = scope["state"]
        log.append(("request", state.get("name"), list(state.get("hits", ["-"]))))
        state["name"] = "changed by request"
        state.setdefault("hits", []).append(1)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


async def test_startup_completes_before_serve_reports_started():
    log = []

    async def startup(state, send):
        await trio.sleep(0.05)
        state["name"] = "db"
        state["hits"] = []
        log.append("startup done")
        await send({"type": "lifespan.startup.complete"})

    async with open_server(lifespan_app(log, startup=startup)) as server:
        log.append("serving")
        client = H11Client(await connect(server))
        await client.request_response()
        await client.request_response()
        await client.stream.aclose()
    assert log[:3] == ["lifespan.startup", "startup done", "serving"]
    # Each request gets a shallow copy: its own top level, shared values.
    assert log[3] == ("request", "db", [])
    assert log[4] == ("request", "db", [1])
    assert log[5] == "lifespan.shutdown"


async def test_startup_failed_stops_the_server_with_the_apps_message():
    async def startup(state, send):
        await send({"type": "lifespan.startup.failed", "message": "database is down"})

    async with trio.open_nursery() as nursery:
        with pytest.raises(StartupError, match="database is down"):
            await nursery.start(serve, lifespan_app([], startup=startup),
                                Config(port=0, access_log=False))


async def test_exception_in_startup_with_lifespan_on_is_a_startup_error():
    async def startup(state, send):
        raise RuntimeError("no config file")

    async with trio.open_nursery() as nursery:
        with pytest.raises(StartupError, match="RuntimeError: no config file"):
            await nursery.start(serve, lifespan_app([], startup=startup),
                                Config(port=0, lifespan="on", access_log=False))


async def test_app_without_lifespan_support_is_served_in_auto_mode(caplog):
    async def app(scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"unsupported scope {scope['type']}")
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"served"})

    with caplog.at_level(logging.INFO, logger="triasgi"):
        async with open_server(app) as server:
            client = H11Client(await connect(server))
            assert (await client.request_response()).body == b"served"
            await client.stream.aclose()
    notes = [r.getMessage() for r in caplog.records if "lifespan" in r.getMessage()]
    assert len(notes) == 1
    assert "ValueError" in notes[0]


async def test_lifespan_off_never_calls_the_app_with_a_lifespan_scope():
    log = []
    async with open_server(lifespan_app(log), lifespan="off") as server:
        client = H11Client(await connect(server))
        await client.request_response()
        await client.stream.aclose()
    assert log == [("request", None, ["-"])]


async def test_startup_timeout(autojump_clock):
    async def startup(state, send):
        await trio.sleep_forever()

    server = Server(lifespan_app([], startup=startup),
                    Config(timeout_lifespan_startup=15, access_log=False))
    async with trio.open_nursery() as nursery:
        with pytest.raises(StartupError, match="within 15 seconds"):
            await nursery.start(functools.partial(server.run, listen=False))
    assert trio.current_time() == pytest.approx(15)


async def test_shutdown_timeout_cancels_the_lifespan_task(autojump_clock, caplog):
    log = []

    async def shutdown(state, send):
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            log.append("shutdown cancelled")
            raise

    server = Server(lifespan_app(log, shutdown=shutdown),
                    Config(timeout_lifespan_shutdown=20, access_log=False))
    async with trio.open_nursery() as nursery:
        await nursery.start(functools.partial(server.run, listen=False))
        server.shutdown()
    assert trio.current_time() == pytest.approx(20)
    assert log[-1] == "shutdown cancelled"
    assert any("did not complete within 20 seconds" in r.getMessage()
               for r in caplog.records)


async def test_shutdown_failed_is_logged(caplog):
    async def shutdown(state, send):
        await send({"type": "lifespan.shutdown.failed", "message": "flush failed"})

    async with open_server(lifespan_app([], shutdown=shutdown)):
        pass
    assert any(r.levelno == logging.ERROR and "flush failed" in r.getMessage()
               for r in caplog.records)
