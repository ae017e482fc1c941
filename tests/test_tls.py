"""HTTPS: certificates from trustme, real TLS clients, mTLS, startup errors."""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio
import trustme
from conftest import H11Client, connect, read_until_closed

from triasgi import Config, StartupError, serve
from triasgi.testing import open_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cert_files(ca, tmp_path_factory):
    """Server certificate and key files for 127.0.0.1 and localhost."""
    folder = tmp_path_factory.mktemp("tls")
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile, cafile = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(certfile), append=True)
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    return {"certfile": str(certfile), "keyfile": str(keyfile), "cafile": str(cafile)}


def tls_settings(cert_files, **more):
    return {"ssl_certfile": cert_files["certfile"], "ssl_keyfile": cert_files["keyfile"], **more}


def client_context(ca, client_cert=None) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if client_cert is not None:
        client_cert.configure_cert(context)
    return context


async def scope_app(scope, receive, send):
    if scope["type"] != "http":
        return
    tls = scope["extensions"].get("tls")
    body = repr((scope["scheme"], tls and tls["tls_version"], tls and tls["client_cert_name"])).encode()
    scope_app.last = scope  # type: ignore[attr-defined]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def test_https_request_with_httpx_sees_https_scheme_and_tls_extension(ca, cert_files):
    async with open_server(scope_app, **tls_settings(cert_files)) as server:
        assert server.url.startswith("https://")
        async with httpx.AsyncClient(verify=client_context(ca)) as client:
            response = await client.get(server.url + "/")
    assert response.status_code == 200
    assert response.text == "('https', 772, None)"  # 0x0304: TLS 1.3
    tls = scope_app.last["extensions"]["tls"]  # type: ignore[attr-defined]
    assert tls["server_cert"].startswith("-----BEGIN CERTIFICATE-----")
    pem = Path(cert_files["certfile"]).read_text()
    assert tls["server_cert"] == pem.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    assert tls["client_cert_chain"] == []
    assert tls["client_cert_error"] is None
    assert isinstance(tls["cipher_suite"], int)
    assert 0x1301 <= tls["cipher_suite"] <= 0x1305  # a TLS 1.3 suite


async def test_tls12_client_reports_version_and_cipher_suite_id(ca, cert_files):
    context = client_context(ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
    async with open_server(scope_app, **tls_settings(cert_files)) as server:
        async with httpx.AsyncClient(verify=context) as client:
            response = await client.get(server.url + "/")
    assert response.text == "('https', 771, None)"  # 0x0303: TLS 1.2
    tls = scope_app.last["extensions"]["tls"]  # type: ignore[attr-defined]
    # ECDHE-ECDSA-AES128-GCM-SHA256 is {0xC0,0x2B}; ECDHE-RSA-... is {0xC0,0x2F}.
    assert tls["cipher_suite"] in (0xC02B, 0xC02F)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
async def test_tls11_client_is_refused(cert_files):
    async with open_server(scope_app, **tls_settings(cert_files)) as server:
        result = await trio.run_process(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-tls1_1"],
            stdin=b"", capture_stdout=True, capture_stderr=True, check=False,
        )
        assert result.returncode != 0
        assert b"no peer certificate available" in result.stdout
        result = await trio.run_process(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-tls1_2"],
            stdin=b"", capture_stdout=True, capture_stderr=True, check=False,
        )
        assert b"Server certificate" in result.stdout
        assert b"Protocol  : TLSv1.2" in result.stdout


async def test_plain_http_on_a_tls_port_is_closed_and_server_keeps_serving(ca, cert_files):
    async with open_server(scope_app, **tls_settings(cert_files)) as server:
        stream = await connect(server)
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        with trio.fail_after(5):
            data = b""
            try:
                while chunk := await stream.receive_some(1000):
                    data += chunk
            except trio.BrokenResourceError:
                pass
        assert b"HTTP/1.1" not in data
        async with httpx.AsyncClient(verify=client_context(ca)) as client:
            assert (await client.get(server.url + "/")).status_code == 200


async def test_stalled_tls_handshake_is_closed_after_the_timeout(ca, cert_files, autojump_clock):
    async with open_server(scope_app, **tls_settings(cert_files, timeout_ssl_handshake=3)) as server:
        stream = await connect(server)
        start = trio.current_time()
        with trio.fail_after(10):
            assert await stream.receive_some(100) == b""
        assert 3 <= trio.current_time() - start < 4


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
async def test_openssl_s_client_gets_a_response(ca, cert_files):
    async with open_server(scope_app, **tls_settings(cert_files)) as server:
        result = await trio.run_process(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{server.port}", "-quiet",
             "-CAfile", cert_files["cafile"], "-verify_return_error"],
            stdin=b"GET /s HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n",
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert result.stdout.startswith(b"HTTP/1.1 200 OK\r\n"), result.stderr
    assert result.stdout.endswith(b"('https', 772, None)")


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_with_a_client_certificate(ca, cert_files, tmp_path):
    client_cert = ca.issue_cert("alice@example.test", common_name="alice")
    client_pem = tmp_path / "client.pem"
    client_cert.private_key_and_cert_chain_pem.write_to_path(str(client_pem))
    settings = tls_settings(cert_files, ssl_ca_certs=cert_files["cafile"], ssl_cert_reqs="required")
    async with open_server(scope_app, **settings) as server:
        result = await trio.run_process(
            ["curl", "-sS", "--cacert", cert_files["cafile"], "--cert", str(client_pem),
             f"https://localhost:{server.port}/"],
            capture_stdout=True, capture_stderr=True, check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"('https', 772, 'CN=alice,OU=")


async def test_mtls_client_certificate_is_accepted_and_reported(ca, cert_files):
    client_cert = ca.issue_cert("bob@example.test", common_name="bob, jr.")
    settings = tls_settings(cert_files, ssl_ca_certs=cert_files["cafile"], ssl_cert_reqs="required")
    async with open_server(scope_app, **settings) as server:
        async with httpx.AsyncClient(verify=client_context(ca, client_cert)) as client:
            response = await client.get(server.url + "/")
    assert response.status_code == 200
    tls = scope_app.last["extensions"]["tls"]  # type: ignore[attr-defined]
    # RFC 4514: the most specific RDN first, the comma in the value escaped.
    assert re.fullmatch(r"CN=bob\\, jr\.,OU=Testing cert #[^,]+,O=trustme v[0-9.]+",
                        tls["client_cert_name"])
    assert len(tls["client_cert_chain"]) >= 1
    leaf = ssl.PEM_cert_to_DER_cert(tls["client_cert_chain"][0])
    assert leaf == ssl.PEM_cert_to_DER_cert(client_cert.cert_chain_pems[0].bytes().decode())


async def test_mtls_without_client_certificate_is_refused(ca, cert_files):
    settings = tls_settings(cert_files, ssl_ca_certs=cert_files["cafile"], ssl_cert_reqs="required")
    async with open_server(scope_app, **settings) as server:
        async with httpx.AsyncClient(verify=client_context(ca)) as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(server.url + "/")


async def test_mtls_certificate_from_another_ca_is_refused(ca, cert_files):
    stranger = trustme.CA().issue_cert("mallory@example.test", common_name="mallory")
    settings = tls_settings(cert_files, ssl_ca_certs=cert_files["cafile"], ssl_cert_reqs="required")
    async with open_server(scope_app, **settings) as server:
        async with httpx.AsyncClient(verify=client_context(ca, stranger)) as client:
            with pytest.raises(httpx.HTTPError):
                await client.get(server.url + "/")
        # The server is still there for a good client.
        good = ca.issue_cert("carol@example.test", common_name="carol")
        async with httpx.AsyncClient(verify=client_context(ca, good)) as client:
            reply = await client.get(server.url + "/")
            assert reply.text.startswith("('https', 772, 'CN=carol,OU=")


async def test_optional_client_certificate(ca, cert_files):
    settings = tls_settings(cert_files, ssl_ca_certs=cert_files["cafile"], ssl_cert_reqs="optional")
    async with open_server(scope_app, **settings) as server:
        async with httpx.AsyncClient(verify=client_context(ca)) as client:
            assert (await client.get(server.url + "/")).text == "('https', 772, None)"


async def test_tls_over_memory_stream_then_keepalive(ca, cert_files):
    from triasgi.testing import open_memory_connection, open_memory_server

    async with open_memory_server(scope_app, **tls_settings(cert_files)) as server:
        async with open_memory_connection(server) as raw:
            stream = trio.SSLStream(raw, client_context(ca), server_hostname="localhost")
            client = H11Client(stream)
            for _ in range(2):
                reply = await client.request_response("GET", "/")
                assert reply.body == b"('https', 772, None)"



async def test_tls_keep_alive_survives_early_deadlines_and_pipelining(
    ca, cert_files, autojump_clock
):
    # The connection task's reads are cancelled when an early keep-alive
    # deadline fires and when a pipelined request wakes it: neither may
    # break the TLS stream.
    from triasgi.testing import open_memory_connection, open_memory_server

    settings = tls_settings(cert_files, timeout_keep_alive=5)
    async with open_memory_server(scope_app, **settings) as server:
        async with open_memory_connection(server) as raw:
            stream = trio.SSLStream(raw, client_context(ca), server_hostname="localhost")
            client = H11Client(stream)
            for _ in range(3):
                reply = await client.request_response("GET", "/")
                assert reply.body == b"('https', 772, None)"
                await trio.sleep(4)
            request = b"GET / HTTP/1.1\r\nhost: a\r\n\r\n"
            await stream.send_all(request * 2 + request.replace(b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n"))
            data = await read_until_closed(stream)
    assert data.count(b"HTTP/1.1 200 ") == 3
    assert data.count(b"('https', 772, None)") == 3


# -- startup errors --------------------------------------------------------------


async def start_error(**settings) -> str:
    with pytest.raises(StartupError) as info:
        await serve(scope_app, Config(port=0, **settings))
    return str(info.value)


async def test_missing_certificate_file_is_one_sentence(tmp_path):
    message = await start_error(ssl_certfile=str(tmp_path / "nope.pem"))
    assert message == f"Cannot read the TLS certificate file {tmp_path / 'nope.pem'}: no such file."


async def test_missing_key_file_is_one_sentence(cert_files, tmp_path):
    message = await start_error(ssl_certfile=cert_files["certfile"], ssl_keyfile=str(tmp_path / "k.pem"))
    assert message == f"Cannot read the TLS key file {tmp_path / 'k.pem'}: no such file."


async def test_key_of_another_certificate_is_one_sentence(ca, cert_files, tmp_path):
    other_key = tmp_path / "other.pem"
    ca.issue_cert("example.test").private_key_pem.write_to_path(str(other_key))
    message = await start_error(ssl_certfile=cert_files["certfile"], ssl_keyfile=str(other_key))
    assert message == (
        f"The TLS key {other_key} does not match the certificate {cert_files['certfile']}."
    )


async def test_certificate_without_key_is_one_sentence(cert_files):
    message = await start_error(ssl_certfile=cert_files["certfile"])
    assert message.startswith(f"Cannot load a certificate and its key from {cert_files['certfile']}")


async def test_cert_reqs_without_ca_is_one_sentence(cert_files):
    message = await start_error(**tls_settings(cert_files, ssl_cert_reqs="required"))
    assert message == "--ssl-cert-reqs required needs --ssl-ca-certs to verify client certificates with."


async def test_encrypted_key_needs_its_password(ca, tmp_path):
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    keyfile.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret"),
    ))
    message = await start_error(ssl_certfile=str(certfile), ssl_keyfile=str(keyfile), ssl_keyfile_password="wrong")
    assert message == f"Cannot decrypt the TLS key {keyfile}: wrong or missing --ssl-keyfile-password."
    async with open_server(scope_app, ssl_certfile=str(certfile), ssl_keyfile=str(keyfile),
                           ssl_keyfile_password="s3cret") as server:
        async with httpx.AsyncClient(verify=client_context(ca)) as client:
            assert (await client.get(server.url + "/")).status_code == 200


def encrypted_key_files(ca, folder: Path) -> tuple[Path, Path]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = folder / "c.pem", folder / "k.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(cert.private_key_pem.bytes(), None)
    keyfile.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret"),
    ))
    return certfile, keyfile


def test_cli_never_prompts_for_the_password_of_an_encrypted_key(ca, tmp_path):
    """On a terminal, OpenSSL would ask "Enter PEM pass phrase:" and wait."""
    import fcntl
    import os
    import select
    import termios
    import time

    certfile, keyfile = encrypted_key_files(ca, tmp_path)
    controller, terminal = os.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "triasgi", "tests.conftest:hello_app", "--port", "0",
         "--ssl-certfile", str(certfile), "--ssl-keyfile", str(keyfile)],
        stdin=terminal, stdout=terminal, stderr=terminal,
        # The terminal becomes the process's controlling terminal, as in a shell.
        start_new_session=True,
        preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
    )
    os.close(terminal)
    output = b""
    try:
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            if b"pass phrase" in output.lower():
                break
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                try:
                    output += os.read(controller, 4096)
                except OSError:  # EIO: the process closed the terminal
                    break
        code = process.wait(timeout=20) if b"pass phrase" not in output.lower() else None
        while select.select([controller], [], [], 0.1)[0]:
            try:
                chunk = os.read(controller, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(controller)
    text = output.decode(errors="replace")
    assert "pass phrase" not in text.lower()
    assert code == 1
    assert text.strip().splitlines()[-1] == (
        f"Error: The TLS key {keyfile} is encrypted: give its password with "
        "--ssl-keyfile-password."
    )


async def test_encrypted_key_without_a_password_is_one_sentence(ca, tmp_path):
    certfile, keyfile = encrypted_key_files(ca, tmp_path)
    message = await start_error(ssl_certfile=str(certfile), ssl_keyfile=str(keyfile))
    assert message == (
        f"The TLS key {keyfile} is encrypted: give its password with "
        "--ssl-keyfile-password."
    )


def test_cli_prints_one_line_for_a_missing_certificate(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "triasgi", "tests.conftest:hello_app", "--port", "0",
         "--ssl-certfile", str(tmp_path / "missing.pem")],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: Cannot read the TLS certificate file {tmp_path / 'missing.pem'}: no such file."
    )


async def test_unusable_cipher_list_is_one_sentence(cert_files):
    message = await start_error(**tls_settings(cert_files, ssl_ciphers="NO-SUCH-CIPHER"))
    assert message == "No usable cipher in --ssl-ciphers 'NO-SUCH-CIPHER'."


async def test_cipher_list_limits_tls12_suites(ca, cert_files):
    settings = tls_settings(cert_files, ssl_ciphers="ECDHE+AESGCM:!AES128")
    context = client_context(ca)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256")
    async with open_server(scope_app, **settings) as server:
        async with httpx.AsyncClient(verify=context) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(server.url + "/")
        context.set_ciphers("ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384")
        async with httpx.AsyncClient(verify=context) as client:
            assert (await client.get(server.url + "/")).text == "('https', 771, None)"
    assert scope_app.last["extensions"]["tls"]["cipher_suite"] in (0xC02C, 0xC030)  # type: ignore[attr-defined]


async def test_proxy_protocol_preamble_before_the_tls_handshake(ca, cert_files):
    from triasgi.testing import open_memory_connection, open_memory_server

    settings = tls_settings(cert_files, proxy_protocol=True)
    async with open_memory_server(scope_app, **settings) as server:
        async with open_memory_connection(server) as raw:
            await raw.send_all(b"PROXY TCP4 203.0.113.7 10.0.0.2 4711 443\r\n")
            stream = trio.SSLStream(raw, client_context(ca), server_hostname="localhost")
            reply = await H11Client(stream).request_response("GET", "/")
    assert reply.body == b"('https', 772, None)"
    assert scope_app.last["client"] == ("203.0.113.7", 4711)  # type: ignore[attr-defined]


async def test_shutdown_does_not_wait_for_a_stalled_handshake(cert_files, autojump_clock):
    async with open_server(scope_app, **tls_settings(cert_files)) as server:
        stream = await connect(server)
        await trio.sleep(1)  # the server is waiting for a ClientHello
        start = trio.current_time()
        server.shutdown()
    assert trio.current_time() - start < 1  # not the 10 s handshake timeout
    assert await stream.receive_some(100) == b""


@pytest.mark.parametrize("setting", [
    {"ssl_keyfile": "key.pem"}, {"ssl_ca_certs": "ca.pem"}, {"ssl_cert_reqs": "required"},
    {"ssl_keyfile_password": "x"}, {"ssl_ciphers": "HIGH"},
])
def test_tls_settings_without_a_certificate_are_config_errors(setting):
    (name,) = setting
    with pytest.raises(ValueError, match=f"^{name} needs ssl_certfile, the server certificate.$"):
        Config(**setting)


async def test_cli_serves_https_and_says_so(ca, tmp_path):
    both = tmp_path / "both.pem"
    ca.issue_cert("127.0.0.1").private_key_and_cert_chain_pem.write_to_path(str(both))
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "triasgi", "examples.hello:app", "--port", "0",
         "--ssl-certfile", str(both), "--lifespan", "off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        output = b""
        with trio.fail_after(15):
            while not (match := re.search(rb"Listening on (https://\S+)", output)):
                chunk = await process.stderr.receive_some()
                assert chunk, output
                output += chunk
        async with httpx.AsyncClient(verify=client_context(ca)) as client:
            response = await client.get(match.group(1).decode() + "/")
        assert response.status_code == 200
    finally:
        process.terminate()
        await process.wait()
        await process.stderr.aclose()


async def test_missing_ca_file_is_one_sentence(cert_files, tmp_path):
    message = await start_error(**tls_settings(
        cert_files, ssl_ca_certs=str(tmp_path / "ca.pem"), ssl_cert_reqs="required"
    ))
    assert message == (
        f"Cannot load CA certificates from {tmp_path / 'ca.pem'}: it must be a readable "
        "PEM file (--ssl-ca-certs)."
    )


async def test_websocket_over_tls_has_wss_and_the_tls_extension(ca, cert_files):
    import wsproto
    import wsproto.events

    from triasgi.testing import open_memory_connection, open_memory_server

    seen = {}

    async def ws_app(scope, receive, send):
        seen.update(scope)
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close"})

    async with open_memory_server(ws_app, **tls_settings(cert_files)) as server:
        async with open_memory_connection(server) as raw:
            stream = trio.SSLStream(raw, client_context(ca), server_hostname="localhost")
            ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
            await stream.send_all(ws.send(wsproto.events.Request(host="localhost", target="/")))
            events = []
            while not any(isinstance(e, wsproto.events.CloseConnection) for e in events):
                ws.receive_data(await stream.receive_some(65536))
                events.extend(ws.events())
    assert isinstance(events[0], wsproto.events.AcceptConnection)
    assert seen["scheme"] == "wss"
    assert seen["extensions"]["tls"]["tls_version"] == 0x0304
