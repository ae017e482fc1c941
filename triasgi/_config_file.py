"""Settings from a TOML file: ``--config FILE``, or ``[tool.triasgi]``.

The keys are the names of the :class:`Config` fields (``timeout_keep_alive``),
plus ``app``, ``app_dir`` and ``factory``, which say what to serve.  Without
``--config``, the ``[tool.triasgi]`` table of ``pyproject.toml`` in the
current directory is read when there is one: the directory the command runs
from, which is where the app's module is looked for unless ``app_dir`` says
otherwise (and ``app_dir`` may itself come from the table).

This module checks that each key exists and each value has the right TOML
type; the ranges and rules of the values are checked by :class:`Config`,
whose error the command line then attributes to the file.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from pathlib import Path
from typing import Any, final

from . import _config
from ._config import Config, config_fields

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]

PYPROJECT = "pyproject.toml"

#: Keys that are not Config fields: what to serve, as on the command line.
APP_KEYS: dict[str, type] = {"app": str, "app_dir": str, "factory": bool}


class ConfigFileError(Exception):
    """A config file cannot be used; the message is one sentence naming it."""


@final
@dataclasses.dataclass(frozen=True)
class ConfigFile:
    """The settings read from one file."""

    path: str
    settings: dict[str, Any]


def read_config_file(path: str | None) -> ConfigFile | None:
    """The settings of ``path``, or of ``[tool.triasgi]`` in ./pyproject.toml.

    Args:
        path: the ``--config`` file; ``None`` to look for ``pyproject.toml``
            in the current directory.  A file named ``pyproject.toml`` is
            read for its ``[tool.triasgi]`` table, any other file whole.

    Returns:
        The settings, or ``None`` without ``path`` when ``pyproject.toml`` is
        missing or has no ``[tool.triasgi]`` table.

    Raises:
        ConfigFileError: the file cannot be read or parsed, or a key or value
            in it is wrong.
    """
    if path is None:
        if not Path(PYPROJECT).is_file():
            return None
        table = _tool_table(_load_toml(PYPROJECT))
        if table is None:
            return None
        return ConfigFile(PYPROJECT, _checked(PYPROJECT, table, "[tool.triasgi]"))
    data = _load_toml(path)
    if Path(path).name == PYPROJECT:
        table = _tool_table(data)
        if table is None:
            raise ConfigFileError(
                f"The config file {path} has no [tool.triasgi] table: add one with "
                "the settings, such as port = 8000."
            )
        return ConfigFile(path, _checked(path, table, "[tool.triasgi]"))
    return ConfigFile(path, _checked(path, data, None))


def _tool_table(data: dict[str, Any]) -> Any:
    tool = data.get("tool")
    return tool.get("triasgi") if isinstance(tool, dict) else None


def _load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as file:
            data: dict[str, Any] = tomllib.load(file)
            return data
    except OSError as exc:
        problem = (exc.strerror or str(exc)).lower()
        raise ConfigFileError(
            f"Cannot read the config file {path}: {problem}."
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigFileError(
            f"The config file {path} is not valid TOML: {exc}."
        ) from None


def _checked(path: str, table: Any, name: str | None) -> dict[str, Any]:
    where = f"The config file {path}" + (f" in {name}" if name else "")
    if not isinstance(table, dict):
        raise ConfigFileError(
            f"{where} must be a table of settings, such as port = 8000."
        )
    kinds = _kinds()
    settings = {}
    for key, value in table.items():
        kind = kinds.get(key)
        if kind is None:
            raise ConfigFileError(
                f"{where} has an unknown setting {key!r}: {_suggest(key, kinds)}"
            )
        settings[key] = _value(where, key, value, kind)
    return settings


def _kinds() -> dict[str, str]:
    """Each key's TOML kind: bool, int, float, str or list."""
    hints = typing.get_type_hints(Config, globalns=vars(_config))
    kinds = {key: kind.__name__ for key, kind in APP_KEYS.items()}
    for field in config_fields():
        if field.metadata["multiple"]:
            kinds[field.name] = "list"
        elif field.metadata["flag"]:
            kinds[field.name] = "bool"
        else:
            hint = hints[field.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            base = args[0] if args else hint
            kinds[field.name] = base.__name__ if base in (int, float) else "str"
    return kinds


def _suggest(key: str, kinds: dict[str, str]) -> str:
    match = difflib.get_close_matches(key.replace("-", "_").lower(), kinds, n=1)
    if match:
        return f"did you mean {match[0]}?"
    return "the settings are the names of triasgi.Config, listed in docs/cli.md."


def _value(where: str, key: str, value: Any, kind: str) -> Any:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and number and isinstance(value, int):
        return value
    if kind == "float" and number:
        return float(value)
    if kind == "str" and isinstance(value, str):
        return value
    if kind == "list" and isinstance(value, list):
        if all(isinstance(v, str) for v in value):
            return list(value)
    raise ConfigFileError(
        f"{where} gives {key} {_shown(value)}: write {_example(key, kind)}."
    )


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list of other things than strings"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _example(key: str, kind: str) -> str:
    field = {f.name: f for f in config_fields()}.get(key)
    default = None if field is None or kind == "list" else field.default
    if kind == "bool":
        return f"{key} = true or {key} = false"
    if kind == "int":
        example = default if isinstance(default, int) else 1
        return f"a whole number, such as {key} = {example}"
    if kind == "float":
        seconds = default if isinstance(default, float) else 5.0
        return f"a number of seconds, such as {key} = {seconds:g} (inf for no limit)"
    if kind == "list":
        return f'a list of strings, such as {key} = ["..."]'
    choices = field.metadata["choices"] if field is not None else None
    if choices:
        quoted = [f'"{choice}"' for choice in choices]
        return f"{key} = {', '.join(quoted[:-1])} or {quoted[-1]}"
    return f'a string in quotes, such as {key} = "..."'
