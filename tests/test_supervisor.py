"""The supervisor and its workers, as real processes receiving real signals."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import BinaryIO

import pytest
import trio
from conftest import hello_app

from triasgi import Config, Server

APP = textwrap.dedent(
    """
    import os
    import time
    import trio

    VERSION = "v1"

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/slow":
            print("slow request started", flush=True)
            await trio.sleep(float(scope["query_string"] or 1))
        if scope["path"] == "/block":
            while True:
                pass
        if scope["path"] == "/thread":
            print("thread request started", flush=True)
            await trio.to_thread.run_sync(time.sleep, 60)
        body = f"{VERSION} {os.getpid()}".encode()
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": body})
    """
)

FAILING_LIFESPAN = textwrap.dedent(
    """
    async def app(scope, receive, send):
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "no database"})
    """
)

CRASHING = textwrap.dedent(
    """
    import os
    import trio

    async def app(scope, receive, send):
        message = await receive()
        await send({"type": "lifespan.startup.complete"})
        await trio.sleep(0.05)
        os._exit(1)
    """
)

SLOW_STARTUP = textwrap.dedent(
    """
    import trio

    async def app(scope, receive, send):
        await receive()
        print("startup begun", flush=True)
        await trio.sleep(30)
        await send({"type": "lifespan.startup.complete"})
    """
)

# Short timeouts keep the tests quick; they are options a user could pass too.
FAST = ["--timeout-graceful-shutdown", "3", "--log-level", "info"]


class Supervisor:
    """A `triasgi --workers` process started by a test, with its log file."""

    def __init__(self, process: trio.Process, log: Path) -> None:
        self.process = process
        self.log_path = log
        self.port = 0

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_for_log(
        self, pattern: str, count: int = 1, within: float = 20
    ) -> str:
        with trio.move_on_after(within):
            while len(re.findall(pattern, self.log())) < count:
                if self.process.returncode is not None:
                    break
                await trio.sleep(0.02)
            else:
                return self.log()
        raise AssertionError(
            f"{pattern!r} not seen {count} time(s) in the log:\n{self.log()}"
        )

    def worker_pids(self) -> set[int]:
        """The supervisor's child processes, as the system lists them."""
        # Per thread: trio starts processes from a worker thread.
        children: set[int] = set()
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            try:
                children.update(
                    int(pid) for pid in (task / "children").read_text().split()
                )
            except FileNotFoundError:
                pass  # that thread has just exited
        return children

    async def wait_for_workers(self, count: int, within: float = 20) -> set[int]:
        """Wait until exactly ``count`` workers run and have all said ready."""
        with trio.move_on_after(within):
            while True:
                pids = self.worker_pids()
                ready = {
                    int(p) for p in re.findall(r"Worker pid (\d+) is ready", self.log())
                }
                if len(pids) == count and pids <= ready:
                    return pids
                await trio.sleep(0.02)
        raise AssertionError(f"not {count} ready workers:\n{self.log()}")

    def send(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def exit_code(self, within: float = 20) -> int:
        with trio.fail_after(within):
            return await self.process.wait()


def _log_file(path: Path) -> BinaryIO:
    return open(path, "wb")  # the test's own file, opened before any waiting


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "pidapp.py").write_text(APP)
    (tmp_path / "failing.py").write_text(FAILING_LIFESPAN)
    (tmp_path / "crashing.py").write_text(CRASHING)
    (tmp_path / "slowstart.py").write_text(SLOW_STARTUP)
    return tmp_path


@pytest.fixture
async def start(app_dir):
    started: list[trio.Process] = []

    async def start(
        *args: str,
        app: str = "pidapp:app",
        ready: bool = True,
        activation_fd: int | None = None,
        env: dict[str, str] | None = None,
    ) -> Supervisor:
        """Start the supervisor; with ``activation_fd``, as systemd would."""
        log = app_dir / f"triasgi-{len(started)}.log"
        command = [sys.executable, "-m", "triasgi", app, "--port", "0", *FAST, *args]
        pass_fds: tuple[int, ...] = ()
        if activation_fd is not None:
            # The socket as descriptor 3, and LISTEN_PID the pid that exec keeps.
            script = (
                "import os, sys; "
                f"os.dup2({activation_fd}, 3); "
                "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
                "os.execv(sys.executable, sys.argv[1:])"
            )
            command = [sys.executable, "-c", script, *command]
            pass_fds = (activation_fd,)
        with _log_file(log) as out:
            process = await trio.lowlevel.open_process(
                command,
                pass_fds=pass_fds,
                cwd=app_dir,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                # Its own process group: the cleanup below reaches the workers.
                start_new_session=True,
            )
        started.append(process)
        supervisor = Supervisor(process, log)
        if ready:
            text = await supervisor.wait_for_log(
                r"Listening on http://127\.0\.0\.1:\d+"
            )
            match = re.search(r"Listening on http://127\.0\.0\.1:(\d+)", text)
            assert match is not None
            supervisor.port = int(match.group(1))
        return supervisor

    try:
        yield start
    finally:
        for process in started:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            with trio.CancelScope(shield=True):
                await process.wait()


async def get(port: int, path: str = "/", within: float = 5) -> tuple[int, str]:
    """One request on a new connection; (status, body) or an exception."""
    with trio.fail_after(within):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                f"GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"no response: {data!r}")
    return int(head.split()[1]), body.decode()


def pid_of(body: str) -> int:
    return int(body.split()[1])


class Load:
    """Clients sending requests one after another; every outcome is recorded.

    Each client pauses a little between requests so that the load does not
    starve the worker processes of CPU on a small machine.
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.pids: list[int] = []
        self.failures: list[str] = []
        self.done = 0

    async def client(self) -> None:
        while True:
            try:
                status, body = await get(self.port)
            except (
                OSError,
                trio.TooSlowError,
                ConnectionError,
                trio.BrokenResourceError,
            ) as exc:
                self.failures.append(repr(exc))
            else:
                if status != 200:
                    self.failures.append(f"status {status}")
                else:
                    self.pids.append(pid_of(body))
                self.done += 1
            await trio.sleep(0.005)

    async def served_by(self, wanted: set[int] | None = None, within: float = 5) -> int:
        """Wait until a worker in ``wanted`` (or not yet seen) serves; its pid."""
        start = len(self.pids)
        with trio.fail_after(within):
            while True:
                for pid in self.pids[start:]:
                    if wanted is None or pid in wanted:
                        return pid
                await trio.sleep(0.01)


class KeepAliveLoad:
    """Clients that each keep a connection and send requests back to back.

    Every response is checked.  A connection the server closes after a
    response that said ``connection: close`` is opened again; any other end
    of a request is a failure: a reset, a connection closed before or within
    a response (an empty reply), a bad response, no answer within 5 seconds.
    """

    REQUEST = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n"

    def __init__(self, port: int) -> None:
        self.port = port
        self.pids: set[int] = set()
        self.failures: list[str] = []
        self.done = 0
        self.closed_by_server = 0

    async def client(self) -> None:
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", self.port)
            except OSError as exc:
                self.failures.append(f"connect: {exc!r}")
                await trio.sleep(0.01)
                continue
            async with stream:
                await self._requests(stream)

    async def _requests(self, stream: trio.SocketStream) -> None:
        """Requests on one connection until the server says close or fails one."""
        while True:
            try:
                with trio.fail_after(5):
                    await stream.send_all(self.REQUEST)
                    head, body = await self._response(stream)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                self.failures.append(f"request {self.done + 1}: {exc!r}")
                return
            lines = head.split(b"\r\n")
            headers = dict(line.split(b": ", 1) for line in lines[1:])
            if lines[0] != b"HTTP/1.1 200 OK" or not body.startswith(b"v1 "):
                self.failures.append(f"bad response: {head!r} {body!r}")
                return
            self.pids.add(pid_of(body.decode()))
            self.done += 1
            if headers.get(b"connection") == b"close":
                self.closed_by_server += 1
                return

    @staticmethod
    async def _response(stream: trio.SocketStream) -> tuple[bytes, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(data)} response bytes")
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head).group(1))
        while len(body) < length:
            chunk = await stream.receive_some(65536)
            if not chunk:
                raise ConnectionError(f"closed within a body: {data!r}")
            body += chunk
        assert len(body) == length, "a response longer than its content-length"
        return head, body


async def until_stopped(supervisor: Supervisor, pids: set[int]) -> None:
    """Wait until each worker of ``pids`` has stopped, as the log says."""
    while not pids <= set(
        map(int, re.findall(r"Worker pid (\d+) stopped", supervisor.log()))
    ):
        await trio.sleep(0.05)


@pytest.mark.timeout(120)
async def test_sighup_under_keep_alive_load_loses_no_request(start):
    # The old worker closes the connections it finds idle, whose next request
    # may already be in its socket or on the wire: it must be served (with
    # connection: close), never met with a reset.
    supervisor = await start("--workers", "2", "--no-access-log")
    await supervisor.wait_for_workers(2)
    load = KeepAliveLoad(supervisor.port)
    # Generous bounds: under this load a busy machine starts a worker slowly.
    with trio.fail_after(90):
        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(load.client)
            for n in range(1, 4):
                await trio.sleep(1.5)
                supervisor.send(signal.SIGHUP)
                await supervisor.wait_for_log("Reload complete", count=n, within=40)
            # Until the last old worker has stopped, under load.
            serving = await supervisor.wait_for_workers(2)
            started = re.findall(r"Started worker pid (\d+)", supervisor.log())
            await until_stopped(supervisor, set(map(int, started)) - serving)
            nursery.cancel_scope.cancel()
    assert load.failures == []
    assert len(started) == 8
    assert len(load.pids) >= 6  # the new workers served, too
    assert load.closed_by_server >= 30
    assert load.done > 1000


async def test_limit_max_requests_under_keep_alive_load_loses_no_request(start):
    supervisor = await start(
        "--workers", "2", "--no-access-log", "--limit-max-requests", "1500"
    )
    await supervisor.wait_for_workers(2)
    load = KeepAliveLoad(supervisor.port)
    retiring = r"Worker pid (\d+) reached limit_max_requests; its replacement is ready"
    with trio.fail_after(40):
        async with trio.open_nursery() as nursery:
            for _ in range(30):
                nursery.start_soon(load.client)
            log = await supervisor.wait_for_log(retiring, count=3)
            retired = set(map(int, re.findall(retiring, log)[:3]))
            await until_stopped(supervisor, retired)
            nursery.cancel_scope.cancel()
    assert load.failures == []
    assert retired <= load.pids
    assert load.closed_by_server >= 30


async def test_workers_serve_from_distinct_worker_pids(start):
    supervisor = await start("--workers", "2")
    workers = await supervisor.wait_for_workers(2)
    assert supervisor.process.pid not in workers
    load = Load(supervisor.port)
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(load.client)
        with trio.fail_after(5):
            while set(load.pids) != workers:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert load.failures == []
    # Each log line names the process that wrote it.
    for pid in workers:
        assert f"INFO     [{pid}] 127.0.0.1:" in supervisor.log()


async def test_killed_worker_is_replaced_while_the_other_keeps_serving(start):
    began = trio.current_time()
    supervisor = await start("--workers", "2")
    victim, survivor = sorted(await supervisor.wait_for_workers(2))
    # Two seconds, unless this machine is so busy that starting the whole
    # server took longer than that: a worker's start is only part of it.
    allowed = max(2.0, trio.current_time() - began)
    load = Load(supervisor.port)
    async with trio.open_nursery() as nursery:
        for _ in range(2):
            nursery.start_soon(load.client)
        os.kill(victim, signal.SIGKILL)
        with trio.fail_after(allowed):
            while victim in supervisor.worker_pids():
                await trio.sleep(0.01)  # until the supervisor has reaped it
            replacement = (await supervisor.wait_for_workers(2)) - {survivor}
            await load.served_by(replacement)
        await load.served_by({survivor})
        nursery.cancel_scope.cancel()
    log = supervisor.log()
    assert f"Worker pid {victim} died unexpectedly (killed by SIGKILL" in log
    assert "out of memory" in log
    assert load.failures == []


async def test_sighup_replaces_every_worker_without_a_failed_request(start):
    supervisor = await start("--workers", "2")
    old = await supervisor.wait_for_workers(2)
    load = Load(supervisor.port)
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(load.client)
        await load.served_by()
        supervisor.send(signal.SIGHUP)
        await supervisor.wait_for_log("Reload complete")
        new = await supervisor.wait_for_workers(2)
        served = len(load.pids)
        await load.served_by(new)
        nursery.cancel_scope.cancel()
    assert load.failures == []
    assert not old & new
    assert not old & set(load.pids[served:])
    assert load.done > 20


async def test_sigterm_lets_slow_requests_finish_then_exits_0(start):
    supervisor = await start("--workers", "2")
    await supervisor.wait_for_workers(2)
    results: list[tuple[int, str]] = []

    async def slow() -> None:
        results.append(await get(supervisor.port, "/slow"))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(slow)
        await supervisor.wait_for_log("slow request started", count=4)
        supervisor.send(signal.SIGTERM)
    assert [status for status, _ in results] == [200] * 4
    assert await supervisor.exit_code() == 0
    assert "SIGTERM received: stopping the workers gracefully" in supervisor.log()
    with pytest.raises(OSError):
        await get(supervisor.port)


async def stuck_get(port: int) -> None:
    with pytest.raises((OSError, ConnectionError, trio.BrokenResourceError)):
        await get(port, "/thread", within=30)


async def test_stopping_a_worker_whose_app_waits_in_a_thread_is_bounded(start):
    supervisor = await start("--workers", "1", "--timeout-graceful-shutdown", "1")
    await supervisor.wait_for_workers(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck_get, supervisor.port)
        await supervisor.wait_for_log("thread request started")
        begun = trio.current_time()
        supervisor.send(signal.SIGTERM)
        code = await supervisor.exit_code()
    # The worker's graceful timeout, 1 second for the cancellation, and
    # the supervisor's own stop: far from the supervisor's kill limit.
    assert trio.current_time() - begun < 5
    assert code == 0
    log = supervisor.log()
    assert "Exiting now, abandoning 1 connection(s) (GET /thread from" in log
    assert re.search(r"Worker pid \d+ stopped \(exit code 1\)", log)
    assert "killing it" not in log


async def test_sighup_replaces_a_worker_whose_app_waits_in_a_thread(start):
    supervisor = await start("--workers", "1", "--timeout-graceful-shutdown", "1")
    (old,) = await supervisor.wait_for_workers(1)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck_get, supervisor.port)
        await supervisor.wait_for_log("thread request started")
        supervisor.send(signal.SIGHUP)
        await supervisor.wait_for_log("Reload complete")
        await supervisor.wait_for_log(rf"Worker pid {old} stopped", within=6)
    assert "Exiting now, abandoning 1 connection(s) (GET /thread from" in supervisor.log()
    status, _ = await get(supervisor.port)
    assert status == 200


async def test_sigttin_and_sigttou_change_the_number_of_workers(start):
    supervisor = await start("--workers", "1")
    first = await supervisor.wait_for_workers(1)
    supervisor.send(signal.SIGTTIN)
    await supervisor.wait_for_workers(2)
    supervisor.send(signal.SIGTTIN)
    three = await supervisor.wait_for_workers(3)
    assert first < three
    supervisor.send(signal.SIGTTOU)
    await supervisor.wait_for_workers(2)
    supervisor.send(signal.SIGTTOU)
    await supervisor.wait_for_workers(1)
    supervisor.send(signal.SIGTTOU)  # never below one
    await supervisor.wait_for_log("SIGTTOU ignored: there is only one worker")
    assert len(await supervisor.wait_for_workers(1)) == 1
    status, _ = await get(supervisor.port)
    assert status == 200


@pytest.mark.parametrize(
    ("app", "message"),
    [
        ("nosuchmodule:app", "Could not find module 'nosuchmodule'"),
        ("failing:app", "Lifespan startup failed: no database"),
    ],
)
async def test_app_that_cannot_start_stops_the_supervisor_non_zero(start, app, message):
    began = trio.current_time()
    supervisor = await start("--workers", "2", "--lifespan", "on", app=app, ready=False)
    await supervisor.wait_for_log("Listening on")
    # Five seconds, unless this machine is so busy that merely starting
    # Python with triasgi (which each worker does too) took over a second.
    allowed = max(5.0, 4 * (trio.current_time() - began))
    left = allowed - (trio.current_time() - began)
    assert await supervisor.exit_code(within=left) != 0
    log = supervisor.log()
    assert f"Error: {message}" in log
    assert "Traceback" not in log
    assert len(re.findall(r"Started worker pid", log)) == 2  # no respawn loop


async def test_blocked_worker_is_replaced_after_the_health_timeout(start):
    supervisor = await start("--workers", "1", "--timeout-worker-healthcheck", "1")
    (blocked,) = await supervisor.wait_for_workers(1)
    with pytest.raises(trio.TooSlowError):
        await get(supervisor.port, "/block", within=0.3)
    # The health timeout is 1 s; the rest is a new worker's start, slower on a
    # busy machine.
    with trio.fail_after(20):
        while True:
            try:
                status, body = await get(supervisor.port, within=6)
            except OSError:
                continue
            break
    assert status == 200
    assert pid_of(body) != blocked
    log = supervisor.log()
    assert f"Worker pid {blocked} has not answered for" in log
    assert "was stopped for failing its health check" in log


async def test_limit_max_requests_recycles_workers_without_a_failed_request(start):
    supervisor = await start("--workers", "2", "--limit-max-requests", "10")
    first = await supervisor.wait_for_workers(2)
    load = Load(supervisor.port)
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(load.client)
        with trio.fail_after(15):
            while len(set(load.pids) - first) < 2:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert load.failures == []
    assert "reached limit_max_requests; its replacement is ready" in supervisor.log()


async def test_reload_restarts_the_worker_when_a_file_changes(start, app_dir):
    supervisor = await start("--reload", "--reload-dir", str(app_dir))
    await supervisor.wait_for_log("Watching for changes")
    await supervisor.wait_for_workers(1)
    status, body = await get(supervisor.port)
    assert (status, body.split()[0]) == (200, "v1")

    (app_dir / "pidapp.py").write_text(APP.replace('"v1"', '"v2"'))
    await supervisor.wait_for_log(r"Worker pid \d+ stopped \(exit code 0\)")
    status, body = await get(supervisor.port)
    assert body.split()[0] == "v2"

    # A syntax error is reported; the running worker keeps serving.
    (app_dir / "pidapp.py").write_text(APP.replace('"v1"', '"v3'))
    await supervisor.wait_for_log("Reload aborted.*SyntaxError")
    status, body = await get(supervisor.port)
    assert body.split()[0] == "v2"

    (app_dir / "pidapp.py").write_text(APP.replace('"v1"', '"v4"'))
    await supervisor.wait_for_log(r"Worker pid \d+ stopped \(exit code 0\)", count=2)
    status, body = await get(supervisor.port)
    assert body.split()[0] == "v4"


async def test_reload_delay_makes_a_burst_of_saves_one_restart(start, app_dir):
    # uvicorn's --reload-delay: the watcher waits this long after a change for
    # the next one before it restarts the worker.
    supervisor = await start("--reload", "--reload-dir", str(app_dir), "--reload-delay", "2")
    await supervisor.wait_for_log("Watching for changes")
    await supervisor.wait_for_workers(1)
    (app_dir / "pidapp.py").write_text(APP.replace('"v1"', '"v2"'))
    await trio.sleep(0.5)
    (app_dir / "pidapp.py").write_text(APP.replace('"v1"', '"v3"'))
    await supervisor.wait_for_log(r"Worker pid \d+ stopped \(exit code 0\)")
    status, body = await get(supervisor.port)
    assert (status, body.split()[0]) == (200, "v3")
    await trio.sleep(2.5)
    assert len(re.findall(r"Worker pid \d+ stopped", supervisor.log())) == 1


async def test_reload_dirs_from_the_environment_one_per_line(start, app_dir):
    # Directory names with spaces, given under the documented name.
    watched = [app_dir / "templates dir", app_dir / "more code"]
    for directory in watched:
        directory.mkdir()
    supervisor = await start(
        "--reload", env={"TRIASGI_RELOAD_DIR": "\n".join(map(str, watched))}
    )
    log = await supervisor.wait_for_log("Watching for changes")
    assert f"Watching for changes in {watched[0]}, {watched[1]}." in log
    await supervisor.wait_for_workers(1)
    (watched[1] / "helpers.py").write_text("X = 1\n")
    await supervisor.wait_for_log(r"Worker pid \d+ stopped \(exit code 0\)")


async def test_second_sigint_stops_at_once(start):
    supervisor = await start("--workers", "1", "--timeout-graceful-shutdown", "30")
    await supervisor.wait_for_workers(1)
    outcome: list[object] = []

    async def slow() -> None:
        try:
            outcome.append(await get(supervisor.port, "/slow?10", within=10))
        except (OSError, ConnectionError, trio.BrokenResourceError) as exc:
            outcome.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        await supervisor.wait_for_log("slow request started")
        supervisor.send(signal.SIGINT)
        await supervisor.wait_for_log(
            "SIGINT received: stopping the workers gracefully"
        )
        supervisor.send(signal.SIGINT)
        assert await supervisor.exit_code(within=3) == 0
    assert "SIGINT received: stopping at once" in supervisor.log()
    assert not isinstance(outcome[0], tuple)  # the slow request was cut off


async def test_workers_share_a_unix_socket_removed_at_exit(start, tmp_path):
    path = tmp_path / "triasgi.sock"
    supervisor = await start("--workers", "2", "--uds", str(path), ready=False)
    await supervisor.wait_for_log(f"Listening on unix socket {path}")
    await supervisor.wait_for_workers(2)
    stream = await trio.open_unix_socket(str(path))
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 ")
    supervisor.send(signal.SIGTERM)
    assert await supervisor.exit_code() == 0
    assert not path.exists()


async def test_systemd_socket_activation_serves_the_passed_socket(start):
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        supervisor = await start(
            "--workers", "1", ready=False, activation_fd=sock.fileno()
        )
        await supervisor.wait_for_log("Using the socket passed by systemd")
        await supervisor.wait_for_log(f"Listening on http://127.0.0.1:{port} ")
        await supervisor.wait_for_workers(1)
        sock.close()  # the supervisor and its worker hold their own copies
        status, _ = await get(port)
        assert status == 200
    finally:
        sock.close()


async def test_worker_that_keeps_crashing_is_restarted_with_growing_delays(start):
    supervisor = await start("--workers", "1", app="crashing:app")
    log = await supervisor.wait_for_log(r"waiting 1 seconds", within=20)
    assert re.findall(r"waiting ([\d.]+) seconds", log) == ["0.5", "1"]
    assert "died unexpectedly (exit code 1)" in log
    # The first replacement is started at once, then the delays grow.
    assert len(re.findall(r"Started worker pid", log)) == 3


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (an unreaped zombie is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_workers_leave_when_the_supervisor_is_killed(start):
    supervisor = await start("--workers", "2")
    workers = await supervisor.wait_for_workers(2)
    supervisor.process.kill()
    await supervisor.process.wait()
    # Their next heartbeat finds nobody listening; they shut down gracefully.
    with trio.fail_after(5):
        while any(_running(pid) for pid in workers):
            await trio.sleep(0.05)


async def test_limit_max_requests_without_workers_shuts_the_server_down():
    async def app(scope, receive, send):
        if scope["type"] == "http":
            await send({"type": "http.response.start", "status": 200})
            await send({"type": "http.response.body", "body": b"ok"})

    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            Server(app, Config(port=0, access_log=False, limit_max_requests=2)).run
        )
        port = server.addresses[0][1]
        assert (await get(port))[0] == 200
        assert not server.shutting_down
        assert (await get(port))[0] == 200
        assert server.shutting_down
    with pytest.raises(OSError):
        await get(port)


def test_limit_max_requests_jitter_spreads_the_limits():
    config = Config(limit_max_requests=100, limit_max_requests_jitter=10)
    limits = {Server(hello_app, config)._max_requests for _ in range(200)}
    assert limits <= set(range(100, 111))
    assert len(limits) > 5


async def test_web_concurrency_sets_the_number_of_workers(start):
    supervisor = await start(env={"WEB_CONCURRENCY": "2"})
    assert len(await supervisor.wait_for_workers(2)) == 2


async def test_reload_with_several_workers_is_a_usage_error(start):
    supervisor = await start("--reload", "--workers", "2", ready=False)
    assert await supervisor.exit_code() == 2
    log = supervisor.log()
    assert "--reload runs a single worker; it cannot be combined with --workers" in log
    assert "Traceback" not in log


async def test_sigterm_during_a_slow_startup_stops_at_once(start):
    supervisor = await start("--workers", "2", app="slowstart:app")
    await supervisor.wait_for_log("startup begun", count=2)
    supervisor.send(signal.SIGTERM)
    assert await supervisor.exit_code(within=5) == 0
    assert supervisor.log().count("Worker stopping before it finished starting") == 2


async def test_reload_waits_for_a_fix_when_the_app_is_broken_at_start(start, app_dir):
    (app_dir / "pidapp.py").write_text(APP.replace('"v1"', '"v1'))
    supervisor = await start("--reload", "--reload-dir", str(app_dir))
    await supervisor.wait_for_log("SyntaxError in .*pidapp.py")
    await supervisor.wait_for_log("Waiting for a file change to try again")
    assert supervisor.process.returncode is None
    await supervisor.wait_for_log("Watching for changes")

    (app_dir / "pidapp.py").write_text(APP.replace('"v1"', '"v2"'))
    await supervisor.wait_for_workers(1)
    status, body = await get(supervisor.port)
    assert (status, body.split()[0]) == (200, "v2")


async def test_ctrl_c_to_the_process_group_is_one_graceful_stop(start):
    supervisor = await start("--workers", "2")
    await supervisor.wait_for_workers(2)
    results: list[tuple[int, str]] = []

    async def slow() -> None:
        results.append(await get(supervisor.port, "/slow?0.5"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        await supervisor.wait_for_log("slow request started")
        # What a terminal does on Ctrl+C: SIGINT to every process of the group.
        os.killpg(supervisor.process.pid, signal.SIGINT)
    assert [status for status, _ in results] == [200]
    assert await supervisor.exit_code() == 0
    assert "stopping at once" not in supervisor.log()


ASYNCIO_APP = '''
import asyncio


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    # asyncio-only: fails on plain trio, works on the trio-asyncio loop.
    await asyncio.sleep(0)
    loop = type(asyncio.get_running_loop()).__name__
    body = ("v1 " + loop).encode()
    await send({"type": "http.response.start", "status": 200})
    await send({"type": "http.response.body", "body": body})
'''


async def test_reload_with_loop_asyncio_serves_asyncio_code_after_a_change(
    start, app_dir
):
    (app_dir / "aioapp.py").write_text(ASYNCIO_APP)
    supervisor = await start(
        "--reload", "--reload-dir", str(app_dir), "--loop", "asyncio", app="aioapp:app"
    )
    await supervisor.wait_for_log("Watching for changes")
    await supervisor.wait_for_workers(1)
    status, body = await get(supervisor.port)
    assert status == 200
    version, loop = body.split()
    assert version == "v1"
    assert "Trio" in loop  # trio-asyncio's event loop class

    (app_dir / "aioapp.py").write_text(ASYNCIO_APP.replace('"v1 "', '"v2 "'))
    await supervisor.wait_for_log(r"Worker pid \d+ stopped \(exit code 0\)")
    status, body = await get(supervisor.port)
    assert (status, body.split()[0]) == (200, "v2")
