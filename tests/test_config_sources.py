"""Where the real `triasgi` command takes its settings from.

The command line, then the environment (``TRIASGI_*``, and an ``--env-file``),
then a config file (``--config``, or ``[tool.triasgi]`` in pyproject.toml),
then the defaults.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap

import httpx
import pytest
import trio

APP = textwrap.dedent(
    """
    import os

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = "root_path={} greeting={}".format(
            scope["root_path"], os.environ.get("GREETING", "-")
        )
        await send({"type": "http.response.start", "status": 200})
        await send({"type": "http.response.body", "body": body.encode()})
    """
)


@pytest.fixture
def app_dir(tmp_path):
    (tmp_path / "myapp.py").write_text(APP)
    return tmp_path


def environment(**variables: str) -> dict[str, str]:
    """The test's environment without TRIASGI_* variables, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIASGI_")}
    return {**env, **variables}


async def run_to_end(app_dir, *args: str, env: dict[str, str] | None = None):
    """Run a command that should stop by itself; its exit status and stderr."""
    result = None
    with trio.move_on_after(20):  # a server that started would run until killed
        result = await trio.run_process(
            [sys.executable, "-m", "triasgi", *args],
            cwd=app_dir,
            env=env or environment(),
            stdin=subprocess.DEVNULL,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result is not None, "the server started"
    return result.returncode, result.stderr.decode()


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


class Served:
    """What a request to a server started with some settings got."""

    def __init__(self, response: httpx.Response, stderr: str) -> None:
        self.response = response
        self.stderr = stderr


async def serve_one_request(
    app_dir, *args: str, env: dict[str, str] | None = None
) -> Served:
    """Start ``triasgi ARGS``, make one request, stop it with SIGINT."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "triasgi", *args],
        cwd=app_dir,
        env=env or environment(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    stderr = b""
    try:
        with trio.fail_after(15):
            while not (match := re.search(rb"Listening on (http://\S+)", stderr)):
                chunk = await process.stderr.receive_some()
                assert chunk, stderr.decode()
                stderr += chunk
            async with httpx.AsyncClient() as client:
                response = await client.get(match.group(1).decode() + "/")
            process.send_signal(signal.SIGINT)
            while chunk := await process.stderr.receive_some():
                stderr += chunk
            assert await process.wait() == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await process.stderr.aclose()
    return Served(response, stderr.decode())


# -- repeatable options in the environment -----------------------------------------------


async def test_header_from_the_environment_keeps_its_spaces(app_dir):
    served = await serve_one_request(
        app_dir, "myapp:app", "--port", "0",
        env=environment(TRIASGI_HEADER="x-frame-options: DENY\nx-team: web platform\n"),
    )
    assert served.response.headers["x-frame-options"] == "DENY"
    assert served.response.headers["x-team"] == "web platform"


async def test_header_from_the_environment_under_the_config_name(app_dir):
    served = await serve_one_request(
        app_dir, "myapp:app", "--port", "0",
        env=environment(TRIASGI_HEADERS="x-one-header: with two spaces"),
    )
    assert served.response.headers["x-one-header"] == "with two spaces"


async def test_header_on_the_command_line_wins_over_the_environment(app_dir):
    served = await serve_one_request(
        app_dir, "myapp:app", "--port", "0", "--header", "x-from: command line",
        env=environment(TRIASGI_HEADER="x-from: environment"),
    )
    assert served.response.headers.get_list("x-from") == ["command line"]


@pytest.mark.parametrize(
    ("name", "meant"),
    [
        ("TRIASGI_TIMEOUT_KEEPALIVE", "TRIASGI_TIMEOUT_KEEP_ALIVE"),
        ("TRIASGI_WORKER", "TRIASGI_WORKERS"),
        ("TRIASGI_LOG_LEVL", "TRIASGI_LOG_LEVEL"),
        ("TRIASGI_RELAOD_DIR", "TRIASGI_RELOAD_DIR"),
        ("TRIASGI_ROOTPATH", "TRIASGI_ROOT_PATH"),
    ],
)
async def test_misspelled_environment_variable_is_refused(app_dir, name, meant):
    code, stderr = await run_to_end(
        app_dir, "myapp:app", "--port", "0", env=environment(**{name: "1"})
    )
    assert code == 2
    assert one_line(stderr) == (
        f"Error: The environment variable {name} is not a triasgi option: did you "
        f"mean {meant}?"
    )


async def test_other_triasgi_variables_are_left_to_whoever_set_them(app_dir):
    # The benchmark harness tells its app where a file is this way.
    served = await serve_one_request(
        app_dir, "myapp:app", "--port", "0",
        env=environment(TRIASGI_BENCH_FILE="/tmp/x", TRIASGI_INTEGRATION="1"),
    )
    assert served.response.status_code == 200


# -- --env-file ---------------------------------------------------------------------------


async def test_env_file_sets_the_apps_variables_and_options(app_dir):
    (app_dir / "prod.env").write_text(
        "# the app's settings\n"
        'GREETING="hello from the env file"\n'
        "TRIASGI_ROOT_PATH=/from-env-file\n"
        "TRIASGI_HEADER=x-env-file: yes\n"
    )
    served = await serve_one_request(
        app_dir, "myapp:app", "--port", "0", "--env-file", "prod.env"
    )
    assert served.response.text == (
        "root_path=/from-env-file greeting=hello from the env file"
    )
    assert served.response.headers["x-env-file"] == "yes"


async def test_environment_wins_over_the_env_file(app_dir):
    (app_dir / ".env").write_text("GREETING=file\nTRIASGI_ROOT_PATH=/file\n")
    served = await serve_one_request(
        app_dir, "myapp:app", "--port", "0",
        env=environment(
            TRIASGI_ENV_FILE=".env", GREETING="shell", TRIASGI_ROOT_PATH="/shell"
        ),
    )
    assert served.response.text == "root_path=/shell greeting=shell"


async def test_missing_env_file_is_one_sentence(app_dir):
    code, stderr = await run_to_end(app_dir, "myapp:app", "--env-file", "nope.env")
    assert code == 2
    assert one_line(stderr) == (
        "Error: Cannot read the env file nope.env: no such file or directory."
    )


async def test_env_file_without_python_dotenv_names_the_extra(app_dir):
    blocker = app_dir / "no-dotenv"
    blocker.mkdir()
    (blocker / "dotenv.py").write_text("raise ImportError('not installed')\n")
    (app_dir / ".env").write_text("GREETING=hi\n")
    code, stderr = await run_to_end(
        app_dir, "myapp:app", "--env-file", ".env",
        env=environment(PYTHONPATH=str(blocker)),
    )
    assert code == 2
    assert one_line(stderr) == (
        "Error: --env-file needs the python-dotenv package: pip install "
        "'triasgi[dotenv]'."
    )


# -- config files -------------------------------------------------------------------------


async def test_config_file_sets_the_app_and_its_settings(app_dir):
    (app_dir / "triasgi.toml").write_text(textwrap.dedent(
        """
        app = "myapp:app"
        port = 0
        root_path = "/from-file"
        headers = ["x-from-file: one", "x-other: two words"]
        access_log = false
        timeout_keep_alive = inf
        """
    ))
    served = await serve_one_request(app_dir, "--config", "triasgi.toml")
    assert served.response.text == "root_path=/from-file greeting=-"
    assert served.response.headers["x-other"] == "two words"
    assert "Read settings from triasgi.toml." in served.stderr
    assert '"GET / HTTP/1.1"' not in served.stderr


@pytest.mark.parametrize(
    ("args", "env", "root_path"),
    [
        ([], {}, "/file"),
        ([], {"TRIASGI_ROOT_PATH": "/env"}, "/env"),
        (["--root-path", "/cli"], {"TRIASGI_ROOT_PATH": "/env"}, "/cli"),
    ],
)
async def test_command_line_then_environment_then_file(app_dir, args, env, root_path):
    (app_dir / "settings.toml").write_text('root_path = "/file"\nport = 0\n')
    served = await serve_one_request(
        app_dir, "myapp:app", *args,
        env=environment(TRIASGI_CONFIG="settings.toml", **env),
    )
    assert served.response.text == f"root_path={root_path} greeting=-"


async def test_pyproject_table_in_the_current_directory_is_read(app_dir):
    (app_dir / "pyproject.toml").write_text(textwrap.dedent(
        """
        [project]
        name = "myapp"

        [tool.triasgi]
        app = "myapp:app"
        port = 0
        root_path = "/pyproject"
        """
    ))
    served = await serve_one_request(app_dir)
    assert served.response.text == "root_path=/pyproject greeting=-"
    assert "Read settings from pyproject.toml." in served.stderr


async def test_pyproject_without_a_triasgi_table_changes_nothing(app_dir):
    (app_dir / "pyproject.toml").write_text('[project]\nname = "myapp"\n')
    served = await serve_one_request(app_dir, "myapp:app", "--port", "0")
    assert served.response.text == "root_path= greeting=-"
    assert "Read settings" not in served.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "timeout_keepalive = 10",
            "Error: The config file {name} has an unknown setting 'timeout_keepalive': "
            "did you mean timeout_keep_alive?",
        ),
        (
            "timeout-keep-alive = 10",
            "Error: The config file {name} has an unknown setting 'timeout-keep-alive': "
            "did you mean timeout_keep_alive?",
        ),
        (
            'port = "8000"',
            "Error: The config file {name} gives port the string '8000': write a whole "
            "number, such as port = 8000.",
        ),
        (
            "port = 70000",
            "Error: The config file {name} has a bad value: port must be at most 65535, "
            "got 70000.",
        ),
        (
            'access_log = "no"',
            "Error: The config file {name} gives access_log the string 'no': write "
            "access_log = true or access_log = false.",
        ),
        (
            'lifespan = "sometimes"',
            "Error: The config file {name} has a bad value: lifespan must be one of "
            "auto, on, off, got 'sometimes'.",
        ),
        (
            'headers = "x-a: b"',
            "Error: The config file {name} gives headers the string 'x-a: b': write a "
            'list of strings, such as headers = ["..."].',
        ),
        (
            "timeout_keep_alive = nan",
            "Error: The config file {name} has a bad value: timeout_keep_alive must be "
            "a number of seconds, got nan.",
        ),
        (
            "port = ",
            "Error: The config file {name} is not valid TOML: ",
        ),
    ],
)
async def test_bad_config_file_is_one_sentence_naming_file_and_key(
    app_dir, content, message
):
    (app_dir / "bad.toml").write_text(content + "\n")
    code, stderr = await run_to_end(app_dir, "myapp:app", "--config", "bad.toml")
    assert code == 2
    assert one_line(stderr).startswith(message.format(name="bad.toml"))


async def test_bad_pyproject_table_names_the_table(app_dir):
    (app_dir / "pyproject.toml").write_text("[tool.triasgi]\nworkerz = 2\n")
    code, stderr = await run_to_end(app_dir, "myapp:app")
    assert code == 2
    assert one_line(stderr) == (
        "Error: The config file pyproject.toml in [tool.triasgi] has an unknown "
        "setting 'workerz': did you mean workers?"
    )


async def test_missing_config_file_is_one_sentence(app_dir):
    code, stderr = await run_to_end(app_dir, "myapp:app", "--config", "nope.toml")
    assert code == 2
    assert one_line(stderr) == (
        "Error: Cannot read the config file nope.toml: no such file or directory."
    )


async def test_a_bad_value_on_the_command_line_is_not_blamed_on_the_file(app_dir):
    (app_dir / "ok.toml").write_text('root_path = "/file"\n')
    code, stderr = await run_to_end(
        app_dir, "myapp:app", "--config", "ok.toml", "--header", "nocolon"
    )
    assert code == 2
    assert "headers entries must look like 'name:value'" in stderr
    assert "ok.toml" not in stderr
