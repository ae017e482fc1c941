"""Access log format, JSON log lines, and --log-config files."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pytest
from conftest import H11Client

from triasgi import Config
from triasgi._logging import JSONFormatter, LogConfigError, configure_logging
from triasgi.testing import open_memory_connection, open_memory_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")


async def header_app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-type", b"text/plain"), (b"x-trace", b"t-42")]})
    await send({"type": "http.response.body", "body": b"created"})


async def access_lines(caplog, headers=(), target="/things?page=2", method="POST", body=b"", **settings):
    caplog.set_level("INFO", logger="triasgi.access")
    async with open_memory_server(header_app, access_log=True, **settings) as server:
        async with open_memory_connection(server, client=("192.0.2.10", 5123)) as stream:
            reply = await H11Client(stream).request_response(method, target, list(headers), body)
            assert reply.status == 201
    return [r for r in caplog.records if r.name == "triasgi.access"]


async def test_default_access_line(caplog):
    [record] = await access_lines(caplog)
    assert re.fullmatch(
        r'192\.0\.2\.10:5123 - "POST /things\?page=2 HTTP/1\.1" 201 7 \d+\.\dms', record.getMessage()
    )


async def test_access_log_format_with_every_kind_of_field(caplog):
    template = (
        "{client_host} {method} {path} {protocol} [{request_line}] {status} {bytes} "
        "{duration_us}us {duration_ms}ms ref={referer} ua={user_agent} "
        "id={req:X-Request-ID} none={req:x-missing} trace={res:x-trace} {scheme} {{literal}}"
    )
    [record] = await access_lines(
        caplog,
        headers=[("referer", "https://a.example/"), ("user-agent", "curl/8.0"), ("x-request-id", "r-7")],
        access_log_format=template,
    )
    line = record.getMessage()
    assert re.fullmatch(
        r"192\.0\.2\.10 POST /things\?page=2 HTTP/1\.1 \[POST /things\?page=2 HTTP/1\.1\] 201 7 "
        r"\d+us \d+\.\dms ref=https://a\.example/ ua=curl/8\.0 id=r-7 none=- trace=t-42 http \{literal\}",
        line,
    ), line


async def test_access_line_with_a_percent_sign_is_logged_as_is(caplog):
    [record] = await access_lines(caplog, target="/100%25", access_log_format="{path} 100%")
    assert record.getMessage() == "/100%25 100%"


@pytest.mark.parametrize(("template", "message"), [
    ("{nope}", "access_log_format has an unknown field {nope}"),
    ("{client", "access_log_format has a lone '{'"),
    ("x}", "access_log_format has a lone '}'"),
    ("{req:}", "access_log_format has an unknown field {req:}"),
])
def test_bad_access_log_format_is_a_config_error(template, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Config(access_log_format=template)


def test_bad_access_log_format_is_a_usage_error_on_the_command_line():
    result = subprocess.run(
        [sys.executable, "-m", "triasgi", "examples.hello:app", "--access-log-format", "{bogus}"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 2
    assert "access_log_format has an unknown field {bogus}" in result.stderr


# -- JSON lines -------------------------------------------------------------------------


async def test_json_formatter_gives_access_fields(caplog):
    [record] = await access_lines(caplog, headers=[("user-agent", "probe/1")])
    data = json.loads(JSONFormatter().format(record))
    assert data["logger"] == "triasgi.access"
    assert data["level"] == "INFO"
    assert data["message"] == record.getMessage()
    assert data["client"] == "192.0.2.10:5123"
    assert (data["method"], data["path"], data["status"], data["bytes"]) == ("POST", "/things?page=2", 201, 7)
    assert data["user_agent"] == "probe/1"
    assert data["referer"] is None
    assert isinstance(data["duration_ms"], float)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", data["time"])


def test_json_formatter_keeps_exception_text():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.getLogger("triasgi.error").makeRecord(
            "triasgi.error", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info()
        )
    data = json.loads(JSONFormatter().format(record))
    assert data["message"] == "failed here"
    assert "RuntimeError: boom" in data["exc_info"]


def test_cli_json_log_format_writes_json_lines(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "triasgi", "examples.hello:app", "--port", "0", "--log-format", "json"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    lines = []
    try:
        while not any("Listening on" in line for line in lines):
            line = process.stderr.readline()
            assert line, lines
            lines.append(line)
    finally:
        process.terminate()
        process.communicate(timeout=10)
    records = [json.loads(line) for line in lines]
    assert {r["logger"] for r in records} == {"triasgi.error"}
    assert records[-1]["message"].startswith("Listening on http://127.0.0.1:")


# -- --log-config ------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    """Put the triasgi loggers back as they were; close handlers a test added."""
    names = ["triasgi", "triasgi.access", "triasgi.error"]
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level,
                 logging.getLogger(n).propagate) for n in names}
    yield
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        for handler in logger.handlers:
            if handler not in handlers:
                handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def write_config(tmp_path, suffix, logfile):
    if suffix == ".json":
        text = json.dumps({
            "version": 1,
            "formatters": {"plain": {"format": "ACCESS %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "filename": str(logfile), "formatter": "plain"}},
            "loggers": {"triasgi.access": {"handlers": ["file"], "level": "INFO", "propagate": False}},
        })
    elif suffix == ".toml":
        text = (
            "version = 1\n[formatters.plain]\nformat = 'ACCESS %(message)s'\n"
            f"[handlers.file]\nclass = 'logging.FileHandler'\nfilename = '{logfile}'\nformatter = 'plain'\n"
            "[loggers.'triasgi.access']\nhandlers = ['file']\nlevel = 'INFO'\npropagate = false\n"
        )
    else:
        text = (
            "version: 1\nformatters:\n  plain:\n    format: 'ACCESS %(message)s'\n"
            f"handlers:\n  file:\n    class: logging.FileHandler\n    filename: '{logfile}'\n    formatter: plain\n"
            "loggers:\n  triasgi.access:\n    handlers: [file]\n    level: INFO\n    propagate: false\n"
        )
    path = tmp_path / f"logging{suffix}"
    path.write_text(text)
    return path


@pytest.mark.parametrize("suffix", [".json", ".toml", ".yaml"])
async def test_log_config_file_routes_access_lines(tmp_path, suffix, restore_logging):
    logfile = tmp_path / "access.log"
    configure_logging("info", log_config=str(write_config(tmp_path, suffix, logfile)))
    async with open_memory_server(header_app, access_log=True) as server:
        async with open_memory_connection(server) as stream:
            await H11Client(stream).request_response("GET", "/x")
    for handler in logging.getLogger("triasgi.access").handlers:
        handler.flush()
    assert re.fullmatch(r'ACCESS 127\.0\.0\.1:50000 - "GET /x HTTP/1\.1" 201 7 \d+\.\dms\n', logfile.read_text())


@pytest.mark.parametrize(("content", "name", "message"), [
    (None, "missing.json", "Cannot read the log config {path}: no such file or directory."),
    ("{not json", "bad.json", "Cannot parse the log config {path}: "),
    ("[1, 2]", "list.json", "The log config {path} must hold a mapping (a logging dictConfig)."),
    ('{"version": 1, "handlers": {"h": {"class": "no.such.Handler"}}}', "bad-handler.json",
     "The log config {path} is not valid: "),
    ("x = 1", "conf.txt", "The log config {path} must end in .json, .toml, .yaml or .yml "
     "(a dictConfig), or .ini, .cfg or .conf (a fileConfig)."),
    ("[loggers]\nkeys=root\n", "no-formatters.ini",
     "The log config {path} is not valid: it lacks the section or key 'formatters'."),
    ("not an ini file", "garbage.ini", "Cannot parse the log config {path}: "),
    (None, "missing.ini", "Cannot read the log config {path}: no such file or directory."),
])
def test_bad_log_config_is_one_sentence(tmp_path, content, name, message, restore_logging):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(LogConfigError) as info:
        configure_logging("info", log_config=str(path))
    assert str(info.value).startswith(message.format(path=path))


def test_cli_bad_log_config_exits_1_with_one_line(tmp_path):
    path = tmp_path / "missing.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "triasgi", "examples.hello:app", "--log-config", str(path)],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "TRIASGI_PORT": "0"},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"Error: Cannot read the log config {path}: no such file or directory."
    ]



# -- what the command writes -------------------------------------------------------------


def cli_lines_until(pattern, *args, cwd=None, env=None):
    """Run ``triasgi ARGS`` until a stderr line matches ``pattern``; the lines."""
    process = subprocess.Popen(
        [sys.executable, "-m", "triasgi", *args],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=cwd,
        env={**os.environ, **(env or {})},
    )
    lines = []
    try:
        while not any(re.search(pattern, line) for line in lines):
            line = process.stderr.readline()
            assert line, lines
            lines.append(line.rstrip("\n"))
    finally:
        process.terminate()
        process.communicate(timeout=10)
    return lines


@pytest.mark.parametrize(
    ("log_format", "line"),
    [
        ("text", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO     Listening on http://\S+ "),
        ("plain", r"INFO     Listening on http://\S+ "),
    ],
)
def test_cli_text_lines_start_with_the_local_time(log_format, line):
    lines = cli_lines_until("Listening on", "examples.hello:app", "--port", "0",
                            "--log-format", log_format)
    assert re.match(line, lines[-1]), lines


def test_cli_ini_log_config(tmp_path):
    path = tmp_path / "logging.ini"
    path.write_text(
        "[loggers]\nkeys=root,triasgi\n\n"
        "[handlers]\nkeys=stderr\n\n"
        "[formatters]\nkeys=mine\n\n"
        "[logger_root]\nlevel=WARNING\nhandlers=\n\n"
        "[logger_triasgi]\nlevel=INFO\nhandlers=stderr\nqualname=triasgi\npropagate=0\n\n"
        "[handler_stderr]\nclass=StreamHandler\nformatter=mine\nargs=(sys.stderr,)\n\n"
        "[formatter_mine]\nformat=INI %(levelname)s %(name)s %(message)s\n"
    )
    lines = cli_lines_until("Listening on", "examples.hello:app", "--port", "0",
                            "--log-config", str(path))
    assert lines[-1].startswith("INI INFO triasgi.error Listening on http://")


def test_cli_log_config_names_the_public_json_formatter(tmp_path):
    path = tmp_path / "logging.json"
    path.write_text(json.dumps({
        "version": 1,
        "formatters": {"json": {"()": "triasgi.logging.JSONFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json",
                                "stream": "ext://sys.stderr"}},
        "loggers": {"triasgi": {"handlers": ["stderr"], "level": "INFO"}},
    }))
    lines = cli_lines_until("Listening on", "examples.hello:app", "--port", "0",
                            "--log-config", str(path))
    record = json.loads(lines[-1])
    assert record["logger"] == "triasgi.error"
    assert record["message"].startswith("Listening on http://")


def test_json_formatter_keeps_its_old_name():
    import triasgi._logging
    import triasgi.logging

    assert triasgi.logging.JSONFormatter is triasgi._logging.JSONFormatter


def test_cli_warns_about_a_log_config_written_for_uvicorn(tmp_path):
    path = tmp_path / "uvicorn-logging.yaml"
    path.write_text(
        "version: 1\n"
        "formatters:\n  default:\n    format: '%(levelname)s %(message)s'\n"
        "handlers:\n  default:\n    class: logging.StreamHandler\n"
        "    formatter: default\n    stream: ext://sys.stderr\n"
        "loggers:\n"
        "  uvicorn: {handlers: [default], level: INFO}\n"
        "  uvicorn.error: {level: INFO}\n"
        "  uvicorn.access: {handlers: [default], level: INFO, propagate: false}\n"
        "  myapp: {handlers: [default], level: DEBUG}\n"
    )
    lines = cli_lines_until("log config", "examples.hello:app", "--port", "0",
                            "--log-config", str(path))
    assert lines[-1] == (
        f"The log config {path} configures uvicorn, uvicorn.error, uvicorn.access, "
        "which triasgi does not have; triasgi logs to triasgi.error and "
        "triasgi.access."
    )


@pytest.mark.parametrize("workers", [[], ["--workers", "1"]])
def test_debug_log_level_shows_where_the_app_failed_to_import(tmp_path, workers):
    (tmp_path / "broken.py").write_text(
        "import json\n\ndef load():\n    raise RuntimeError('config missing')\n\nload()\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "triasgi", "broken:app", "--port", "0", "--log-level",
         "debug", *workers],
        capture_output=True, text=True, timeout=30, check=False, cwd=tmp_path,
    )
    assert result.returncode == 1
    stderr = result.stderr
    assert "Loading the app broken:app failed:" in stderr
    assert "Traceback (most recent call last):" in stderr
    assert re.search(r'broken\.py", line 4, in load\n', stderr), stderr
    assert "RuntimeError: config missing" in stderr
    assert stderr.rstrip().splitlines()[-1] == (
        "Error: Importing module 'broken' failed: RuntimeError: config missing."
    )


def _startup_lines(*options: str, terminal: bool) -> bytes:
    """What ``triasgi`` writes to stderr until it listens (a pty or a pipe)."""
    import os
    import select
    import signal
    import subprocess
    import sys
    import time

    command = [sys.executable, "-m", "triasgi", "tests.conftest:hello_app",
               "--port", "0", "--lifespan", "off", *options]  # fmt: skip
    if terminal:
        controller, stderr = os.openpty()
    else:
        controller, stderr = os.pipe()
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=stderr)  # fmt: skip
    os.close(stderr)
    output = b""
    try:
        deadline = time.monotonic() + 20
        while b"Listening on" not in output and time.monotonic() < deadline:
            if select.select([controller], [], [], 0.1)[0]:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=20)
        os.close(controller)
    assert b"Listening on" in output, output
    return output


@pytest.mark.parametrize(
    ("options", "terminal", "coloured"),
    [
        ((), True, True),
        (("--no-use-colors",), True, False),
        (("--use-colors",), False, False),
        (("--log-format", "json"), True, False),
    ],
    ids=["terminal", "turned off", "pipe", "json"],
)
def test_level_names_are_coloured_on_a_terminal_only(options, terminal, coloured):
    output = _startup_lines(*options, terminal=terminal)
    assert (b"\x1b[32mINFO    \x1b[0m" in output) is coloured
    assert (b"\x1b[" in output) is coloured
