"""Integration: triasgi behind a real nginx, over TCP and over a Unix socket.

These run with the rest of the suite whenever nginx is installed (Debian:
``apt-get install nginx``; ``.ci/run`` installs it) and are skipped
otherwise, except in CI (``CI`` set), where a missing nginx is a failure.

The client connects to nginx from 127.0.0.2, so the address the app sees
(127.0.0.2, from X-Forwarded-For) differs from the one triasgi's socket
sees (nginx on 127.0.0.1, or a Unix socket peer).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest
import trio
import wsproto
import wsproto.events
from conftest import H11Client
from test_root_path import FASTAPI_APP, Triasgi

from triasgi.testing import open_server

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
)
pytestmark = pytest.mark.skipif(
    NGINX is None and not os.environ.get("CI"),
    reason="nginx is not installed (apt-get install nginx)",
)

CLIENT_ADDRESS = "127.0.0.2"


async def app(scope, receive, send):
    if scope["type"] == "http":
        body = repr((scope["client"][0], scope["scheme"], scope["headers"][0][0])).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": repr((scope["client"][0], scope["scheme"]))})
        await send({"type": "websocket.close"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


NGINX_CONF = """
master_process off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
        }}
    }}
}}
"""


async def open_nginx(
    prefix: Path, upstream: str, template: str = NGINX_CONF
) -> tuple[trio.Process, int]:
    assert NGINX is not None, "CI needs nginx: .ci/run installs it"
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(template.format(prefix=prefix, port=port, upstream=upstream))
    process = await trio.lowlevel.open_process(
        [NGINX, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"],
        stdin=subprocess.DEVNULL,
    )
    with trio.fail_after(10):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                if process.poll() is not None:
                    raise AssertionError((prefix / "error.log").read_text()) from None
                await trio.sleep(0.05)
            else:
                await stream.aclose()
                return process, port


async def connect_from(address: str, port: int) -> trio.SocketStream:
    sock = trio.socket.socket()
    await sock.bind((address, 0))
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


@pytest.fixture(params=["tcp", "unix"])
async def behind_nginx(request, tmp_path):
    """The port of an nginx proxying to a triasgi server, over TCP or a Unix socket."""
    if request.param == "tcp":
        settings = {}
    else:
        settings = {"uds": str(tmp_path / "triasgi.sock")}
    async with open_server(app, **settings) as server:
        if request.param == "tcp":
            upstream = f"http://127.0.0.1:{server.port}"
        else:
            upstream = f"http://unix:{settings['uds']}:"
        process, port = await open_nginx(tmp_path, upstream)
        try:
            yield port
        finally:
            process.terminate()
            with trio.move_on_after(5) as scope:
                scope.shield = True
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()


async def test_http_app_sees_the_client_behind_nginx(behind_nginx):
    stream = await connect_from(CLIENT_ADDRESS, behind_nginx)
    async with stream:
        reply = await H11Client(stream).request_response("GET", "/")
    assert reply.status == 200
    assert reply.body == b"('127.0.0.2', 'http', b'host')"


async def test_forged_x_forwarded_for_through_nginx_is_not_believed(behind_nginx):
    stream = await connect_from(CLIENT_ADDRESS, behind_nginx)
    async with stream:
        reply = await H11Client(stream).request_response(
            "GET", "/", [("x-forwarded-for", "6.6.6.6"), ("x-forwarded-proto", "https")]
        )
    # nginx appends the real peer; 127.0.0.2 is not a trusted proxy, so the
    # client's own claim to the left of it is ignored.  X-Forwarded-Proto is
    # replaced by nginx with the scheme it really served.
    assert reply.body == b"('127.0.0.2', 'http', b'host')"


async def test_websocket_app_sees_the_client_behind_nginx(behind_nginx):
    stream = await connect_from(CLIENT_ADDRESS, behind_nginx)
    async with stream:
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        await stream.send_all(ws.send(wsproto.events.Request(host="localhost", target="/ws")))
        messages = []
        with trio.fail_after(10):
            while not any(isinstance(e, wsproto.events.CloseConnection) for e in messages):
                data = await stream.receive_some(65536)
                if not data:
                    break
                ws.receive_data(data)
                messages.extend(ws.events())
    assert isinstance(messages[0], wsproto.events.AcceptConnection), messages
    texts = [e.data for e in messages if isinstance(e, wsproto.events.TextMessage)]
    assert texts == ["('127.0.0.2', 'ws')"]


# -- --root-path behind a proxy that mounts the app under /api/ -----------------

# With a URI in proxy_pass (the trailing slash) nginx strips the location's
# prefix: /api/items/3 reaches triasgi as /items/3.  Without one it passes
# the path unchanged.
ROOT_PATH_CONF = NGINX_CONF.replace(
    "location / {{\n            proxy_pass {upstream};",
    "location /api/ {{\n            proxy_pass {upstream};",
).replace("proxy_set_header Host $host;", "proxy_set_header Host $http_host;")


async def stop_nginx(process: trio.Process) -> None:
    process.terminate()
    with trio.move_on_after(5) as scope:
        scope.shield = True
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


@pytest.mark.parametrize("prefix", ["stripped", "kept"])
async def test_fastapi_with_root_path_behind_nginx(tmp_path, prefix):
    pytest.importorskip("fastapi")
    from websockets.trio.client import connect as websockets_connect

    (tmp_path / "fastapiapp.py").write_text(FASTAPI_APP)
    triasgi_ = await Triasgi.start(tmp_path, "fastapiapp:app", "--root-path", "/api")
    try:
        upstream = await triasgi_.url() + ("/" if prefix == "stripped" else "")
        process, port = await open_nginx(tmp_path, upstream, ROOT_PATH_CONF)
        try:
            base = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient() as client:
                item = (await client.get(base + "/api/items/3?x=1")).json()
                moved = await client.get(base + "/api/moved")
            async with websockets_connect(
                f"ws://127.0.0.1:{port}/api/ws", proxy=None
            ) as ws:
                ws_seen = json.loads(await ws.recv())
        finally:
            await stop_nginx(process)
        assert await triasgi_.stop() == 0
    finally:
        triasgi_.kill()
    assert item == {
        "path": "/api/items/3", "raw_path": "/api/items/3", "root_path": "/api",
        "url": base + "/api/items/3?x=1", "item_id": 3,
        "url_for": base + "/api/items/3",
    }
    assert moved.status_code == 307
    assert moved.headers["location"] == base + "/api/items/7"
    assert ws_seen == {
        "path": "/api/ws", "raw_path": "/api/ws", "root_path": "/api",
        "url": f"ws://127.0.0.1:{port}/api/ws",
    }
