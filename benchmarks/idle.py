"""Open many keep-alive connections, one request each, and hold them idle.

Run by the harness as ``python -m benchmarks.idle --port P --connections N``:
it opens the connections in batches, makes one ``GET /`` on each and reads the
whole response (so that every connection has served a request and sits idle
in keep-alive), prints ``ready N``, and holds them until its standard input
closes or ``--hold`` seconds pass.  Then it closes them all and exits.

With ``--http2`` each connection speaks HTTP/2 with prior knowledge instead:
the client preface and SETTINGS, one ``GET /`` on stream 1, the whole
response read and the server's SETTINGS acknowledged (``benchmarks.h2get``).
"""

from __future__ import annotations

import argparse
import resource
import select
import socket
import sys
import time

from . import h2get

_BATCH = 100


def raise_nofile(needed: int) -> None:
    """Raise the soft open-files limit to ``needed`` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _read_response(sock: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        raise ConnectionError(f"unexpected response {status!r}")
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise ConnectionError("response without content-length")
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        body += chunk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--hold", type=float, default=120.0)
    parser.add_argument("--http2", action="store_true", help="HTTP/2 connections")
    args = parser.parse_args(argv)
    raise_nofile(args.connections + 100)
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\n\r\n".encode()
    socks: list[socket.socket] = []
    try:
        if args.http2:
            # One at a time: each waits for its response before the next.
            while len(socks) < args.connections:
                socks.append(h2get.open_connection(args.port))
        while len(socks) < args.connections:
            batch = [
                socket.create_connection(("127.0.0.1", args.port), timeout=30)
                for _ in range(min(_BATCH, args.connections - len(socks)))
            ]
            socks += batch
            for sock in batch:
                sock.sendall(request)
            for sock in batch:
                _read_response(sock)
        print(f"ready {len(socks)}", flush=True)
        deadline = time.monotonic() + args.hold
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([sys.stdin], [], [], remaining)
            if readable and not sys.stdin.readline():
                break
    except (OSError, ConnectionError, h2get.H2GetError) as exc:
        print(f"error after {len(socks)} connections: {exc}", flush=True)
        return 1
    finally:
        for sock in socks:
            sock.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
