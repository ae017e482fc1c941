"""A reference point, not a server: the least a trio HTTP server can do.

``python -m benchmarks.floor --port N`` answers every request head it sees
on a keep-alive connection with the same hello response, with one task per
connection and no parsing beyond finding where each head ends.  No ASGI
call, no request object, no checks.  What it serves per CPU second bounds
what any server on trio (triasgi included) could serve, so the harness runs
it beside the others in the hello GET and idle-memory scenarios.

``--app-task`` adds what any ASGI server on trio that keeps reading while
the app runs must add, and nothing else: each request is answered from a
task of its own, started in the connection's nursery, which checkpoints
once for the response start and once more in writing the body, as trio's
socket send does (the write is that send without ``SocketStream``'s
layers, as triasgi's is).  The harness runs it as ``trio-floor-task``.

``--app-task --no-yield`` keeps that task, its write and its two
cancellation points, but not the two schedule points: the send waits (and
so lets other tasks run) only when the kernel does not take the whole
response, as triasgi's ``send()`` does.  The harness runs it as
``trio-floor-noyield``; the two differ in the schedule points alone.

Requests that a client pipelines are answered together, by one task and
one write, and nothing bounds how many it may pipeline without reading:
wrk sends one request at a time per connection.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Awaitable, Callable

import trio

from .apps import HELLO

RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\n"
    b"\r\n" % len(HELLO)
) + HELLO


class _Answers:
    """Requests of one connection waiting for the answering task."""

    __slots__ = ("pending", "running")

    def __init__(self) -> None:
        self.pending = 0
        self.running = False


async def _answer(
    stream: trio.SocketStream, answers: _Answers, *, schedule_points: bool = True
) -> None:
    # One task at a time per connection, so that pipelined requests are
    # answered in order and never by two writers at once.  The write is
    # trio's socket send without SocketStream's layers, as triasgi's: a
    # cancellation point, the non-blocking call, then (schedule_points)
    # a schedule point; it waits only when the kernel does not take it all.
    raw = stream.socket._sock  # type: ignore[attr-defined]
    try:
        while answers.pending:
            heads, answers.pending = answers.pending, 0
            # send() of the response start.
            if schedule_points:
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.checkpoint_if_cancelled()
            # send() of the body.
            data = RESPONSE * heads
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                sent = raw.send(data)
            except BlockingIOError:
                sent = 0
            if sent < len(data):
                await stream.send_all(memoryview(data)[sent:])
            elif schedule_points:
                await trio.lowlevel.cancel_shielded_checkpoint()
    except (trio.BrokenResourceError, OSError):
        pass
    finally:
        answers.running = False


_answer_without_yielding = functools.partial(_answer, schedule_points=False)


async def _receive(stream: trio.SocketStream) -> bytes:
    """The next bytes from the client; b"" once it has gone."""
    try:
        return await stream.receive_some(65536)
    except trio.BrokenResourceError:
        return b""


def _complete_heads(pending: bytes) -> tuple[int, bytes]:
    """How many request heads ``pending`` completes, and what follows the last."""
    heads = pending.count(b"\r\n\r\n")
    if heads:
        pending = pending[pending.rfind(b"\r\n\r\n") + 4 :]
    return heads, pending


async def _serve_with_app_task(
    stream: trio.SocketStream, answer: Callable[..., Awaitable[None]] = _answer
) -> None:
    pending = b""
    answers = _Answers()
    async with stream, trio.open_nursery() as nursery:
        while data := await _receive(stream):
            heads, pending = _complete_heads(pending + data)
            if heads:
                answers.pending += heads
                if not answers.running:
                    answers.running = True
                    nursery.start_soon(answer, stream, answers)


# trio-floor-noyield's connection handler.
_serve_without_yielding = functools.partial(
    _serve_with_app_task, answer=_answer_without_yielding
)


async def _serve(stream: trio.SocketStream) -> None:
    pending = b""
    async with stream:
        while data := await _receive(stream):
            heads, pending = _complete_heads(pending + data)
            if heads:
                try:
                    await stream.send_all(RESPONSE * heads)
                except trio.BrokenResourceError:
                    return


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backlog", type=int, default=4096)
    parser.add_argument(
        "--app-task",
        action="store_true",
        help="answer each request from a task of its own, as an ASGI server does",
    )
    parser.add_argument(
        "--no-yield",
        action="store_true",
        help="with --app-task: cancellation points, but no schedule point "
        "unless a send must wait",
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.no_yield and not args.app_task:
        parser.error("--no-yield goes with --app-task")
    handler: Callable[[trio.SocketStream], Awaitable[None]] = _serve
    if args.app_task:
        handler = _serve_without_yielding if args.no_yield else _serve_with_app_task

    async def serve() -> None:
        await trio.serve_tcp(handler, args.port, host=args.host, backlog=args.backlog)

    trio.run(serve)


if __name__ == "__main__":
    main()
