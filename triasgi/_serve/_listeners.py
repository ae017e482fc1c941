"""Listening sockets: binding them, and naming the addresses they serve."""

from __future__ import annotations

import errno
import os
import socket
import stat

import trio

from .._config import Config, parse_bind
from .._errors import StartupError
from .._types import Address


def bind(config: Config) -> list[trio.SocketListener]:
    """The listening sockets of ``config``: its ``bind`` addresses, or else
    the TCP port, the Unix socket or the fd it names.

    Raises:
        StartupError: one sentence saying what cannot be listened on and why;
            no socket is left open.
    """
    listeners: list[trio.SocketListener] = []
    try:
        for target in bind_targets(config):
            listeners.append(_listen(*target, backlog=config.backlog))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners


def bind_targets(config: Config) -> list[tuple[str, str | int, int | None]]:
    """Where ``config`` listens, as ``(kind, where, port)`` (``parse_bind``)."""
    if config.bind:
        return [parse_bind(address) for address in config.bind]
    if config.fd is not None:
        return [("fd", config.fd, None)]
    if config.uds:
        return [("unix", config.uds, None)]
    return [("tcp", config.host, config.port)]


def listen_on(address: str, *, backlog: int) -> trio.SocketListener:
    """One listening socket on an address of its own (``--metrics-bind``).

    Raises:
        StartupError: as for :func:`bind`.
    """
    return _listen(*parse_bind(address, default_port=None), backlog=backlog)


def unix_paths(config: Config) -> list[str]:
    """The Unix socket files ``config`` creates (and removes when it stops)."""
    return [str(where) for kind, where, _ in bind_targets(config) if kind == "unix"]


def _listen(
    kind: str, where: str | int, port: int | None, *, backlog: int
) -> trio.SocketListener:
    if kind == "fd":
        what = f"file descriptor {where}"
    elif kind == "unix":
        what = f"unix socket {where}"
    else:
        what = f"{where}:{port}"
    try:
        if kind == "fd":
            try:
                sock = socket.socket(fileno=int(where))
            except OSError as exc:
                if exc.errno in (errno.EBADF, errno.ENOTSOCK):
                    problem = "not open" if exc.errno == errno.EBADF else "not a socket"
                    raise StartupError(
                        f"Cannot listen on {what}: it is {problem}; --fd takes a "
                        "listening socket the parent process passed down."
                    ) from None
                raise
        elif kind == "unix":
            path = str(where)
            remove_socket_file(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.bind(path)
            except OSError:
                sock.close()
                raise
            os.chmod(path, 0o666)
        else:
            host = str(where)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            infos = socket.getaddrinfo(
                host, port, family, socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )
            family, socktype, proto, _, address = infos[0]
            sock = socket.socket(family, socktype, proto)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError:
                sock.close()
                raise
        sock.listen(backlog)
        sock.setblocking(False)
    except socket.gaierror as exc:
        raise StartupError(f"Cannot resolve host {where!r}: {exc.strerror}.") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StartupError(f"Cannot listen on {what}: {reason.lower()}.") from None
    return trio.SocketListener(trio.socket.from_stdlib_socket(sock))


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
