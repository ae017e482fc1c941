"""A reference point, not a server: the least a trio HTTP server can do.

``python -m benchmarks.floor --port N`` answers every request head it sees
on a keep-alive connection with the same hello response, with one task per
connection and no parsing beyond finding where each head ends.  No ASGI
call, no request object, no checks.  What it serves per CPU second bounds
what any server on trio (triasgi included) could serve, so the harness runs
it beside the others in the hello GET and idle-memory scenarios.
"""

from __future__ import annotations

import argparse
import sys

import trio

from .apps import HELLO

RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\n"
    b"\r\n" % len(HELLO)
) + HELLO


async def _serve(stream: trio.SocketStream) -> None:
    pending = b""
    async with stream:
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            pending += data
            heads = pending.count(b"\r\n\r\n")
            if heads:
                pending = pending[pending.rfind(b"\r\n\r\n") + 4 :]
                try:
                    await stream.send_all(RESPONSE * heads)
                except trio.BrokenResourceError:
                    return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backlog", type=int, default=4096)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    async def serve() -> None:
        await trio.serve_tcp(_serve, args.port, host=args.host, backlog=args.backlog)

    trio.run(serve)


if __name__ == "__main__":
    main()
