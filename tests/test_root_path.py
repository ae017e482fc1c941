"""--root-path: the root path is part of the ASGI path, as in uvicorn and the spec.

Behind nginx, see tests/test_nginx.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import httpx
import pytest
import trio
from websockets.trio.client import connect as websockets_connect

from triasgi._asgi._scope import mount

FASTAPI_APP = """
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import RedirectResponse

app = FastAPI()


def seen(scope, url):
    return {"path": scope["path"], "raw_path": scope["raw_path"].decode(),
            "root_path": scope["root_path"], "url": str(url)}


@app.get("/items/{item_id}")
async def item(item_id: int, request: Request):
    return {**seen(request.scope, request.url), "item_id": item_id,
            "url_for": str(request.url_for("item", item_id=item_id))}


@app.get("/moved")
async def moved(request: Request):
    return RedirectResponse(request.url_for("item", item_id=7))


@app.websocket("/ws")
async def ws(websocket: WebSocket):
    await websocket.accept()
    await websocket.send_json(seen(websocket.scope, websocket.url))
    await websocket.close()
"""


class Triasgi:
    """``python -m triasgi ARGS --port 0`` in a directory, until stopped."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stderr = b""
        self.stopped = False

    @classmethod
    async def start(cls, cwd, *args: str) -> Triasgi:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", "triasgi", *args, "--port", "0"],
            cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, env=dict(os.environ),
        )
        return cls(process)

    async def url(self) -> str:
        with trio.fail_after(20):
            while not (match := re.search(rb"Listening on (https?://\S+)", self.stderr)):
                chunk = await self.process.stderr.receive_some()
                if not chunk:
                    raise AssertionError(f"triasgi exited: {self.stderr.decode()}")
                self.stderr += chunk
        return match.group(1).decode()

    async def stop(self) -> int:
        """SIGINT, then the exit status; again, the same status."""
        if self.stopped:
            return self.process.returncode
        self.stopped = True
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            while chunk := await self.process.stderr.receive_some():
                self.stderr += chunk
            code = await self.process.wait()
        await self.process.stderr.aclose()
        return code

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


@pytest.fixture
async def fastapi_at_api(tmp_path):
    """A FastAPI app served by the command with --root-path /api; its URL."""
    pytest.importorskip("fastapi")
    (tmp_path / "fastapiapp.py").write_text(FASTAPI_APP)
    triasgi_ = await Triasgi.start(tmp_path, "fastapiapp:app", "--root-path", "/api")
    try:
        yield await triasgi_.url()
    finally:
        try:
            assert await triasgi_.stop() == 0, triasgi_.stderr.decode()
        finally:
            triasgi_.kill()


@pytest.mark.parametrize(
    ("path", "raw_path", "root_path", "expected"),
    [
        # A proxy that strips the prefix: put it back.
        ("/items/3", b"/items/3", "/api", ("/api/items/3", b"/api/items/3", "/api")),
        ("/", b"/", "/api", ("/api/", b"/api/", "/api")),
        # A proxy that keeps it: never doubled.
        ("/api/items/3", b"/api/items/3", "/api", ("/api/items/3", b"/api/items/3", "/api")),
        ("/api", b"/api", "/api", ("/api", b"/api", "/api")),
        # Only a whole segment is the prefix.
        ("/apiary", b"/apiary", "/api", ("/api/apiary", b"/api/apiary", "/api")),
        # A trailing slash of the root path is dropped.
        ("/items", b"/items", "/api/", ("/api/items", b"/api/items", "/api")),
        ("/items", b"/items", "/", ("/items", b"/items", "")),
        # raw_path stays percent-encoded.
        ("/a b", b"/a%20b", "/café", ("/café/a b", b"/caf%C3%A9/a%20b", "/café")),
    ],
)
def test_mount_puts_the_root_path_in_front_once(path, raw_path, root_path, expected):
    assert mount(path, raw_path, root_path) == expected


async def test_fastapi_behind_a_prefix_stripping_proxy_sees_the_whole_path(
    fastapi_at_api,
):
    async with httpx.AsyncClient() as client:
        stripped = (await client.get(fastapi_at_api + "/items/3?x=1")).json()
        kept = (await client.get(fastapi_at_api + "/api/items/3?x=1")).json()
        moved = await client.get(fastapi_at_api + "/moved")
    host = fastapi_at_api.removeprefix("http://")
    assert stripped == {
        "path": "/api/items/3", "raw_path": "/api/items/3", "root_path": "/api",
        "url": f"http://{host}/api/items/3?x=1", "item_id": 3,
        "url_for": f"http://{host}/api/items/3",
    }
    assert kept == stripped
    assert moved.status_code == 307
    assert moved.headers["location"] == f"http://{host}/api/items/7"


async def test_websocket_gets_the_root_path_in_its_path_too(fastapi_at_api):
    ws_url = fastapi_at_api.replace("http://", "ws://")
    for path in ("/ws", "/api/ws"):
        async with websockets_connect(ws_url + path, proxy=None) as ws:
            seen = json.loads(await ws.recv())
        assert seen["path"] == "/api/ws"
        assert seen["raw_path"] == "/api/ws"
        assert seen["url"] == ws_url + "/api/ws"
