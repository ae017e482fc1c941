"""HTTP/2 with real clients on real sockets: httpx (TLS + ALPN, and prior
knowledge), curl, and the h2 library; HTTP/1.1 still served beside it."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import httpx
import pytest
import trio
import trustme
from conftest import H11Client, connect
from h2client import H2Client

from triasgi.testing import open_server


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def tls_files(ca, tmp_path_factory):
    folder = tmp_path_factory.mktemp("h2tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = (
        folder / "cert.pem",
        folder / "key.pem",
        folder / "ca.pem",
    )
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    return {"certfile": str(certfile), "keyfile": str(keyfile), "cafile": str(cafile)}


async def version_app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    tls = scope["extensions"].get("tls")
    text = f"{scope['http_version']} {scope['scheme']} {len(body)} {tls is not None}"
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": text.encode()})


async def test_httpx_over_tls_negotiates_h2_by_alpn(ca, tls_files):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with open_server(
        version_app,
        ssl_certfile=tls_files["certfile"],
        ssl_keyfile=tls_files["keyfile"],
    ) as server:
        url = f"https://127.0.0.1:{server.port}"
        async with httpx.AsyncClient(http2=True, verify=context) as client:
            replies = []
            async with trio.open_nursery() as nursery:

                async def one(i: int) -> None:
                    replies.append(await client.post(f"{url}/{i}", content=b"x" * i))

                for i in range(10):
                    nursery.start_soon(one, i)
            assert all(r.http_version == "HTTP/2" for r in replies)
            assert sorted(r.text for r in replies) == sorted(
                f"2 https {i} True" for i in range(10)
            )
        # A client that offers only HTTP/1.1 gets HTTP/1.1.
        async with httpx.AsyncClient(http2=False, verify=context) as client:
            reply = await client.get(url)
            assert reply.http_version == "HTTP/1.1"
            assert reply.text == "1.1 https 0 True"


async def test_no_http2_over_tls_offers_only_http11(ca, tls_files):
    context = ssl.create_default_context()
    ca.configure_trust(context)
    async with open_server(
        version_app,
        ssl_certfile=tls_files["certfile"],
        ssl_keyfile=tls_files["keyfile"],
        http2=False,
    ) as server:
        async with httpx.AsyncClient(http2=True, verify=context) as client:
            reply = await client.get(f"https://127.0.0.1:{server.port}/")
            assert reply.http_version == "HTTP/1.1"


async def test_prior_knowledge_on_a_socket_beside_http11():
    async with open_server(version_app) as server:
        async with httpx.AsyncClient(http1=False, http2=True) as client:
            reply = await client.get(server.url)
            assert reply.http_version == "HTTP/2"
            assert reply.text == "2 http 0 False"
        h11_client = H11Client(await connect(server))
        reply = await h11_client.request_response("GET", "/")
        assert reply.body == b"1.1 http 0 False"


async def test_h2_client_many_streams_on_a_socket():
    async with open_server(version_app) as server:
        client = H2Client(await connect(server))
        await client.start()
        sids = [
            await client.request("POST", f"/{i}", body=b"y" * 1000 * i)
            for i in range(30)
        ]
        for i, sid in enumerate(sids):
            reply = await client.response(sid)
            assert reply.body == f"2 http {1000 * i} False".encode()


curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args],
        capture_output=True,
        text=True,
        check=False,
    )


@curl
async def test_curl_prior_knowledge_and_tls(ca, tls_files):
    async with open_server(version_app) as server:
        result = await trio.to_thread.run_sync(
            _curl,
            "--http2-prior-knowledge",
            "-w",
            " %{http_version}",
            "--data-binary",
            "hello",
            f"{server.url}/x",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "2 http 5 False 2"
    async with open_server(
        version_app,
        ssl_certfile=tls_files["certfile"],
        ssl_keyfile=tls_files["keyfile"],
    ) as server:
        result = await trio.to_thread.run_sync(
            _curl,
            "--http2",
            "--cacert",
            tls_files["cafile"],
            "-w",
            " %{http_version}",
            f"https://localhost:{server.port}/",
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == "2 https 0 True 2"


async def test_triasgi_client_runs_an_apps_tests_over_http2(triasgi_client):
    seen = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        seen.append((scope["http_version"], scope["client"]))
        await trio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": b"ok"})

    client = await triasgi_client(app, http2=True)
    replies = []
    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(lambda: _append(replies, client.get("/")))
    assert [r.http_version for r in replies] == ["HTTP/2"] * 5
    # Five streams of one connection.
    assert {version for version, _ in seen} == {"2"}
    assert len({client_address for _, client_address in seen}) == 1
    plain = await triasgi_client(app)
    assert (await plain.get("/")).http_version == "HTTP/1.1"


async def _append(replies, awaitable):
    replies.append(await awaitable)
