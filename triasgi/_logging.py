"""Log configuration for the command line and run(); the access log line."""

from __future__ import annotations

import configparser
import json
import logging
import logging.config
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, final

from ._types import Address

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

access_logger = logging.getLogger("triasgi.access")


class LogConfigError(Exception):
    """A ``log_config`` file cannot be used; the message is one sentence."""


#: The loggers triasgi writes to.
LOGGERS = ("triasgi", "triasgi.error", "triasgi.access")
# Loggers of other servers, which a log config written for them names.
_OTHER_SERVERS = ("uvicorn", "hypercorn", "gunicorn", "granian", "daphne")


def configure_logging(
    level: str,
    *,
    log_format: str = "text",
    log_config: str | None = None,
    warn: bool = True,
    colors: bool = True,
) -> None:
    """Send triasgi's loggers to stderr at ``level``.

    ``triasgi.error`` carries server messages, ``triasgi.access`` one line per
    request.  Only the ``triasgi`` logger tree is touched, so an app's own
    logging setup is left alone.

    Args:
        level: the level name, as ``log_level``.
        log_format: ``"text"`` (with the local time), ``"plain"`` (text
            without it) or ``"json"`` (one JSON object per line).
        log_config: a :func:`logging.config.dictConfig` file (``.json``,
            ``.toml``, ``.yaml`` or ``.yml``) or a
            :func:`logging.config.fileConfig` file (``.ini``, ``.cfg``,
            ``.conf``); when given, it configures logging instead and
            ``level`` and ``log_format`` are not used.
        warn: log a warning when ``log_config`` configures loggers triasgi
            does not have (a worker process leaves that to the supervisor).
        colors: colour the level of text lines when stderr is a terminal
            (``use_colors``).

    Raises:
        LogConfigError: the ``log_config`` file cannot be read or applied.
    """
    if log_config is not None:
        named = _apply_log_config(log_config)
        foreign = [name for name in named if _is_foreign_logger(name)]
        if foreign and warn:
            logging.getLogger("triasgi.error").warning(
                "The log config %s configures %s, which triasgi does not have; "
                "triasgi logs to triasgi.error and triasgi.access.",
                log_config,
                ", ".join(foreign),
            )
        return
    numeric = TRACE if level == "trace" else logging.getLevelName(level.upper())
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(
            TextFormatter(
                timestamps=log_format != "plain",
                colors=colors and sys.stderr.isatty(),
            )
        )
    root = logging.getLogger("triasgi")
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    root.propagate = False


def _is_foreign_logger(name: str) -> bool:
    """A logger another server writes to, or a triasgi logger that does not exist."""
    if name.startswith("triasgi."):
        return name not in LOGGERS
    return name.partition(".")[0] in _OTHER_SERVERS


def _apply_log_config(path: str) -> list[str]:
    """Apply the log config file ``path``; the names of the loggers it configures."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".ini", ".cfg", ".conf"):
        return _apply_file_config(path)
    try:
        with open(path, "rb") as file:
            raw = file.read()
    except OSError as exc:
        raise LogConfigError(
            f"Cannot read the log config {path}: {(exc.strerror or str(exc)).lower()}."
        ) from None
    try:
        if suffix == ".json":
            data = json.loads(raw)
        elif suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover
                import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]
            data = tomllib.loads(raw.decode())
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped, unused-ignore]
            except ImportError:
                raise LogConfigError(
                    f"The log config {path} is YAML: install PyYAML to read it."
                ) from None
            data = yaml.safe_load(raw)
        else:
            raise LogConfigError(
                f"The log config {path} must end in .json, .toml, .yaml or .yml "
                "(a dictConfig), or .ini, .cfg or .conf (a fileConfig)."
            )
    except LogConfigError:
        raise
    except Exception as exc:
        raise LogConfigError(f"Cannot parse the log config {path}: {exc}.") from None
    if not isinstance(data, dict):
        raise LogConfigError(
            f"The log config {path} must hold a mapping (a logging dictConfig)."
        )
    data.setdefault("version", 1)
    data.setdefault("disable_existing_loggers", False)
    try:
        logging.config.dictConfig(data)
    except (ValueError, TypeError, AttributeError, ImportError) as exc:
        raise LogConfigError(f"The log config {path} is not valid: {exc}.") from None
    loggers = data.get("loggers")
    return [str(name) for name in loggers] if isinstance(loggers, dict) else []


def _apply_file_config(path: str) -> list[str]:
    """A :func:`logging.config.fileConfig` file, as uvicorn and gunicorn take."""
    parser = configparser.ConfigParser()
    try:
        with open(path, encoding="utf-8") as file:
            parser.read_file(file)
    except OSError as exc:
        raise LogConfigError(
            f"Cannot read the log config {path}: {(exc.strerror or str(exc)).lower()}."
        ) from None
    except (configparser.Error, UnicodeDecodeError) as exc:
        problem = " ".join(str(exc).split())
        raise LogConfigError(
            f"Cannot parse the log config {path}: {problem}."
        ) from None
    try:
        logging.config.fileConfig(parser, disable_existing_loggers=False)
    except KeyError as exc:
        raise LogConfigError(
            f"The log config {path} is not valid: it lacks the section or key {exc}."
        ) from None
    except Exception as exc:
        problem = " ".join(str(exc).split()).rstrip(".")
        raise LogConfigError(
            f"The log config {path} is not valid: {problem}."
        ) from None
    names = []
    for key in parser.get("loggers", "keys", fallback="").split(","):
        section = f"logger_{key.strip()}"
        if key.strip() and key.strip() != "root" and parser.has_section(section):
            names.append(parser.get(section, "qualname", fallback=key.strip()))
    return names


@final
class TextFormatter(logging.Formatter):
    """triasgi's text lines: the local time, the level, the message.

    Args:
        timestamps: start each line with the local time, to the millisecond
            (off for ``--log-format plain``, where journald or a container
            runtime adds its own).
        pid: show the process id after the level (with worker processes).
        colors: colour the level name (for a terminal).
    """

    default_msec_format = "%s.%03d"

    def __init__(
        self, *, timestamps: bool = True, pid: bool = False, colors: bool = False
    ) -> None:
        self.timestamps = timestamps
        self.pid = pid
        self.colors = colors
        parts = ["%(asctime)s"] if timestamps else []
        # With colours the level arrives padded and wrapped (formatMessage).
        parts.append("%(levelname)s" if colors else "%(levelname)-8s")
        if pid:
            parts.append("[%(process)d]")
        parts.append("%(message)s")
        super().__init__(" ".join(parts))

    def formatMessage(self, record: logging.LogRecord) -> str:
        if not self.colors:
            return super().formatMessage(record)
        level = record.levelname
        colour = _LEVEL_COLOURS.get(level, "")
        record.levelname = f"{colour}{level:<8}\x1b[0m" if colour else f"{level:<8}"
        try:
            return super().formatMessage(record)
        finally:
            record.levelname = level

    def with_pid(self) -> TextFormatter:
        """The same lines with the process id."""
        return TextFormatter(timestamps=self.timestamps, pid=True, colors=self.colors)


# ANSI colours of the level names on a terminal, as uvicorn's.
_LEVEL_COLOURS = {
    "TRACE": "\x1b[34m",
    "DEBUG": "\x1b[36m",
    "INFO": "\x1b[32m",
    "WARNING": "\x1b[33m",
    "ERROR": "\x1b[31m",
    "CRITICAL": "\x1b[1;31m",
}


@final
class JSONFormatter(logging.Formatter):
    """One JSON object per record; access lines carry their fields too.

    Each line has ``time`` (UTC, ISO 8601), ``level``, ``logger`` and
    ``message``, ``exc_info`` with an exception, and on access lines the
    request's fields (``client``, ``method``, ``path``, ``status`` ...).
    Name it in a log config as ``triasgi.logging.JSONFormatter``.
    """

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry = getattr(record, "access_entry", None)
        if isinstance(entry, AccessEntry):
            out.update(entry.fields())
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


# -- the access log line ------------------------------------------------------

# The version an access line writes for a request's wire version: HTTP/2's
# is "2" in the scope and "HTTP/2.0" in the log, as other servers write it.
_LOGGED_VERSIONS = {b"1.1": "1.1", b"1.0": "1.0", b"2": "2.0"}


def logged_version(http_version: bytes) -> str:
    """The ``http_version`` of an :class:`AccessEntry` for a request's."""
    return _LOGGED_VERSIONS.get(http_version) or http_version.decode("ascii")


@final
@dataclass
class AccessEntry:
    """What an access log line may show about one request."""

    client: Address | None
    method: str
    target: str
    http_version: str
    scheme: str
    status: int
    body_bytes: int
    duration: float  # seconds
    request_headers: list[tuple[bytes, bytes]]
    response_headers: list[tuple[bytes, bytes]]

    def fields(self) -> dict[str, Any]:
        """The named fields, for structured (JSON) logs."""
        return {
            "client": _client(self),
            "method": self.method,
            "path": self.target,
            "protocol": f"HTTP/{self.http_version}",
            "scheme": self.scheme,
            "status": self.status,
            "bytes": self.body_bytes,
            "duration_ms": round(self.duration * 1000, 3),
            "referer": _header(self.request_headers, b"referer"),
            "user_agent": _header(self.request_headers, b"user-agent"),
        }


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _client(entry: AccessEntry) -> str:
    if entry.client is None:
        return "-"
    host, port = entry.client
    return f"{host}:{port}" if port is not None else host


def _header_field(kind: str, name: bytes) -> Callable[[AccessEntry], str]:
    def get(entry: AccessEntry) -> str:
        headers = entry.request_headers if kind == "req" else entry.response_headers
        return _header(headers, name) or "-"

    return get


_FIELDS: dict[str, Callable[[AccessEntry], str]] = {
    "client": _client,
    "client_host": lambda e: e.client[0] if e.client else "-",
    "method": lambda e: e.method,
    "path": lambda e: e.target,
    "protocol": lambda e: f"HTTP/{e.http_version}",
    "request_line": lambda e: f"{e.method} {e.target} HTTP/{e.http_version}",
    "scheme": lambda e: e.scheme,
    "status": lambda e: str(e.status),
    "bytes": lambda e: str(e.body_bytes),
    "duration_ms": lambda e: f"{e.duration * 1000:.1f}",
    "duration_us": lambda e: str(round(e.duration * 1_000_000)),
    "referer": lambda e: _header(e.request_headers, b"referer") or "-",
    "user_agent": lambda e: _header(e.request_headers, b"user-agent") or "-",
    "time": lambda e: time.strftime("%Y-%m-%dT%H:%M:%S%z"),
}

DEFAULT_ACCESS_LOG_FORMAT = (
    '{client} - "{request_line}" {status} {bytes} {duration_ms}ms'
)
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@final
class AccessLogFormat:
    """A compiled ``access_log_format`` template.

    ``{name}`` is a field (see :data:`_FIELDS` and docs/deployment.md),
    ``{req:NAME}`` a request header, ``{res:NAME}`` a response header;
    ``{{`` and ``}}`` are literal braces.  A missing value shows as ``-``.

    Raises:
        ValueError: the template names an unknown field or has a lone brace.
    """

    def __init__(self, template: str | None = None) -> None:
        self.template = DEFAULT_ACCESS_LOG_FORMAT if template is None else template
        self._parts: list[str | Callable[[AccessEntry], str]] = []
        position = 0
        for match in _TOKEN.finditer(self.template):
            self._literal(self.template[position : match.start()])
            position = match.end()
            token = match.group(0)
            if token in ("{{", "}}"):
                self._literal(token[0])
            elif match.group(1) is None:
                raise ValueError(
                    f"access_log_format has a lone {token!r}; write {token * 2!r} "
                    "for a literal brace."
                )
            else:
                self._parts.append(_compile_field(match.group(1)))
        self._literal(self.template[position:])

    def _literal(self, text: str) -> None:
        if text:
            self._parts.append(text)

    def format(self, entry: AccessEntry) -> str:
        """The log line for ``entry``."""
        return "".join(
            part if isinstance(part, str) else part(entry) for part in self._parts
        )


def _compile_field(name: str) -> Callable[[AccessEntry], str]:
    kind, sep, header = name.partition(":")
    if sep and kind in ("req", "res") and header.strip():
        return _header_field(kind, header.strip().lower().encode("latin-1"))
    getter = _FIELDS.get(name)
    if getter is None:
        raise ValueError(
            f"access_log_format has an unknown field {{{name}}}; use one of "
            f"{', '.join(_FIELDS)}, req:NAME or res:NAME."
        )
    return getter


def log_access(access_format: AccessLogFormat, entry: AccessEntry) -> None:
    """Write the access line of one request to ``triasgi.access``."""
    if access_logger.isEnabledFor(logging.INFO):
        access_logger.info(
            access_format.format(entry),
            extra={"access_entry": entry},
        )
