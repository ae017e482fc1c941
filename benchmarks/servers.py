"""The servers under test: their command lines, and running one at a time.

Every server is started in a session of its own, pinned to one core, and is
stopped (TERM, then KILL of its process group) when the ``running()`` block
ends, whatever ends it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
APP = "benchmarks.apps:app"
# Long enough that no server closes the idle connections of the memory
# scenario while they are being opened and measured.
KEEP_ALIVE_SECONDS = 300
BACKLOG = 4096


# A triasgi flavour run from another git revision (--baseline) is named
# FLAVOUR@COMMIT, e.g. triasgi@a537609: the same command line, with that
# revision's triasgi package imported instead of the working tree's.
AT = "@"


# triasgi: the default h11 parser; triasgi-httptools: --http httptools;
# triasgi-asyncio: the same app as asyncio code on a trio-asyncio loop
# (--loop asyncio), to measure what the bridge costs.
# The reference points of benchmarks/floor.py, and their options.
_FLOOR_OPTIONS = {
    "trio-floor": [],
    "trio-floor-task": ["--app-task"],
    "trio-floor-noyield": ["--app-task", "--no-yield"],
}

_TRIASGI_FLAVOURS = {
    "triasgi": ["--http", "h11"],
    "triasgi-httptools": ["--http", "httptools"],
    "triasgi-asyncio": ["--http", "h11", "--loop", "asyncio"],
}


@dataclass(frozen=True)
class ServerSpec:
    """A server and how to run the benchmark app under it."""

    name: str
    websocket: bool  # whether it takes part in the WebSocket scenario
    # The HTTP scenarios it can serve, when not all of them.
    only: tuple[str, ...] | None = None
    # Whether it serves HTTP/2 with prior knowledge on its cleartext port
    # (the HTTP/2 scenarios and idle memory).
    http2: bool = False

    @property
    def flavour(self) -> str:
        """The server this is: the name without an ``@COMMIT``."""
        return split_name(self.name)[0]

    @property
    def revision(self) -> str | None:
        """The commit whose triasgi this runs, when not the working tree's."""
        return split_name(self.name)[1]

    def command(self, port: int) -> list[str]:
        py = sys.executable
        host = "127.0.0.1"
        if self.flavour in _TRIASGI_FLAVOURS:
            flavour = _TRIASGI_FLAVOURS[self.flavour]
            return [
                py,
                "-m",
                "triasgi",
                APP,
                "--host",
                host,
                "--port",
                str(port),
                "--no-access-log",
                "--log-level",
                "warning",
                "--timeout-keep-alive",
                str(KEEP_ALIVE_SECONDS),
                "--backlog",
                str(BACKLOG),
                *flavour,
            ]
        if self.name.startswith("uvicorn-"):
            flavour = {
                "uvicorn-h11": [
                    "--http",
                    "h11",
                    "--loop",
                    "asyncio",
                    "--ws",
                    "wsproto",
                ],
                "uvicorn-httptools": ["--http", "httptools", "--loop", "uvloop"],
            }[self.name]
            return [
                py,
                "-m",
                "uvicorn",
                APP,
                "--host",
                host,
                "--port",
                str(port),
                *flavour,
                "--no-access-log",
                "--log-level",
                "warning",
                "--timeout-keep-alive",
                str(KEEP_ALIVE_SECONDS),
                "--backlog",
                str(BACKLOG),
            ]
        if self.name in _FLOOR_OPTIONS:
            return [
                py,
                "-m",
                "benchmarks.floor",
                "--host",
                host,
                "--port",
                str(port),
                "--backlog",
                str(BACKLOG),
                *_FLOOR_OPTIONS[self.name],
            ]
        if self.name in ("hypercorn-trio", "hypercorn-asyncio"):
            # -w 0 serves in this process rather than in a spawned worker.
            return [
                py,
                "-m",
                "hypercorn",
                "-k",
                self.name.removeprefix("hypercorn-"),
                "-w",
                "0",
                "--config",
                "python:benchmarks.hypercorn_config",
                "--bind",
                f"{host}:{port}",
                "--log-level",
                "warning",
                "--keep-alive",
                str(KEEP_ALIVE_SECONDS),
                "--backlog",
                str(BACKLOG),
                APP,
            ]
        raise ValueError(f"unknown server {self.name!r}")


SERVERS = {
    spec.name: spec
    for spec in [
        ServerSpec("triasgi", websocket=True, http2=True),
        ServerSpec("triasgi-httptools", websocket=False, http2=True),
        ServerSpec("uvicorn-h11", websocket=True),
        ServerSpec("uvicorn-httptools", websocket=False),
        ServerSpec("hypercorn-trio", websocket=False, http2=True),
        # The baseline of the HTTP/2 ratios (uvicorn has no HTTP/2).
        ServerSpec("hypercorn-asyncio", websocket=False, http2=True),
        ServerSpec("triasgi-asyncio", websocket=False, http2=True),
        # The bound on any trio server (benchmarks/floor.py).
        ServerSpec("trio-floor", websocket=False, only=("hello", "paced")),
        # The same with a task per request that checkpoints twice, as trio's
        # send_all does.
        ServerSpec("trio-floor-task", websocket=False, only=("hello", "paced")),
        # The same task with its cancellation points but no schedule point
        # unless a send must wait, as triasgi's send() does.
        ServerSpec("trio-floor-noyield", websocket=False, only=("hello", "paced")),
    ]
}


TRIASGI_FLAVOURS = list(_TRIASGI_FLAVOURS)


def split_name(name: str) -> tuple[str, str | None]:
    """``triasgi@a537609`` -> ``("triasgi", "a537609")``; no ``@``: no commit."""
    flavour, at, commit = name.partition(AT)
    return flavour, (commit if at else None)


def twin_name(name: str, commit: str) -> str:
    """The name of triasgi flavour ``name`` run from ``commit``."""
    if name not in _TRIASGI_FLAVOURS:
        raise ValueError(f"{name} is not a triasgi server")
    return f"{name}{AT}{commit}"


def server_spec(name: str) -> ServerSpec:
    """``SERVERS[name]``, or for ``triasgi@COMMIT`` its working-tree twin renamed."""
    flavour, commit = split_name(name)
    spec = SERVERS[flavour]
    if commit is None:
        return spec
    if not commit or flavour not in _TRIASGI_FLAVOURS:
        raise KeyError(name)
    return dataclasses.replace(spec, name=name)


class ServerError(Exception):
    """A server did not start, or died."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    spec: ServerSpec
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            raise ServerError(
                f"{self.spec.name} exited with {self.process.returncode}:\n"
                + _tail(self.log)
            )

    def cpu_seconds(self) -> float:
        """User and system CPU time used so far by the server and its children."""
        return sum(_cpu(pid) for pid in _process_tree(self.process.pid))

    def rss_bytes(self) -> int:
        """Resident memory of the server and its child processes."""
        return sum(_rss(pid) for pid in _process_tree(self.process.pid))


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime are fields 14 and 15 of stat(5), 12 and 13 after ")".
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def _get_ok(port: int, path: str = "/") -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    # Whatever is left in the server's own process group goes too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)


def placement(
    source: Path = REPO_ROOT, triasgi_from: Path | None = None
) -> tuple[Path, dict[str, str]]:
    """The working directory and environment of a server process.

    A server runs in ``source``, so ``triasgi`` and ``benchmarks.apps`` are
    imported from there (``python -m`` puts the working directory first).
    With ``triasgi_from``, a directory that holds another revision's
    ``triasgi`` package and nothing else, it runs there instead, with that
    directory and then ``source`` first on PYTHONPATH: triasgi comes from
    ``triasgi_from``, the app still from ``source``.
    """
    env = dict(os.environ)
    env.pop("PYTHONASYNCIODEBUG", None)
    env.pop("PYTHONDEVMODE", None)
    if triasgi_from is None:
        return source, env
    path = [str(triasgi_from), str(source)]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    return triasgi_from, env


def imported_from(
    source: Path = REPO_ROOT, triasgi_from: Path | None = None
) -> dict[str, Path]:
    """Where a server placed so imports ``triasgi`` and ``benchmarks.apps`` from."""
    cwd, env = placement(source, triasgi_from)
    code = (
        "import benchmarks.apps, triasgi\n"
        "print(triasgi.__file__)\n"
        "print(benchmarks.apps.__file__)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    lines = done.stdout.splitlines()
    if done.returncode != 0 or len(lines) != 2:
        raise ServerError(
            f"Cannot import triasgi and benchmarks.apps in {cwd}: "
            + (done.stderr.strip().splitlines() or ["no output"])[-1]
        )
    return {
        "triasgi": Path(lines[0]).resolve(),
        "benchmarks.apps": Path(lines[1]).resolve(),
    }


@contextlib.contextmanager
def running(
    spec: ServerSpec,
    *,
    core: int,
    log_dir: Path,
    source: Path = REPO_ROOT,
    triasgi_from: Path | None = None,
    extra_env: Mapping[str, str] | None = None,
    startup_timeout: float = 30.0,
) -> Iterator[RunningServer]:
    """Start ``spec`` pinned to ``core``; yield once it answers GET / with 200.

    ``source`` and ``triasgi_from`` say where it imports from (placement());
    ``extra_env`` is added to its environment (what the app reads).
    """
    port = free_port()
    log = log_dir / f"{spec.name}-{port}.log"
    cwd, env = placement(source, triasgi_from)
    env.update(extra_env or {})
    log_file = open(log, "wb")
    process = subprocess.Popen(
        ["taskset", "-c", str(core), *spec.command(port)],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        server = RunningServer(spec, process, port, log)
        deadline = time.monotonic() + startup_timeout
        while not _get_ok(port):
            server.check_alive()
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{spec.name} did not answer within {startup_timeout:g} s:\n"
                    + _tail(log)
                )
            time.sleep(0.1)
        yield server
    finally:
        _stop(process)
        log_file.close()
