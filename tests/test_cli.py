"""The real `triasgi` command in a subprocess: serving, signals, user errors."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

import httpx
import pytest
import trio

import triasgi

APP = textwrap.dedent(
    """
    import sys
    import time

    import trio

    NAME = "not an app"

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        if scope["path"] in ("/slow", "/forever", "/thread", "/shielded"):
            print("app got", scope["path"], file=sys.stderr, flush=True)
        if scope["path"] == "/slow":
            await trio.sleep(0.5)
        if scope["path"] == "/forever":
            await trio.sleep_forever()
        if scope["path"] == "/thread":
            await trio.to_thread.run_sync(time.sleep, 60)
        if scope["path"] == "/shielded":
            with trio.CancelScope(shield=True):
                await trio.sleep(60)
        body = ("root_path=" + scope["root_path"]).encode()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": body})
    """
)


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "myapp.py").write_text(APP)
    (tmp_path / "broken.py").write_text("import trio\nraise RuntimeError('config missing')\n")
    (tmp_path / "failing.py").write_text(textwrap.dedent(
        """
        async def app(scope, receive, send):
            assert scope["type"] == "lifespan"
            await receive()
            await send({"type": "lifespan.startup.failed", "message": "no database"})
        """
    ))
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "factoryapp.py").write_text(textwrap.dedent(
        """
        def create_app():
            async def app(scope, receive, send):
                if scope["type"] != "http":
                    return
                await send({"type": "http.response.start", "status": 200})
                await send({"type": "http.response.body", "body": b"made by factory"})
            return app
        """
    ))
    (tmp_path / "embedded.py").write_text(textwrap.dedent(
        """
        import triasgi
        triasgi.run("myapp:app", port=0, root_path="/run")
        """
    ))
    return tmp_path


class Running:
    """A triasgi process started by a test; killed at the end if still alive."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stderr = b""

    async def read_stderr_until(self, pattern: bytes) -> re.Match[bytes]:
        with trio.fail_after(10):
            while True:
                match = re.search(pattern, self.stderr)
                if match:
                    return match
                chunk = await self.process.stderr.receive_some()
                if not chunk:
                    raise AssertionError(f"triasgi exited: {self.stderr.decode()}")
                self.stderr += chunk

    async def url(self) -> str:
        match = await self.read_stderr_until(rb"Listening on (http://\S+)")
        return match.group(1).decode()

    async def wait(self) -> int:
        with trio.fail_after(10):
            while True:
                chunk = await self.process.stderr.receive_some()
                if not chunk:
                    break
                self.stderr += chunk
            return await self.process.wait()


@pytest.fixture
async def start_cli(app_dir):
    started = []

    async def start(
        *args: str, env: dict[str, str] | None = None, script: str | None = None
    ) -> Running:
        """Run ``triasgi ARGS``, or with ``script`` a Python file in the app dir."""
        command = [script] if script else ["-m", "triasgi", *args]
        process = await trio.lowlevel.open_process(
            [sys.executable, *command],
            cwd=app_dir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        running = Running(process)
        started.append(running)
        return running

    yield start
    for running in started:
        if running.process.returncode is None:
            running.process.kill()
            await running.process.wait()
        await running.process.stderr.aclose()


async def run_cli(start_cli, *args: str, env: dict[str, str] | None = None):
    running = await start_cli(*args, env=env)
    code = await running.wait()
    return code, running.stderr.decode()


async def test_serves_and_exits_0_on_sigint(start_cli):
    running = await start_cli("myapp:app", "--port", "0")
    url = await running.url()
    async with httpx.AsyncClient() as client:
        response = await client.get(url + "/")
    assert response.status_code == 200
    assert response.text == "root_path="
    await running.read_stderr_until(rb'"GET / HTTP/1.1" 200')
    running.process.send_signal(signal.SIGINT)
    assert await running.wait() == 0
    assert b"Traceback" not in running.stderr


async def test_sigterm_lets_the_in_flight_request_finish(start_cli):
    running = await start_cli("myapp:app", "--port", "0", "--no-access-log")
    url = await running.url()
    results = []

    async def slow_request():
        async with httpx.AsyncClient() as client:
            results.append(await client.get(url + "/slow"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_request)
        await running.read_stderr_until(rb"app got /slow")
        running.process.send_signal(signal.SIGTERM)
    assert results[0].status_code == 200
    assert results[0].headers["connection"] == "close"
    assert await running.wait() == 0


async def test_second_sigint_stops_at_once(start_cli):
    running = await start_cli("myapp:app", "--port", "0", "--no-access-log")
    url = await running.url()

    async def hanging_request():
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get(url + "/forever")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(hanging_request)
        await running.read_stderr_until(rb"app got /forever")
        running.process.send_signal(signal.SIGINT)
        await running.read_stderr_until(rb"shutting down gracefully")
        running.process.send_signal(signal.SIGINT)
        assert await running.wait() == 0
    assert b"stopping at once" in running.stderr


async def stuck_request(url: str) -> None:
    """A request whose app never answers; the server drops the connection."""
    async with httpx.AsyncClient(timeout=30) as client:
        with pytest.raises(httpx.TransportError):
            await client.get(url)


async def test_graceful_timeout_bounds_shutdown_of_an_app_waiting_in_a_thread(
    start_cli,
):
    running = await start_cli(
        "myapp:app", "--port", "0", "--no-access-log", "--timeout-graceful-shutdown", "1"
    )
    url = await running.url()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck_request, url + "/thread")
        await running.read_stderr_until(rb"app got /thread")
        start = trio.current_time()
        running.process.send_signal(signal.SIGTERM)
        code = await running.wait()
    # 1 second graceful timeout, 1 second for the cancellation to land.
    assert trio.current_time() - start < 4
    assert code == 1
    stderr = running.stderr.decode()
    assert "Still running 1 second(s) after being cancelled" in stderr
    assert "Exiting now, abandoning 1 connection(s) (GET /thread from 127.0.0.1:" in stderr
    assert "Traceback" not in stderr


async def test_second_signal_stops_at_once_an_app_in_a_shielded_scope(start_cli):
    running = await start_cli("myapp:app", "--port", "0", "--no-access-log")
    url = await running.url()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck_request, url + "/shielded")
        await running.read_stderr_until(rb"app got /shielded")
        running.process.send_signal(signal.SIGTERM)
        await running.read_stderr_until(rb"shutting down gracefully")
        start = trio.current_time()
        running.process.send_signal(signal.SIGTERM)
        code = await running.wait()
    assert trio.current_time() - start < 3
    assert code == 1
    stderr = running.stderr.decode()
    assert "stopping at once" in stderr
    assert "Exiting now, abandoning 1 connection(s) (GET /shielded from" in stderr
    assert "Traceback" not in stderr


async def test_environment_variables_set_options(start_cli):
    running = await start_cli("myapp:app", env={
        "TRIASGI_PORT": "0", "TRIASGI_ROOT_PATH": "/api", "TRIASGI_ACCESS_LOG": "false"})
    url = await running.url()
    async with httpx.AsyncClient() as client:
        response = await client.get(url + "/")
    assert response.text == "root_path=/api"
    running.process.send_signal(signal.SIGINT)
    assert await running.wait() == 0
    assert b'"GET /' not in running.stderr


async def test_factory_from_another_app_dir(start_cli):
    running = await start_cli("factoryapp:create_app", "--factory", "--app-dir", "sub",
                              "--port", "0")
    url = await running.url()
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).text == "made by factory"
    running.process.send_signal(signal.SIGTERM)
    assert await running.wait() == 0


async def test_run_serves_an_import_string(start_cli):
    running = await start_cli(script="embedded.py")
    url = await running.url()
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).text == "root_path=/run"
    running.process.send_signal(signal.SIGINT)
    assert await running.wait() == 0


def one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("nosuchmodule:app", "Could not find module 'nosuchmodule'"),
        ("myapp:missing", "Module 'myapp' has no attribute 'missing'"),
        ("myapp", "must be given as 'module:attribute'"),
        ("broken:app", "Importing module 'broken' failed: RuntimeError: config missing"),
        ("myapp:NAME", "'myapp:NAME' is a str, not an ASGI app callable"),
    ],
)
async def test_bad_app_gives_one_clear_sentence(start_cli, app, message):
    code, stderr = await run_cli(start_cli, app)
    assert code == 1
    assert message in one_line_error(stderr)


async def test_port_in_use_gives_one_clear_sentence(start_cli):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = await run_cli(start_cli, "myapp:app", "--port", str(port))
    assert code == 1
    assert f"Cannot listen on 127.0.0.1:{port}: address already in use" in one_line_error(
        stderr
    )


async def test_failed_lifespan_startup_exits_non_zero_with_the_message(start_cli):
    code, stderr = await run_cli(start_cli, "failing:app", "--port", "0")
    assert code == 1
    assert "no database" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "abc"], "'abc' is not a valid integer"),
        (["--timeout-keep-alive", "-1"], "--timeout-keep-alive"),
        (["--lifespan", "maybe"], "'maybe' is not one of"),
        (["--header", "no-colon"], "headers entries must look like 'name:value'"),
        (["--port", "70000"], "70000 is not in the range 0<=x<=65535"),
        (["--backlog", "99999999999"], "is not in the range 1<=x<=2147483647"),
        (["--fd", "99999999999"], "is not in the range 0<=x<=2147483647"),
        (
            ["--header", "x-a:b\r\nx-evil: 1"],
            "has a CR, LF or NUL in its value",
        ),
        (["--header", "bad name:v"], "has an invalid name 'bad name'"),
        (["--header", "x-a:caf\u00e9\u20ac"], "has a character beyond latin-1"),
    ]
    + [
        ([f"--{option}", "nan"], "nan is not a number of seconds")
        for option in (
            "timeout-keep-alive",
            "timeout-request-header",
            "timeout-graceful-shutdown",
            "timeout-lifespan-startup",
            "ws-ping-interval",
            "timeout-worker-healthcheck",
        )
    ],
)
async def test_bad_option_values_are_usage_errors(start_cli, args, message):
    code, stderr = await run_cli(start_cli, "myapp:app", *args)
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr


async def test_nan_in_the_environment_is_a_usage_error(start_cli):
    code, stderr = await run_cli(
        start_cli, "myapp:app", env={"TRIASGI_TIMEOUT_KEEP_ALIVE": "nan"}
    )
    assert code == 2
    assert "nan is not a number of seconds" in stderr
    assert "Traceback" not in stderr


async def test_infinite_keep_alive_means_no_limit(start_cli):
    running = await start_cli(
        "myapp:app", "--port", "0", "--timeout-keep-alive", "inf",
        "--timeout-graceful-shutdown", "inf",
    )
    url = await running.url()
    async with httpx.AsyncClient() as client:
        assert (await client.get(url + "/")).status_code == 200
    running.process.send_signal(signal.SIGTERM)
    assert await running.wait() == 0
    assert "Traceback" not in running.stderr.decode()


@pytest.mark.parametrize(
    ("fd", "problem"), [("0", "it is not a socket"), ("77", "it is not open")]
)
async def test_fd_that_is_not_a_listening_socket_gives_one_sentence(
    start_cli, fd, problem
):
    code, stderr = await run_cli(start_cli, "myapp:app", "--fd", fd)
    assert code == 1
    assert (
        f"Cannot listen on file descriptor {fd}: {problem}; --fd takes a listening "
        "socket the parent process passed down." in one_line_error(stderr)
    )


@pytest.fixture
def without_httptools(app_dir):
    """An environment in which ``import httptools`` fails, as without the extra."""
    blocker = app_dir / "no-httptools"
    blocker.mkdir()
    (blocker / "httptools.py").write_text("raise ImportError('not installed')\n")
    return {"PYTHONPATH": str(blocker)}


async def test_http_httptools_without_the_extra_is_a_usage_error(
    start_cli, without_httptools
):
    code, stderr = await run_cli(
        start_cli, "myapp:app", "--http", "httptools", env=without_httptools
    )
    assert code == 2
    assert "--http httptools needs the httptools package" in stderr
    assert "pip install 'triasgi[fast]'" in stderr
    assert "Traceback" not in stderr


async def test_http_auto_without_httptools_serves_with_h11(
    start_cli, without_httptools
):
    running = await start_cli("myapp:app", "--port", "0", env=without_httptools)
    url = await running.url()
    async with httpx.AsyncClient() as client:
        assert (await client.get(url + "/")).status_code == 200
    running.process.send_signal(signal.SIGINT)
    assert await running.wait() == 0


async def test_objects_from_startup_are_frozen_out_of_garbage_collection(
    start_cli, app_dir
):
    # A full collection then scans only what serving allocates (the p99
    # latency of docs/performance.md).
    (app_dir / "gcapp.py").write_text(textwrap.dedent(
        """
        import gc

        async def app(scope, receive, send):
            if scope["type"] != "http":
                return
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body",
                        "body": str(gc.get_freeze_count()).encode()})
        """
    ))
    running = await start_cli("gcapp:app", "--port", "0")
    url = await running.url()
    async with httpx.AsyncClient() as client:
        frozen = int((await client.get(url)).text)
    assert frozen > 1000
    running.process.send_signal(signal.SIGINT)
    assert await running.wait() == 0


def test_version_text_and_help_list_every_setting():
    out = subprocess.run(
        [sys.executable, "-m", "triasgi", "--version"], capture_output=True, text=True,
        check=True,
    ).stdout
    assert triasgi.__version__ in out
    help_text = subprocess.run(
        [sys.executable, "-m", "triasgi", "--help"], capture_output=True, text=True,
        check=True,
    ).stdout
    for name in ("--timeout-keep-alive", "--disconnect-grace-period", "--uds", "--fd",
                 "--root-path", "--lifespan", "--limit-concurrency", "--backlog",
                 "--h11-max-incomplete-event-size", "--header", "--no-server-header",
                 "--no-date-header", "--log-level", "--no-access-log",
                 "--timeout-graceful-shutdown", "--app-dir", "--factory"):
        assert name in help_text


def test_run_with_workers_needs_an_import_string():
    async def app(scope, receive, send):
        raise AssertionError("never called")

    with pytest.raises(ValueError, match="import string"):
        triasgi.run(app, workers=2)


async def test_run_with_workers_serves_from_worker_processes(app_dir, start_cli):
    (app_dir / "embedded_workers.py").write_text(textwrap.dedent(
        """
        import triasgi
        triasgi.run("myapp:app", port=0, workers=2, root_path="/w")
        """
    ))
    running = await start_cli(script="embedded_workers.py")
    match = await running.read_stderr_until(rb"(http://127\.0\.0\.1:\d+)")
    url = match.group(1).decode()
    async with httpx.AsyncClient() as client:
        with trio.fail_after(20):
            while True:
                try:
                    response = await client.get(url + "/")
                    break
                except httpx.ConnectError:
                    await trio.sleep(0.1)
    assert response.text == "root_path=/w"
    running.process.send_signal(signal.SIGTERM)
    assert await running.wait() == 0


# -- --bind: several listeners ----------------------------------------------------


async def _get_unix(path: str) -> bytes:
    stream = await trio.open_unix_socket(path)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    return data


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one process", "workers"])
async def test_bind_serves_every_address_given(start_cli, tmp_path, workers):
    sock_path = str(tmp_path / "app.sock")
    running = await start_cli(
        "myapp:app", "--bind", "127.0.0.1:0", "--bind", "[::1]:0",
        "--bind", f"unix:{sock_path}", "--no-access-log", *workers,
    )  # fmt: skip
    await running.read_stderr_until(rb"Listening on unix socket")
    urls = re.findall(rb"Listening on (http://\S+)", running.stderr)
    assert len(urls) == 2
    assert any(b"[::1]" in url for url in urls)
    async with httpx.AsyncClient() as client:
        for url in urls:
            response = await client.get(url.decode() + "/")
            assert response.text == "root_path="
    assert (await _get_unix(sock_path)).endswith(b"root_path=")
    running.process.send_signal(signal.SIGTERM)
    assert await running.wait() == 0
    assert not os.path.exists(sock_path)  # removed when the server stops


async def test_bind_from_the_environment_one_address_per_line(start_cli, tmp_path):
    sock_path = str(tmp_path / "env.sock")
    running = await start_cli(
        "myapp:app", env={"TRIASGI_BIND": f"127.0.0.1:0\nunix:{sock_path}"}
    )
    url = await running.url()
    await running.read_stderr_until(rb"Listening on unix socket")
    async with httpx.AsyncClient() as client:
        assert (await client.get(url + "/")).status_code == 200
    assert (await _get_unix(sock_path)).startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bind", "::1:8000"], "bind addresses look like HOST:PORT"),
        (["--bind", "unix:"], "bind addresses look like"),
        (["--bind", "host:70000"], "bind addresses look like"),
        (["--bind", "127.0.0.1:0", "--uds", "/tmp/x.sock"], "bind replaces uds and fd"),
    ],
)
async def test_a_bad_bind_is_one_sentence_and_exit_2(start_cli, args, message):
    code, err = await run_cli(start_cli, "myapp:app", *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


async def test_a_bind_that_cannot_listen_closes_the_others(start_cli):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    try:
        code, err = await run_cli(
            start_cli, "myapp:app", "--bind", "127.0.0.1:0", "--bind", f"127.0.0.1:{taken}"
        )
    finally:
        blocker.close()
    assert code != 0
    assert f"Cannot listen on 127.0.0.1:{taken}" in err
    assert "Traceback" not in err


async def test_serve_reports_every_bound_address():
    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 204})
            await send({"type": "http.response.body"})

    config = triasgi.Config(bind=["127.0.0.1:0", "127.0.0.1:0"], lifespan="off")
    async with trio.open_nursery() as nursery:
        server = await nursery.start(triasgi.serve, app, config)
        assert len(server.addresses) == 2
        async with httpx.AsyncClient() as client:
            for host, port in server.addresses:
                response = await client.get(f"http://{host}:{port}/")
                assert response.status_code == 204
        nursery.cancel_scope.cancel()
