"""The ASGI app every server in the benchmark serves, one route per scenario.

Plain ASGI with no framework, so that what is measured is the server, except
for the file route, which is Starlette's ``FileResponse`` as apps serve files.
Every response that can carry a ``content-length`` carries one, so that no
server is left to choose between framing it and chunking it.

Routes:
    ``GET /``: 14 bytes of text (hello GET; also what idle connections ask).
    ``GET /64k``: 64 KiB in one body message.
    ``GET /1m``: 1 MiB in one body message (the HTTP/2 download).
    ``POST /echo``: the request body back, read whole first.
    ``GET /stream``: ``STREAM_CHUNKS`` body messages of ``STREAM_CHUNK_SIZE``
    bytes each, so the server frames it (chunked encoding).
    ``GET /file-16m``: a 16 MiB file through Starlette's ``FileResponse``,
    which sends ``http.response.pathsend`` when the scope advertises the
    extension and reads the file into ``http.response.body`` messages of
    64 KiB otherwise.  The file is the one named by the ``TRIASGI_BENCH_FILE``
    environment variable (the harness writes it in its temporary directory);
    without it, the app writes one at first use in a temporary directory of
    its own and removes it at exit.  The ``x-pathsend`` header of the answer
    says whether the scope advertised the extension.
    WebSocket ``/ws``: every text or binary message echoed back.
"""

from __future__ import annotations

import atexit
import functools
import os
import random
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

HELLO = b"Hello, world!\n"
LARGE = bytes(range(256)) * 256  # 64 KiB
DOWNLOAD = LARGE * 16  # 1 MiB
STREAM_CHUNKS = 128
STREAM_CHUNK_SIZE = 64
_CHUNK = b"x" * (STREAM_CHUNK_SIZE - 1) + b"\n"
FILE_SIZE = 16 << 20  # 16 MiB
FILE_ENV = "TRIASGI_BENCH_FILE"
PATHSEND = "http.response.pathsend"
PATHSEND_HEADER = "x-pathsend"
_TEXT = b"text/plain; charset=utf-8"
_BINARY = b"application/octet-stream"


def _start(status: int, content_type: bytes, length: int | None) -> Message:
    headers = [(b"content-type", content_type)]
    if length is not None:
        headers.append((b"content-length", b"%d" % length))
    return {"type": "http.response.start", "status": status, "headers": headers}


async def _respond(send: Send, body: bytes, content_type: bytes = _TEXT) -> None:
    await send(_start(200, content_type, len(body)))
    await send({"type": "http.response.body", "body": body})


async def _echo(receive: Receive, send: Send) -> None:
    parts = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return  # the client went away
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    await _respond(send, b"".join(parts), _BINARY)


async def _stream(send: Send) -> None:
    await send(_start(200, _TEXT, None))
    for _ in range(STREAM_CHUNKS):
        await send({"type": "http.response.body", "body": _CHUNK, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@functools.lru_cache(maxsize=1)
def file_bytes() -> bytes:
    """What ``/file-16m`` serves: ``FILE_SIZE`` fixed pseudo-random bytes."""
    return random.Random(FILE_SIZE).randbytes(FILE_SIZE)


def write_file(path: Path) -> Path:
    """Write the file that ``/file-16m`` serves to ``path``; returns ``path``."""
    path.write_bytes(file_bytes())
    return path


@functools.lru_cache(maxsize=1)
def _served_file() -> str:
    given = os.environ.get(FILE_ENV)
    if given:
        return given
    directory = tempfile.mkdtemp(prefix="triasgi-bench-file-")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return str(write_file(Path(directory, "file-16m.bin")))


async def _file(scope: Scope, receive: Receive, send: Send) -> None:
    # Imported here so that the other routes need no Starlette.
    from starlette.responses import FileResponse

    advertised = PATHSEND in (scope.get("extensions") or {})
    response = FileResponse(
        _served_file(),
        media_type=_BINARY.decode(),
        headers={PATHSEND_HEADER: "1" if advertised else "0"},
    )
    # Starlette's Send takes a MutableMapping, this module's a dict.
    await response(scope, receive, send)  # type: ignore[arg-type]


async def _http(scope: Scope, receive: Receive, send: Send) -> None:
    path = scope["path"]
    if path == "/":
        await _respond(send, HELLO)
    elif path == "/64k":
        await _respond(send, LARGE, _BINARY)
    elif path == "/1m":
        await _respond(send, DOWNLOAD, _BINARY)
    elif path == "/echo" and scope["method"] == "POST":
        await _echo(receive, send)
    elif path == "/stream":
        await _stream(send)
    elif path == "/file-16m":
        await _file(scope, receive, send)
    else:
        await send(_start(404, _TEXT, 10))
        await send({"type": "http.response.body", "body": b"Not found\n"})


async def _websocket(scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    if scope["path"] != "/ws":
        await send({"type": "websocket.close", "code": 1008})
        return
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return  # websocket.disconnect
        text = message.get("text")
        if text is not None:
            await send({"type": "websocket.send", "text": text})
        else:
            await send({"type": "websocket.send", "bytes": message.get("bytes") or b""})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The benchmark app (see the module docstring for its routes)."""
    kind = scope["type"]
    if kind == "http":
        await _http(scope, receive, send)
    elif kind == "websocket":
        await _websocket(scope, receive, send)
    elif kind == "lifespan":
        await _lifespan(receive, send)
