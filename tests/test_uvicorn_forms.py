"""uvicorn's ways of writing option values, through the real command."""

from __future__ import annotations

import ssl
import subprocess
import sys

import httpx
import pytest
import trustme
from test_root_path import Triasgi
from websockets.trio.client import connect as websockets_connect

import triasgi

APP = """
async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close"})
        return
    if scope["type"] != "http":
        return
    tls = scope["extensions"].get("tls") or {}
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body",
                "body": str(tls.get("client_cert_name")).encode()})
"""


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "formsapp.py").write_text(APP)
    return tmp_path


@pytest.fixture
async def start(app_dir):
    started = []

    async def start(*args: str) -> Triasgi:
        started.append(await Triasgi.start(app_dir, *args))
        return started[-1]

    yield start
    for triasgi_ in started:
        triasgi_.kill()
        await triasgi_.stop()


@pytest.mark.parametrize(("number", "name"), [(0, "none"), (1, "optional"), (2, "required")])
def test_config_takes_the_numbers_of_ssl_cert_reqs(number, name):
    config = triasgi.Config(ssl_certfile="cert.pem", ssl_cert_reqs=number)
    assert config.ssl_cert_reqs == name
    assert triasgi.Config(ssl_certfile="c", ssl_cert_reqs=ssl.VerifyMode(number)).ssl_cert_reqs == name


async def test_ssl_cert_reqs_2_requires_a_client_certificate(start, app_dir):
    ca = trustme.CA()
    server_cert = ca.issue_cert("127.0.0.1")
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(app_dir / "server.pem"))
    ca.cert_pem.write_to_path(str(app_dir / "ca.pem"))
    triasgi_ = await start(
        "formsapp:app", "--ssl-certfile", "server.pem", "--ssl-ca-certs", "ca.pem",
        "--ssl-cert-reqs", "2",
    )
    url = await triasgi_.url()
    bare = ssl.create_default_context()
    ca.configure_trust(bare)
    with_cert = ssl.create_default_context()
    ca.configure_trust(with_cert)
    ca.issue_cert("bob@example.test", common_name="bob").configure_cert(with_cert)
    async with httpx.AsyncClient(verify=with_cert) as client:
        reply = await client.get(url + "/")
    async with httpx.AsyncClient(verify=bare) as client:
        with pytest.raises(httpx.HTTPError):
            await client.get(url + "/")
    assert await triasgi_.stop() == 0
    assert reply.text.startswith("CN=bob")


def test_ssl_cert_reqs_out_of_range_is_a_usage_error(app_dir):
    result = subprocess.run(
        [sys.executable, "-m", "triasgi", "formsapp:app", "--ssl-cert-reqs", "3"],
        cwd=app_dir, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 2
    assert "'3' is not one of 'none', 'optional', 'required'" in result.stderr


@pytest.mark.parametrize(
    ("args", "offered"),
    [
        # uvicorn's form, the value before the app and after it.
        (["--ws-per-message-deflate", "false", "formsapp:app"], False),
        (["formsapp:app", "--ws-per-message-deflate", "False"], False),
        (["formsapp:app", "--ws-per-message-deflate=0"], False),
        (["formsapp:app", "--ws-per-message-deflate", "true"], True),
        # triasgi's flags, alone.
        (["--ws-per-message-deflate", "formsapp:app"], True),
        (["formsapp:app", "--no-ws-per-message-deflate"], False),
    ],
)
async def test_ws_per_message_deflate_takes_a_value(start, args, offered):
    triasgi_ = await start(*args)
    url = await triasgi_.url()
    async with websockets_connect(url.replace("http", "ws") + "/", proxy=None) as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
    assert await triasgi_.stop() == 0
    assert (extensions is not None and "permessage-deflate" in extensions) is offered


async def test_a_flag_takes_a_value_too(start):
    triasgi_ = await start("formsapp:app", "--server-header", "false")
    url = await triasgi_.url()
    async with httpx.AsyncClient() as client:
        reply = await client.get(url + "/")
    assert await triasgi_.stop() == 0
    assert "server" not in reply.headers
