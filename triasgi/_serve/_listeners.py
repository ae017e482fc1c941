"""Listening sockets: binding them, and naming the addresses they serve."""

from __future__ import annotations

import errno
import os
import socket
import stat

import trio

from .._config import Config
from .._errors import StartupError
from .._types import Address


def bind(config: Config) -> list[trio.SocketListener]:
    """The listening sockets of ``config``: a TCP port, a Unix socket or an fd.

    Raises:
        StartupError: one sentence saying what cannot be listened on and why.
    """
    what = f"{config.host}:{config.port}"
    try:
        if config.fd is not None:
            what = f"file descriptor {config.fd}"
            try:
                sock = socket.socket(fileno=config.fd)
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.ENOTSOCK):
                    problem = "not open" if exc.errno == errno.EBADF else "not a socket"
                    raise StartupError(
                        f"Cannot listen on {what}: it is {problem}; --fd takes a "
                        "listening socket the parent process passed down."
                    ) from None
                raise
        elif config.uds:
            what = f"unix socket {config.uds}"
            remove_socket_file(config.uds)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.bind(config.uds)
            os.chmod(config.uds, 0o666)
        else:
            family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
            infos = socket.getaddrinfo(
                config.host,
                config.port,
                family,
                socket.SOCK_STREAM,
                flags=socket.AI_PASSIVE,
            )
            family, kind, proto, _, address = infos[0]
            sock = socket.socket(family, kind, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError:
                sock.close()
                raise
        sock.listen(config.backlog)
        sock.setblocking(False)
    except socket.gaierror as exc:
        raise StartupError(
            f"Cannot resolve host {config.host!r}: {exc.strerror}."
        ) from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(f"Cannot listen on {what}: {reason.lower()}.") from None
    return [trio.SocketListener(trio.socket.from_stdlib_socket(sock))]


def describe_address(address: Address, config: Config) -> str:
    """A bound address as a user reads it: a URL, or the Unix socket's path."""
    host, port = address
    if port is None:
        return f"unix socket {host}"
    shown = f"[{host}]" if ":" in host else host
    scheme = "https" if config.ssl_certfile else "http"
    return f"{scheme}://{shown}:{port}"


def remove_socket_file(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


def sockname(sock: trio.socket.SocketType) -> Address:
    name = sock.getsockname()
    if isinstance(name, tuple):
        return (str(name[0]), int(name[1]))
    if isinstance(name, bytes):
        name = name.decode()
    return (str(name), None)


def peername(sock: trio.socket.SocketType) -> Address | None:
    try:
        name = sock.getpeername()
    except OSError:
        return None
    if isinstance(name, tuple):
        return (str(name[0]), int(name[1]))
    return None
