"""The ``triasgi`` command line, generated from the fields of Config."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Literal

import click

from . import _config
from ._config import Config, config_fields, env_name
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
        return click.Option(
            [f"--{singular}", field.name],
            multiple=True,
            help=meta["help"],
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


def _serve_command(app: str, app_dir: str, factory: bool, **settings: Any) -> None:
    for field in config_fields():
        if field.metadata["multiple"]:
            settings[field.name] = list(settings[field.name])
    try:
        config = Config(**settings)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        configure_logging(
            config.log_level, log_format=config.log_format, log_config=config.log_config
        )
    except LogConfigError as exc:
        raise click.ClickException(str(exc)) from None
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
        click.Argument(["app"], envvar="TRIASGI_APP", metavar="APP"),
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
    ]
    params += [_option_for(f, hints[f.name]) for f in config_fields()]
    command = _Command(
        "triasgi",
        params=params,
        callback=_serve_command,
        help=(
            "Serve the ASGI app APP, given as 'module:attribute'.\n\n"
            "Every option can also be set in the environment as "
            "TRIASGI_<OPTION>, e.g. TRIASGI_TIMEOUT_KEEP_ALIVE=10."
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
