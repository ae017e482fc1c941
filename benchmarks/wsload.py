"""A small, bounded WebSocket echo load client.

Run by the harness as ``python -m benchmarks.wsload --port P``.  It opens
``--connections`` WebSocket connections to ``/ws``, then keeps exactly one
small text message in flight on each: send, wait for the echo, check it, send
again.  After ``--warmup`` seconds it counts the echoes that arrive during
``--seconds`` seconds, closes every connection with a close frame, and prints
one JSON line: ``{"messages": ..., "seconds": ..., "per_second": ...}``.
It prints ``counting`` on a line of its own when the counting starts.

It speaks the protocol on plain sockets with precomputed frames, so that the
client costs a small fraction of what the server does per message.  (Each
connection reuses one random masking key; servers do not check keys, and a
benchmark has no intermediary to protect.)  ``--probe`` makes one connection
and one echo, and exits 0 if the echo came back right.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import selectors
import socket
import struct
import sys
import time

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MESSAGE = b"Hello, WebSocket!"


class WebSocketError(Exception):
    pass


def _masked_frame(opcode: int, payload: bytes, key: bytes) -> bytes:
    if len(payload) >= 126:
        raise ValueError("only small frames")
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + masked


def server_frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked frame, as a server sends it."""
    if len(payload) < 126:
        return bytes([0x80 | opcode, len(payload)]) + payload
    if len(payload) < 1 << 16:
        return bytes([0x80 | opcode, 126]) + struct.pack("!H", len(payload)) + payload
    return bytes([0x80 | opcode, 127]) + struct.pack("!Q", len(payload)) + payload


def handshake(port: int, timeout: float = 10.0) -> socket.socket:
    """Open a connection to ``/ws`` and complete the opening handshake."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET /ws HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: %s\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n" % (port, key)
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            sock.close()
            raise WebSocketError(
                "the server closed the connection during the handshake"
            )
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    if b" 101 " not in lines[0] + b" ":
        sock.close()
        raise WebSocketError(f"handshake answered {lines[0]!r}")
    accept = base64.b64encode(hashlib.sha1(key + _GUID).digest())
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    if headers.get(b"sec-websocket-accept") != accept:
        sock.close()
        raise WebSocketError("wrong Sec-WebSocket-Accept")
    if rest:
        sock.close()
        raise WebSocketError("unexpected bytes after the handshake")
    return sock


class _Conn:
    __slots__ = ("buffer", "frame", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.frame = _masked_frame(0x1, MESSAGE, os.urandom(4))
        self.buffer = bytearray()


def _close(conns: list[_Conn], timeout: float = 2.0) -> None:
    """Send a close frame on each, wait briefly for the server's, then close."""
    for conn in conns:
        try:
            conn.sock.setblocking(True)
            conn.sock.settimeout(timeout)
            conn.sock.sendall(
                _masked_frame(0x8, struct.pack("!H", 1000), os.urandom(4))
            )
        except OSError:
            pass
    deadline = time.monotonic() + timeout
    for conn in conns:
        try:
            conn.sock.settimeout(max(0.01, deadline - time.monotonic()))
            while conn.sock.recv(65536):
                pass
        except OSError:
            pass
        conn.sock.close()


def probe(port: int) -> None:
    """One connection, one echo; raises WebSocketError if anything is off."""
    try:
        sock = handshake(port, timeout=5)
    except OSError as exc:
        raise WebSocketError(f"cannot connect: {exc}") from None
    conn = _Conn(sock)
    try:
        sock.sendall(conn.frame)
        while not _echoes(conn):
            chunk = sock.recv(4096)
            if not chunk:
                raise WebSocketError(
                    "the server closed the connection instead of echoing"
                )
            conn.buffer += chunk
    except OSError as exc:
        raise WebSocketError(f"no echo: {exc}") from None
    finally:
        _close([conn])


def take_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Remove the complete server frames at the start of ``buffer``.

    Returns ``(opcode, payload)`` pairs.  Server frames are never masked;
    fragmented messages are not expected for small messages and count as
    their opcode (0 for a continuation), which the caller rejects.
    """
    frames = []
    while len(buffer) >= 2:
        length = buffer[1] & 0x7F
        start = 2
        if length == 126:
            if len(buffer) < 4:
                break
            length, start = struct.unpack_from("!H", buffer, 2)[0], 4
        elif length == 127:
            if len(buffer) < 10:
                break
            length, start = struct.unpack_from("!Q", buffer, 2)[0], 10
        if len(buffer) < start + length:
            break
        frames.append((buffer[0] & 0x0F, bytes(buffer[start : start + length])))
        del buffer[: start + length]
    return frames


def _echoes(conn: _Conn) -> int:
    """Echoes complete in ``conn``'s buffer; answers pings, rejects the rest."""
    echoes = 0
    for opcode, payload in take_frames(conn.buffer):
        if opcode == 0x1 and payload == MESSAGE:
            echoes += 1
        elif opcode == 0x9:  # ping: answer it, it is not an echo
            conn.sock.sendall(_masked_frame(0xA, payload, os.urandom(4)))
        elif opcode != 0xA:  # an unsolicited pong is fine; nothing else is
            raise WebSocketError(f"unexpected frame {opcode:#x} {payload[:40]!r}")
    return echoes


def load(
    port: int, connections: int, seconds: float, warmup: float
) -> dict[str, float]:
    conns = [_Conn(handshake(port)) for _ in range(connections)]
    selector = selectors.DefaultSelector()
    for conn in conns:
        conn.sock.setblocking(False)
        selector.register(conn.sock, selectors.EVENT_READ, conn)
        conn.sock.sendall(conn.frame)
    start = time.monotonic()
    count_from = start + warmup
    end = count_from + seconds
    counted = 0
    counting = False
    try:
        while (now := time.monotonic()) < end:
            if not counting and now >= count_from:
                counting = True
                print("counting", flush=True)
            wake = end if counting else count_from
            for key, _ in selector.select(timeout=max(0.0, wake - now)):
                conn = key.data
                chunk = conn.sock.recv(65536)
                if not chunk:
                    raise WebSocketError("the server closed a connection")
                conn.buffer += chunk
                echoes = _echoes(conn)
                if echoes:
                    if counting:
                        counted += echoes
                    conn.sock.sendall(conn.frame)
    finally:
        selector.close()
        _close(conns)
    return {"messages": counted, "seconds": seconds, "per_second": counted / seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--probe", action="store_true")
    args = parser.parse_args(argv)
    try:
        if args.probe:
            probe(args.port)
            print(json.dumps({"probe": "ok"}))
        else:
            print(
                json.dumps(load(args.port, args.connections, args.seconds, args.warmup))
            )
    except (OSError, WebSocketError) as exc:
        print(f"WebSocket load failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
