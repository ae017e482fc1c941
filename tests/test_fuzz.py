"""Fuzzing the request parser: random and mutated bytes, split at random points.

Each example serves one connection through in-memory streams under a mock
clock and checks what a client would see: zero or more well-formed HTTP/1.1
responses with expected statuses, then a clean close; nothing raised out of
the connection; and a second connection still served.

The CI run is short; ``nox -s fuzz`` (TRIASGI_FUZZ_EXAMPLES) runs longer.
"""

from __future__ import annotations

import itertools
import logging
import os
import re

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from triasgi.testing import open_memory_connection, open_memory_server

# The whole module runs against both request parsers (--http).
pytestmark = pytest.mark.usefixtures("http_backend")

LONG_RUN = os.environ.get("TRIASGI_FUZZ_EXAMPLES")


def fuzz_settings(ci_examples: int) -> settings:
    """A few seconds in CI, derandomized so it is the same every time."""
    return settings(
        max_examples=int(LONG_RUN) if LONG_RUN else ci_examples,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=not LONG_RUN,
        database=None,
    )


# What a client may be answered: the app's 200, the server's 4xx/5xx for bad
# requests, and 403 for a WebSocket upgrade the app refuses.
ALLOWED = {200, 400, 403, 404, 408, 413, 414, 426, 431, 501, 505}


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.close"})
        return
    if scope["type"] != "http":
        return
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-ok", b"1")]})
    await send({"type": "http.response.body", "body": b"ok"})


# -- strategies ------------------------------------------------------------------------

METHODS = ["GET", "POST", "HEAD", "PUT", "OPTIONS", "DELETE", "G\x00T", "get"]
TARGETS = ["/", "/a?b=c", "*", "http://x.test/y", "/%zz", "/\xff", "", "/" + "a" * 300]
VERSIONS = ["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.1x", "http/1.1"]
HEADER_NAMES = ["host", "content-length", "transfer-encoding", "expect", "connection",
                "upgrade", "sec-websocket-key", "sec-websocket-version", "x-forwarded-for",
                "forwarded", "x-forwarded-proto", "bad name", "", "x" * 100]
HEADER_VALUES = ["x.test", "0", "5", "-1", "99999999999999999999", "chunked", "gzip, chunked",
                 "100-continue", "close", "keep-alive", "Upgrade", "websocket",
                 "dGhlIHNhbXBsZSBub25jZQ==", "13", "1.2.3.4, 10.0.0.1", "for=1.2.3.4;proto=https",
                 "https", "", " lead", "a\rb", "\xe9", "1.2.3.4:\xb2", "x.test:" + "9" * 5000,
                 'for="[::1]:80";host=a:1', "for=_x, for=unknown", "[::1"]


@st.composite
def requests(draw) -> bytes:
    method = draw(st.sampled_from(METHODS))
    target = draw(st.sampled_from(TARGETS))
    version = draw(st.sampled_from(VERSIONS))
    values = st.sampled_from(HEADER_VALUES) | st.text(
        st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=30
    )
    headers = draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), values), max_size=6))
    if draw(st.booleans()):
        headers.insert(0, ("host", "x.test"))
    body = draw(st.binary(max_size=40))
    framing = draw(st.sampled_from(["none", "length", "chunked", "raw"]))
    if framing == "length":
        headers.append(("content-length", str(len(body))))
    elif framing == "chunked":
        headers.append(("transfer-encoding", "chunked"))
        body = (b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
    elif framing == "none":
        body = b""
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    return head.encode("latin-1", "replace") + body


@st.composite
def mutated(draw, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "duplicate", "truncate"]))
        at = draw(st.integers(0, len(data)))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.sampled_from([b"\r\n", b"\n", b"\x00", b":", b" ", b"\r\n\r\n", b"0\r\n",
                                                b"HTTP/1.1", b"\xff" * 3]) | st.binary(max_size=8))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


@st.composite
def connections(draw) -> bytes:
    kind = draw(st.sampled_from(["pipeline", "mutated", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    stream = b"".join(draw(st.lists(requests(), min_size=1, max_size=3)))
    if kind == "mutated":
        stream = draw(mutated(stream))
    return stream


@st.composite
def split(draw, data: bytes) -> list[bytes]:
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    points = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points) if b > a]


# -- checking a connection ------------------------------------------------------------------

STATUS_LINE = re.compile(rb"HTTP/1\.1 (\d{3}) [^\r\n]*\r\n")


def check_responses(output: bytes) -> list[int]:
    """Parse ``output`` as consecutive HTTP/1.1 responses; return their statuses.

    A response without a body is allowed where one is framed (a HEAD
    request, whose head announces the length of the body it would have had).
    """
    statuses = []
    rest = output
    while rest:
        match = STATUS_LINE.match(rest)
        assert match, f"not a status line: {rest[:80]!r}"
        end = rest.index(b"\r\n\r\n", match.end() - 2)
        head = rest[match.end() : end]
        rest = rest[end + 4 :]
        fields = [line.split(b":", 1) for line in head.split(b"\r\n") if line]
        assert all(len(f) == 2 for f in fields), head
        headers = {k.strip().lower(): v.strip() for k, v in fields}
        status = int(match.group(1))
        statuses.append(status)
        if status in (100, 101):
            continue
        if b"content-length" in headers:
            size = int(headers[b"content-length"])
            after = rest[size:]
            if len(rest) >= size and (not after or after.startswith(b"HTTP/1.1 ")):
                rest = after
            else:
                assert not rest or rest.startswith(b"HTTP/1.1 "), (size, rest[:80])
        elif headers.get(b"transfer-encoding") == b"chunked":
            while True:
                line_end = rest.index(b"\r\n")
                size = int(rest[:line_end], 16)
                rest = rest[line_end + 2 + size + 2 :]
                if size == 0:
                    break
    return statuses


async def serve_one(chunks: list[bytes], *, proxy_protocol: bool = False) -> tuple[bytes, list[str]]:
    errors: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                errors.append(record.getMessage())

    handler = Catch()
    logger = logging.getLogger("triasgi")
    logger.addHandler(handler)
    try:
        async with open_memory_server(app, proxy_protocol=proxy_protocol) as server:
            async with open_memory_connection(server) as stream:
                for chunk in chunks:
                    try:
                        await stream.send_all(chunk)
                    except trio.BrokenResourceError:
                        break  # the server closed: fine, read what it said
                    await trio.sleep(0.5)
                output = b""
                with trio.fail_after(3600):
                    while True:
                        try:
                            data = await stream.receive_some(65536)
                        except trio.BrokenResourceError:
                            break
                        if not data:
                            break
                        output += data
            # The server still serves a well-behaved client.
            async with open_memory_connection(server) as stream:
                preamble = b"PROXY UNKNOWN\r\n" if proxy_protocol else b""
                await stream.send_all(preamble + b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                after = b""
                while data := await stream.receive_some(65536):
                    after += data
                assert after.startswith(b"HTTP/1.1 200 OK\r\n"), after
    finally:
        logger.removeHandler(handler)
    return output, errors


def run_fuzz(chunks: list[bytes], proxy_protocol: bool = False) -> None:
    output, errors = trio.run(
        lambda: serve_one(chunks, proxy_protocol=proxy_protocol),
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    assert errors == []
    statuses = check_responses(output)
    assert set(statuses) <= ALLOWED, statuses


@fuzz_settings(60)
@given(st.data())
def test_random_and_mutated_requests_get_valid_responses_or_a_clean_close(data):
    stream = data.draw(connections())
    run_fuzz(data.draw(split(stream)))


@fuzz_settings(25)
@given(st.data())
def test_mutated_proxy_preambles_never_break_the_server(data):
    preamble = data.draw(st.sampled_from([
        b"PROXY TCP4 203.0.113.7 10.0.0.2 4711 443\r\n",
        b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n",
        b"PROXY UNKNOWN\r\n",
        b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c\xcb\x00\x71\x07\x0a\x00\x00\x02\x12\x67\x01\xbb",
        b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00",
    ]))
    stream = data.draw(mutated(preamble + b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"))
    run_fuzz(data.draw(split(stream)), proxy_protocol=True)


def test_the_response_checker_rejects_garbage():
    # The oracle itself must be able to fail.
    for bad in [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nab", b"garbage", b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n"]:
        try:
            check_responses(bad)
        except (AssertionError, ValueError):
            continue
        raise AssertionError(f"accepted {bad!r}")
    assert check_responses(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                           b"HTTP/1.1 400 Bad Request\r\ntransfer-encoding: chunked\r\n\r\n2\r\nno\r\n0\r\n\r\n") == [200, 400]
