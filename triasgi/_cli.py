"""The ``triasgi`` command line, generated from the fields of Config."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import typing
from typing import Any, Literal

import click
from click.core import ParameterSource

from . import _config
from ._config import Config, config_fields, env_name
from ._config_file import ConfigFile, ConfigFileError, read_config_file
from ._errors import StartupError
from ._importer import AppImportError, load_app
from ._logging import LogConfigError, configure_logging
from ._process._single import run_config
from ._version import __version__


def _click_type(field: dataclasses.Field[Any], hint: Any) -> click.ParamType[Any]:
    meta = field.metadata
    if meta["choices"] and meta["numbered"]:
        return _NumberedChoice(meta["choices"], case_sensitive=False)
    if meta["choices"]:
        return click.Choice(meta["choices"], case_sensitive=False)
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = args[0]
    if typing.get_origin(base) is Literal:
        return click.Choice([str(a) for a in typing.get_args(base)])
    if base is int:
        return click.IntRange(min=meta["minimum"], max=meta["maximum"])
    if base is float:
        return _Seconds(min=meta["minimum"], max=meta["maximum"])
    return click.STRING


class _NumberedChoice(click.Choice[str]):
    """A choice, or its position: ``--ssl-cert-reqs 2`` is ``required``."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if (
            isinstance(value, str)
            and value.isdigit()
            and int(value) < len(self.choices)
        ):
            value = self.choices[int(value)]
        return super().convert(value, param, ctx)


class _Seconds(click.FloatRange):
    """A number of seconds: ``inf`` means no limit, ``nan`` is refused."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        seconds = super().convert(value, param, ctx)
        if math.isnan(seconds):
            self.fail(
                "nan is not a number of seconds; give one such as 5, or inf for "
                "no limit.",
                param,
                ctx,
            )
        return seconds


class _Lines(click.types.StringParamType):
    """A repeatable option's values in one environment variable, one per line.

    A single value is taken whole, spaces included
    (``TRIASGI_HEADER="x-frame-options: DENY"``).
    """

    name = "text"

    def split_envvar_value(self, rv: str) -> list[str]:
        return [line.strip() for line in rv.splitlines() if line.strip()]


class _FileError(click.ClickException):
    """A usage error in a file or the environment: one line, exit status 2."""

    exit_code = 2


def _option_for(field: dataclasses.Field[Any], hint: Any) -> click.Option:
    meta = field.metadata
    name = field.name.replace("_", "-")
    envvar = [env_name(field.name), *meta["envvar"]]
    if meta["flag"]:
        return click.Option(
            [f"--{name}/--no-{name}"],
            default=field.default,
            help=meta["help"],
            envvar=envvar,
            show_default=True,
        )
    if meta["multiple"]:
        singular = name[:-1] if name.endswith("s") else name
        # The option's name first (TRIASGI_HEADER, as documented), then the
        # field's (TRIASGI_HEADERS, as in Config).
        envvar = [env_name(singular.replace("-", "_")), *envvar]
        return click.Option(
            [f"--{singular}", field.name],
            multiple=True,
            type=_LINES,
            help=meta["help"] + " In the environment, one value per line.",
            envvar=envvar,
            metavar=meta["metavar"],
        )
    default = field.default
    return click.Option(
        [f"--{name}"],
        type=_click_type(field, hint),
        default=default,
        help=meta["help"],
        envvar=envvar,
        metavar=meta["metavar"],
        show_default=default is not None and default != "",
    )


_LINES = _Lines()


def _serve_command(
    app: str | None,
    app_dir: str,
    factory: bool,
    config_file: str | None,
    env_file: str | None,
    **settings: Any,
) -> None:
    ctx = click.get_current_context()
    misspelled = _misspelled_environment(ctx.command)
    if misspelled:
        raise _FileError(misspelled)
    for field in config_fields():
        if field.metadata["multiple"]:
            settings[field.name] = list(settings[field.name])
    try:
        found = read_config_file(config_file)
    except ConfigFileError as exc:
        raise _FileError(str(exc)) from None
    from_file = _settings_from_file(ctx, found)
    app = from_file.pop("app", app)
    app_dir = from_file.pop("app_dir", app_dir)
    factory = from_file.pop("factory", factory)
    if app is None:
        raise click.UsageError(
            "Missing argument 'APP': give the app as 'module:attribute'."
        )
    try:
        config = Config(**{**settings, **from_file})
    except ValueError as exc:
        raise _blame(exc, settings, found, from_file) from None
    try:
        configure_logging(
            config.log_level,
            log_format=config.log_format,
            log_config=config.log_config,
            colors=config.use_colors,
        )
    except LogConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if found is not None:
        logging.getLogger("triasgi.error").info("Read settings from %s.", found.path)
    if config.workers is not None or config.reload:
        _supervise(config, app, app_dir, factory)
        return
    try:
        asgi_app = load_app(app, factory=factory, app_dir=app_dir)
    except AppImportError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        run_config(asgi_app, config)
    except StartupError as exc:
        raise click.ClickException(str(exc)) from None


def _settings_from_file(ctx: click.Context, found: ConfigFile | None) -> dict[str, Any]:
    """The file's settings that neither the command line nor the environment set."""
    if found is None:
        return {}
    return {
        key: value
        for key, value in found.settings.items()
        if ctx.get_parameter_source(key) in (ParameterSource.DEFAULT, None)
    }


def _blame(
    exc: ValueError,
    settings: dict[str, Any],
    found: ConfigFile | None,
    from_file: dict[str, Any],
) -> click.ClickException:
    """The error of a bad setting, naming the config file when it is the cause."""
    if found is not None and from_file:
        try:
            Config(**settings)
        except ValueError:
            pass
        else:
            return _FileError(f"The config file {found.path} has a bad value: {exc}")
    return click.UsageError(str(exc))


def _misspelled_environment(command: click.Command) -> str | None:
    """One sentence about a TRIASGI_* variable that looks like a misspelled option."""
    known: set[str] = set()
    for param in command.params:
        envvar = param.envvar
        known.update([envvar] if isinstance(envvar, str) else envvar or ())
    known = {name for name in known if name.startswith("TRIASGI_")}
    for name in sorted(os.environ):
        if not name.startswith("TRIASGI_") or name in known:
            continue
        for candidate in sorted(known):
            if _looks_like(name[8:], candidate[8:]):
                return (
                    f"The environment variable {name} is not a triasgi option: did "
                    f"you mean {candidate}?"
                )
    return None


def _looks_like(given: str, option: str) -> bool:
    """Whether ``given`` is ``option`` mistyped: other underscores, or 1-2 typos."""
    if given.replace("_", "") == option.replace("_", ""):
        return True
    # Short names are close to many words: TRIASGI_ID is not TRIASGI_FD.
    allowed = 0 if len(option) <= 3 else 1 if len(option) < 8 else 2
    return _edit_distance(given, option) <= allowed


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance, with a swap of two neighbours counted as one edit."""
    previous2: list[int] = []
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, 1):
        current = [i]
        for j, char_b in enumerate(b, 1):
            cost = min(
                previous[j] + 1,
                current[j - 1] + 1,
                previous[j - 1] + (char_a != char_b),
            )
            if i > 1 and j > 1 and char_a == b[j - 2] and a[i - 2] == char_b:
                cost = min(cost, previous2[j - 2] + 1)
            current.append(cost)
        previous2, previous = previous, current
    return previous[-1]


def _load_env_file(
    ctx: click.Context, param: click.Parameter, path: str | None
) -> None:
    """--env-file: put the file's variables in the environment, before options.

    A variable already in the environment wins over the file's.  The app and
    worker processes see the variables; TRIASGI_* ones set options.
    """
    if path is None:
        return
    try:
        from dotenv import dotenv_values
    except ImportError:
        raise _FileError(
            "--env-file needs the python-dotenv package: pip install 'triasgi[dotenv]'."
        ) from None
    try:
        with open(path, encoding="utf-8") as file:
            values = dotenv_values(stream=file)
    except OSError as exc:
        problem = (exc.strerror or str(exc)).lower()
        raise _FileError(f"Cannot read the env file {path}: {problem}.") from None
    except UnicodeDecodeError:
        raise _FileError(f"The env file {path} is not UTF-8 text.") from None
    for name, value in values.items():
        if value is not None:
            os.environ.setdefault(name, value)


def _supervise(config: Config, app: str, app_dir: str, factory: bool) -> None:
    """Serve from worker processes: --workers, or --reload for development."""
    from ._process._supervisor import SupervisorError, run_supervisor

    if config.reload and config.workers not in (None, 1):
        raise click.UsageError(
            "--reload runs a single worker; it cannot be combined with --workers "
            "(or WEB_CONCURRENCY)."
        )
    try:
        run_supervisor(config, app, app_dir=app_dir, factory=factory)
    except (StartupError, SupervisorError) as exc:
        raise click.ClickException(str(exc)) from None


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


class _Command(click.Command):
    """The command; a flag pair also takes a value, as uvicorn's flags do.

    ``--ws-per-message-deflate false`` (uvicorn's form) is
    ``--no-ws-per-message-deflate``, and ``--access-log=true`` is
    ``--access-log``: the same words as in the environment.
    """

    flags: frozenset[str] = frozenset()

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, _flag_values(args, self.flags))


def _flag_values(args: list[str], flags: frozenset[str]) -> list[str]:
    """``args`` with ``--flag VALUE`` and ``--flag=VALUE`` made plain flags."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return out + args[i:]
        name, eq, value = arg.partition("=")
        if not eq and name in flags and i + 1 < len(args):
            value = args[i + 1]
            if value.lower() in _TRUE + _FALSE:
                i += 1
                eq = "="
        if eq and name in flags and value.lower() in _TRUE + _FALSE:
            arg = name if value.lower() in _TRUE else "--no-" + name[2:]
        out.append(arg)
        i += 1
    return out


def build_command() -> click.Command:
    """The click command for ``triasgi``."""
    # Config.__module__ is rewritten to "triasgi"; resolve names where it lives.
    hints = typing.get_type_hints(Config, globalns=vars(_config))
    params: list[click.Parameter] = [
        # Required, unless the config file names it.
        click.Argument(["app"], envvar="TRIASGI_APP", metavar="APP", required=False),
        click.Option(
            ["--app-dir"],
            default=".",
            show_default=True,
            envvar="TRIASGI_APP_DIR",
            help="Look for the app's module in this directory.",
        ),
        click.Option(
            ["--factory"],
            is_flag=True,
            envvar="TRIASGI_FACTORY",
            help="APP names a factory: call it with no arguments to get the app.",
        ),
        click.Option(
            ["--env-file", "env_file"],
            envvar="TRIASGI_ENV_FILE",
            metavar="PATH",
            is_eager=True,
            expose_value=True,
            callback=_load_env_file,
            help="Load environment variables from this dotenv file (the "
            "triasgi[dotenv] extra); TRIASGI_* lines in it set options, and "
            "variables already set win.",
        ),
        click.Option(
            ["--config", "config_file"],
            envvar="TRIASGI_CONFIG",
            metavar="PATH",
            help="Read settings from this TOML file, with the names of "
            "triasgi.Config (default: [tool.triasgi] in ./pyproject.toml); the "
            "command line and the environment win over it.",
        ),
    ]
    params += [_option_for(f, hints[f.name]) for f in config_fields()]
    command = _Command(
        "triasgi",
        params=params,
        callback=_serve_command,
        help=(
            "Serve the ASGI app APP, given as 'module:attribute'.\n\n"
            "Every option can also be set in the environment as "
            "TRIASGI_<OPTION>, e.g. TRIASGI_TIMEOUT_KEEP_ALIVE=10, or in a "
            "config file (--config)."
        ),
        context_settings={"max_content_width": 100},
    )
    command.flags = frozenset(
        "--" + f.name.replace("_", "-") for f in config_fields() if f.metadata["flag"]
    )
    return click.version_option(__version__, "--version", prog_name="triasgi")(command)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``triasgi`` command."""
    build_command().main(args=argv, prog_name="triasgi")
