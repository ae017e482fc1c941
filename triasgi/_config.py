"""Config: one vocabulary for the CLI, the environment, serve() and fixtures.

Every setting is a field of :class:`Config`.  The command line is generated
from these fields: ``timeout_keep_alive`` is ``--timeout-keep-alive`` and
``TRIASGI_TIMEOUT_KEEP_ALIVE``.  A field's metadata holds its help text and,
where needed, the CLI details (choices, a flag pair, a repeatable option).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal, final

LIFESPAN_MODES = ("auto", "on", "off")
HTTP_PARSERS = ("auto", "h11", "httptools")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
LOG_FORMATS = ("text", "plain", "json")
# In the order of ssl.CERT_NONE, CERT_OPTIONAL and CERT_REQUIRED (0, 1, 2):
# uvicorn takes those numbers.
SSL_CERT_REQS = ("none", "optional", "required")
# The largest value a C int holds: file descriptors and the listen backlog
# are C ints, and a larger number overflows in the socket calls.
C_INT_MAX = 2**31 - 1


def _option(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    multiple: bool = False,
    flag: bool = False,
    minimum: float | None = None,
    maximum: int | None = None,
    metavar: str | None = None,
    envvar: tuple[str, ...] = (),
    numbered: bool = False,
) -> Any:
    """A Config field with the metadata the CLI is generated from.

    ``numbered``: a choice may also be given as its position in ``choices``.
    """
    metadata = {
        "help": help,
        "choices": choices,
        "multiple": multiple,
        "flag": flag,
        "minimum": minimum,
        "maximum": maximum,
        "metavar": metavar,
        "envvar": envvar,
        "numbered": numbered,
    }
    if multiple:
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@final
@dataclass
class Config:
    """Settings of a triasgi server.

    The same names are used everywhere: ``Config(timeout_keep_alive=10)``,
    ``--timeout-keep-alive 10`` and ``TRIASGI_TIMEOUT_KEEP_ALIVE=10`` mean the
    same thing.  Values are checked when the object is built; a bad value
    raises :class:`ValueError` with one sentence naming the setting.
    """

    # Where to listen.
    host: str = _option("127.0.0.1", "Bind to this host address.")
    port: int = _option(
        8000, "Bind to this TCP port (0 picks a free one).", minimum=0, maximum=65535
    )
    uds: str | None = _option(None, "Bind to this Unix domain socket path.")
    fd: int | None = _option(
        None,
        "Serve on this inherited listening socket file descriptor.",
        minimum=0,
        maximum=C_INT_MAX,
    )
    bind: list[str] = _option(
        (),
        "Listen on this address: HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N "
        "(repeatable; in place of --host/--port, --uds and --fd).",
        multiple=True,
        metavar="ADDRESS",
    )
    backlog: int = _option(
        2048,
        "Maximum number of connections waiting to be accepted.",
        minimum=1,
        maximum=C_INT_MAX,
    )

    # The application.
    root_path: str = _option(
        "", "The root path the application is mounted at (ASGI root_path)."
    )
    lifespan: Literal["auto", "on", "off"] = _option(
        "auto", "Run the ASGI lifespan protocol.", choices=LIFESPAN_MODES
    )
    timeout_lifespan_startup: float = _option(
        60.0, "Seconds the app may take to complete lifespan startup.", minimum=0
    )
    timeout_lifespan_shutdown: float = _option(
        60.0, "Seconds the app may take to complete lifespan shutdown.", minimum=0
    )

    # Timeouts and limits.
    timeout_keep_alive: float = _option(
        5.0, "Close an idle keep-alive connection after this many seconds.", minimum=0
    )
    timeout_graceful_shutdown: float = _option(
        30.0,
        "On shutdown, seconds in-flight requests get to finish before they are "
        "cancelled.",
        minimum=0,
    )
    disconnect_grace_period: float = _option(
        3.0,
        "Seconds an app gets to clean up after its client disconnects before it "
        "is cancelled (0 cancels at once).",
        minimum=0,
    )
    limit_concurrency: int | None = _option(
        None,
        "Answer 503 to requests beyond this many in flight at once.",
        minimum=1,
    )
    http: Literal["auto", "h11", "httptools"] = _option(
        "auto",
        "The HTTP/1.1 request parser of plain request heads: h11 (pure "
        "Python) or httptools (the triasgi[fast] extra), each with h11 for "
        "everything else; auto picks httptools when it is installed.",
        choices=HTTP_PARSERS,
    )
    h11_max_incomplete_event_size: int = _option(
        16 * 1024,
        "Largest request head, in bytes; a larger one gets 431.",
        minimum=1,
    )
    http2: bool = _option(
        True,
        "Serve HTTP/2: to TLS clients that choose it (ALPN h2), and on "
        "cleartext connections that open with the HTTP/2 preface (prior "
        "knowledge).",
        flag=True,
    )
    h2_max_concurrent_streams: int = _option(
        100,
        "HTTP/2 streams one connection may have open at once; a stream over "
        "the limit is refused (RST_STREAM REFUSED_STREAM).",
        minimum=1,
        maximum=C_INT_MAX,
    )

    # Response headers.
    headers: list[str] = _option(
        (),
        "Add a default response header, as 'name:value' (repeatable).",
        multiple=True,
        metavar="NAME:VALUE",
    )
    server_header: bool = _option(
        True, "Send a 'server: triasgi' response header.", flag=True
    )
    date_header: bool = _option(True, "Send a 'date' response header.", flag=True)

    # Logging.
    log_level: str = _option("info", "Log level.", choices=LOG_LEVELS)
    access_log: bool = _option(True, "Log one line per request.", flag=True)

    # Worker processes under a supervisor (see docs/deployment.md).
    workers: int | None = _option(
        None,
        "Run this many worker processes under a supervisor that owns the "
        "listening socket (also read from WEB_CONCURRENCY).",
        minimum=1,
        envvar=("WEB_CONCURRENCY",),
    )
    reload: bool = _option(
        False,
        "Development: restart the worker when a watched file changes.",
        flag=True,
    )
    reload_dirs: list[str] = _option(
        (),
        "With --reload, watch this directory (repeatable; default: the current "
        "directory).",
        multiple=True,
        metavar="DIR",
    )
    reload_includes: list[str] = _option(
        (),
        "With --reload, also watch files matching this glob (repeatable; '*.py' "
        "is always watched).",
        multiple=True,
        metavar="GLOB",
    )
    reload_excludes: list[str] = _option(
        (),
        "With --reload, ignore files matching this glob (repeatable).",
        multiple=True,
        metavar="GLOB",
    )
    reload_delay: float = _option(
        0.25,
        "With --reload, restart once no file has changed for this many seconds, "
        "so that a burst of saves makes one restart.",
        minimum=0.01,
        maximum=10,
    )
    timeout_worker_healthcheck: float = _option(
        30.0,
        "Kill and replace a worker whose event loop has not answered the "
        "supervisor for this many seconds.",
        minimum=0.1,
    )
    limit_max_requests: int | None = _option(
        None,
        "Restart a worker (or stop the server, without --workers) after it has "
        "served this many requests.",
        minimum=1,
    )
    limit_max_requests_jitter: int = _option(
        0,
        "Add a random 0 to N requests to --limit-max-requests for each worker, "
        "so that workers do not restart together.",
        minimum=0,
    )

    # WebSocket.
    ws_max_size: int = _option(
        16 * 1024 * 1024,
        "Largest WebSocket message, in bytes, counted across its fragments; a "
        "larger one closes the connection with 1009.",
        minimum=1,
    )
    ws_max_queue: int = _option(
        32,
        "WebSocket messages received but not yet taken by the app; beyond this "
        "the server stops reading from the client.",
        minimum=1,
    )
    ws_ping_interval: float = _option(
        20.0,
        "Seconds between the server's WebSocket pings (0 sends none).",
        minimum=0,
    )
    ws_ping_timeout: float = _option(
        20.0,
        "Seconds a WebSocket client gets to answer a ping before the connection "
        "is closed with 1011 (0 waits forever).",
        minimum=0,
    )
    ws_per_message_deflate: bool = _option(
        True,
        "Offer WebSocket per-message deflate compression to clients that ask for it.",
        flag=True,
    )

    # The event loop the app runs on (see docs/asyncio.md).
    loop: Literal["auto", "trio", "asyncio"] = _option(
        "auto",
        "Run the app as trio code, or as asyncio code on a trio-asyncio loop "
        "(needs the triasgi[asyncio] extra); auto runs apps of asyncio-only "
        "frameworks (Django, Quart, Sanic...) on asyncio and others on trio.",
        choices=("auto", "trio", "asyncio"),
    )

    # The production edge: TLS, proxies, hostile clients, log format (see
    # docs/deployment.md).
    ssl_certfile: str | None = _option(
        None, "Serve HTTPS with this PEM certificate (chain) file.", metavar="PATH"
    )
    ssl_keyfile: str | None = _option(
        None,
        "The PEM private key of --ssl-certfile (if not in the certificate file).",
        metavar="PATH",
    )
    ssl_keyfile_password: str | None = _option(
        None, "The password of an encrypted --ssl-keyfile.", metavar="PASSWORD"
    )
    ssl_ca_certs: str | None = _option(
        None,
        "Verify client certificates against the CA certificates in this PEM file.",
        metavar="PATH",
    )
    ssl_cert_reqs: str = _option(
        "none",
        "Client certificates: 'none' asks for none, 'optional' verifies one if "
        "sent, 'required' refuses a client without a valid one (mTLS); or "
        "0, 1, 2 as ssl.CERT_NONE, CERT_OPTIONAL, CERT_REQUIRED.",
        choices=SSL_CERT_REQS,
        numbered=True,
    )
    ssl_ciphers: str | None = _option(
        None,
        "TLS 1.2 cipher list in OpenSSL syntax (default: OpenSSL's).",
        metavar="CIPHERS",
    )
    timeout_ssl_handshake: float = _option(
        10.0,
        "Close a connection whose TLS handshake has not completed in this many "
        "seconds.",
        minimum=0,
    )
    proxy_headers: bool = _option(
        True,
        "Take the client address and scheme from X-Forwarded-* and Forwarded "
        "headers sent by a trusted proxy (see --forwarded-allow-ips).",
        flag=True,
    )
    forwarded_allow_ips: str = _option(
        "127.0.0.1",
        "Comma-separated IP addresses or CIDR ranges of trusted proxies, or '*' "
        "for any (also read from FORWARDED_ALLOW_IPS).",
        metavar="IPS",
        envvar=("FORWARDED_ALLOW_IPS",),
    )
    proxy_protocol: bool = _option(
        False,
        "Expect a PROXY protocol (v1 or v2) preamble on every connection, as "
        "sent by HAProxy and cloud load balancers.",
        flag=True,
    )
    timeout_request_header: float = _option(
        10.0,
        "Answer 408 and close when a request head has not fully arrived this "
        "many seconds after its first byte.",
        minimum=0,
    )
    timeout_request_body: float = _option(
        60.0,
        "Treat a request body that stalls this many seconds as a client disconnect.",
        minimum=0,
    )
    timeout_write: float = _option(
        60.0,
        "Drop a connection when one write of an HTTP response to it (a body "
        "message) has not completed in this many seconds.",
        minimum=0,
    )
    limit_request_line: int = _option(
        8190, "Longest request line, in bytes; a longer one gets 414.", minimum=1
    )
    limit_request_fields: int = _option(
        100, "Most header fields in a request; more get 431.", minimum=1
    )
    limit_request_field_size: int = _option(
        8190,
        "Largest request header field, in bytes; a larger one gets 431.",
        minimum=1,
    )
    limit_max_connections: int | None = _option(
        None,
        "Stop accepting while this many connections are open in this worker.",
        minimum=1,
    )
    access_log_format: str | None = _option(
        None,
        "Template of an access log line, with {field} names from "
        "docs/deployment.md (default: the built-in line).",
        metavar="TEMPLATE",
    )
    log_config: str | None = _option(
        None,
        "Configure logging from this logging.config.dictConfig file (.json, "
        ".toml, .yaml or .yml) or fileConfig file (.ini, .cfg or .conf).",
        metavar="PATH",
    )
    log_format: str = _option(
        "text",
        "Log lines as text with the local time, as text without it (plain: "
        "journald and container runtimes add their own), or as JSON objects.",
        choices=LOG_FORMATS,
    )
    use_colors: bool = _option(
        True,
        "Colour the level of text log lines when stderr is a terminal "
        "(--no-use-colors: never).",
        flag=True,
    )

    # Metrics (see docs/metrics.md).
    metrics_bind: str | None = _option(
        None,
        "Serve Prometheus metrics at /metrics on this address of its own: "
        "HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N (needs the "
        "triasgi[metrics] extra); under --workers the supervisor serves the "
        "sum of the workers'.",
        metavar="ADDRESS",
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and math.isnan(value):
                raise ValueError(f"{f.name} must be a number of seconds, got nan.")
            minimum = f.metadata.get("minimum")
            if minimum is not None and value is not None and value < minimum:
                raise ValueError(
                    f"{f.name} must be at least {minimum:g}, got {value!r}."
                )
            maximum = f.metadata.get("maximum")
            if maximum is not None and value is not None and value > maximum:
                raise ValueError(f"{f.name} must be at most {maximum}, got {value!r}.")
            choices = f.metadata.get("choices")
            if choices and f.metadata.get("numbered"):
                value = _numbered_choice(value, choices)
                setattr(self, f.name, value)
            if choices and value not in choices:
                raise ValueError(
                    f"{f.name} must be one of {', '.join(choices)}, got {value!r}."
                )
        for header in self.headers:
            _check_header(header)
        for address in self.bind:
            parse_bind(address)
        if self.metrics_bind is not None:
            parse_bind(self.metrics_bind, default_port=None, setting="metrics_bind")
        if self.bind and (self.uds or self.fd is not None):
            raise ValueError(
                "bind replaces uds and fd: give the Unix socket as 'unix:PATH' and "
                "the descriptor as 'fd://N' among the bind addresses."
            )
        _check_edge_settings(self)

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        """The extra response headers given with ``headers``, as bytes pairs."""
        pairs = []
        for header in self.headers:
            name, _, value = header.partition(":")
            pairs.append(
                (
                    name.strip().lower().encode("latin-1"),
                    value.strip().encode("latin-1"),
                )
            )
        return pairs

    def replace(self, **changes: Any) -> Config:
        """A copy of this config with some settings changed."""
        return dataclasses.replace(self, **changes)


def _numbered_choice(value: Any, choices: tuple[str, ...]) -> Any:
    """The choice at position ``value`` (an int, or a string of digits)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, int) and 0 <= value < len(choices):
        return choices[value]
    return value


def config_fields() -> list[dataclasses.Field[Any]]:
    """The settings, in declaration order, for generating the CLI."""
    return list(dataclasses.fields(Config))


def env_name(field_name: str) -> str:
    """The environment variable that sets ``field_name``."""
    return "TRIASGI_" + field_name.upper()


def parse_bind(
    address: str, *, default_port: int | None = 8000, setting: str = "bind"
) -> tuple[str, str | int, int | None]:
    """A ``bind`` address as ``(kind, where, port)``, as gunicorn writes them.

    ``HOST:PORT`` and ``[IPV6]:PORT`` are TCP (``HOST`` alone takes
    ``default_port``, or is refused without one); ``unix:PATH`` is a Unix
    socket; ``fd://N`` an inherited socket.

    Raises:
        ValueError: one sentence naming the setting, the address and the forms.
    """
    forms = "HOST:PORT, [IPV6]:PORT, unix:PATH or fd://N"
    if address.startswith("unix:"):
        path = address[len("unix:") :]
        if path:
            return "unix", path, None
    elif address.startswith("fd://"):
        number = address[len("fd://") :]
        if number.isdigit() and int(number) <= C_INT_MAX:
            return "fd", int(number), None
    else:
        host, port = address, "" if default_port is None else str(default_port)
        if address.startswith("["):
            host, bracket, rest = address[1:].partition("]")
            if bracket and (not rest or rest.startswith(":")):
                port = rest[1:] or port
            else:
                host = ""
        elif address.count(":") == 1:
            host, _, port = address.partition(":")
        elif ":" in address:
            host = ""  # an IPv6 address needs its brackets to take a port
        if host and port.isdigit() and int(port) <= 65535:
            return "tcp", host, int(port)
    raise ValueError(f"{setting} addresses look like {forms}, got {address!r}.")


def _check_header(header: str) -> None:
    """A ``headers`` entry: the rules the app's own response headers follow."""
    from ._protocol._h1writer import _BAD_VALUE, _TOKEN

    name, sep, value = header.partition(":")
    if not sep or not name.strip():
        raise ValueError(
            f"headers entries must look like 'name:value', got {header!r}."
        )
    try:
        name_bytes = name.strip().encode("latin-1")
        value_bytes = value.strip().encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(
            f"headers entry {header!r} has a character beyond latin-1; HTTP "
            "headers cannot carry it."
        ) from None
    if not _TOKEN.fullmatch(name_bytes):
        raise ValueError(
            f"headers entry {header!r} has an invalid name {name.strip()!r}: use "
            "letters, digits and !#$%&'*+-.^_`|~ only."
        )
    if _BAD_VALUE.search(value_bytes):
        raise ValueError(
            f"headers entry {header!r} has a CR, LF or NUL in its value: remove it."
        )


def _check_edge_settings(config: Config) -> None:
    """Settings that need parsing: a bad one raises ValueError at once."""
    from ._asgi._proxy_headers import TrustedProxies
    from ._logging import AccessLogFormat
    from ._metrics import MISSING_PROMETHEUS_CLIENT, have_prometheus_client
    from ._protocol._h1parse import HAVE_HTTPTOOLS, MISSING_HTTPTOOLS

    if config.ssl_certfile is None:
        given = [
            name
            for name in ("ssl_keyfile", "ssl_keyfile_password", "ssl_ca_certs")
            if getattr(config, name) is not None
        ]
        if config.ssl_ciphers is not None:
            given.append("ssl_ciphers")
        if config.ssl_cert_reqs != "none":
            given.append("ssl_cert_reqs")
        if given:
            raise ValueError(f"{given[0]} needs ssl_certfile, the server certificate.")
    TrustedProxies.parse(config.forwarded_allow_ips)
    if config.http == "httptools" and not HAVE_HTTPTOOLS:
        raise ValueError(MISSING_HTTPTOOLS)
    if config.access_log_format is not None:
        AccessLogFormat(config.access_log_format)
    if config.metrics_bind is not None and not have_prometheus_client():
        raise ValueError(MISSING_PROMETHEUS_CLIENT)
