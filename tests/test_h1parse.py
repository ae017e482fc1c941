"""Both request parsers give the same events and errors as h11 (--http).

Each case feeds the same bytes, in the same pieces, to an ``h11.Connection``
and to each backend's parser (``PlainParser`` for ``--http h11``,
``HttptoolsParser`` for ``--http httptools``), and compares everything the
connection reads from them: events, ``their_state`` after each, the error
status of a refused request, and the bytes left for the next request.  The
whole HTTP test suite also runs against both backends (the ``http_backend``
fixture of conftest.py); this file is where hostile and generated heads are
compared one by one.
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from triasgi import Config
from triasgi._events import NEED_DATA, Body, EndBody, ProtocolError, Request
from triasgi._protocol._h1 import H1Protocol
from triasgi._protocol._h1parse import (
    H1Limits,
    HttptoolsParser,
    ParsedRequest,
    PlainParser,
    parser_factory,
)

MAX_HEAD = 16 * 1024
LIMITS = H1Limits(max_head=MAX_HEAD, request_line=8190, fields=100, field_size=8190)
PARSERS = [PlainParser, HttptoolsParser]


def _describe(event: Any) -> Any:
    if type(event) in (ParsedRequest, h11.Request, Request):
        return (
            "request",
            event.method,
            event.target,
            event.http_version,
            list(event.headers),
        )
    if type(event) is h11.Data:
        return ("data", bytes(event.data))
    if type(event) is h11.EndOfMessage:
        return ("end", list(event.headers))
    return event


def _drive(parser: Any, pieces: list[bytes]) -> list[Any]:
    """What the connection would see, reading ``pieces`` as they arrive."""
    seen: list[Any] = []
    for piece in pieces:
        parser.receive_data(piece)
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as exc:
                seen.append(("error", exc.error_status_hint, parser.their_state))
                return seen
            seen.append((_describe(event), parser.their_state))
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            if type(event) is h11.ConnectionClosed:
                break
    data, closed = parser.trailing_data
    seen.append(("trailing", bytes(data), closed))
    return seen


def _compare(pieces: list[bytes]) -> list[Any]:
    expected = _drive(h11.Connection(h11.SERVER, MAX_HEAD), pieces)
    for parser in PARSERS:
        assert _drive(parser(LIMITS), pieces) == expected, parser.__name__
    return expected


def _fast_path_taken(parser_class: type[PlainParser], data: bytes) -> bool:
    parser = parser_class(LIMITS)
    parser.receive_data(data)
    try:
        parser.next_event()
    except h11.RemoteProtocolError:
        return False
    return parser._h11 is None


PLAIN = b"GET /a?b=c HTTP/1.1\r\nHost: example.test\r\nAccept: */*\r\n\r\n"

# Requests of every kind h11 accepts or refuses; the comment says which.
CASES = {
    "plain GET": PLAIN,
    "POST with a body": b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\n\r\nhello",
    "body and a pipelined request": b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
    + PLAIN,
    "two pipelined GETs": PLAIN + PLAIN,
    "HTTP/1.0 without Host": b"GET / HTTP/1.0\r\n\r\n",
    "HTTP/1.0 keep-alive": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "Connection: close": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, CLOSE\r\n\r\n",
    "data after Connection: close": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGET",
    "OWS around values": b"GET / HTTP/1.1\r\nHost:a\r\nX-A: \t v  v \t\r\n\r\n",
    "empty value": b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\n\r\n",
    "colons in a value": b"GET / HTTP/1.1\r\nHost: a:80\r\nX-A: b: c:\r\n\r\n",
    "only spaces as a value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A:  \t \r\n\r\n",
    "colon and spaces in the target": b"GET /a:b?c=d:e HTTP/1.1\r\nHost: a\r\n\r\n",
    "space after the version": b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
    "obs-text value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: caf\xc3\xa9\r\n\r\n",
    "control character in value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01b\r\n\r\n",
    "DEL in value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x7fb\r\n\r\n",
    "NUL in value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
    "CR in value": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",
    "missing Host": b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "two Host headers": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "two Host headers in 1.0": b"GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n",
    "same Content-Length twice": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nhi",
    "Content-Length list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nhi",
    "conflicting Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi",
    "signed Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nhi",
    "empty Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\r\n\r\n",
    "hex Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x2\r\n\r\nhi",
    "huge Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 123456789012345678901\r\n\r\n",
    "20-digit Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 00000000000000000002\r\n\r\nhi",
    "chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
    "chunked with a trailer": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n",
    "chunked and Content-Length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "gzip coding": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    "two Transfer-Encodings": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bad chunk size": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "WebSocket upgrade": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "h2c upgrade": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAA\r\n\r\n",
    "Expect: 100-continue": b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    "CONNECT": b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    "unknown method": b"FROB / HTTP/1.1\r\nHost: a\r\n\r\n",
    "lowercase method": b"get / HTTP/1.1\r\nHost: a\r\n\r\n",
    "method with a separator": b"GE(T / HTTP/1.1\r\nHost: a\r\n\r\n",
    "asterisk target": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "absolute-form target": b"GET http://a/b?c HTTP/1.1\r\nHost: a\r\n\r\n",
    "fragment in target": b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
    "space in target": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
    "obs-text in target": b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
    "DEL in target": b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
    "HTTP/1.2": b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
    "HTTP/2.0": b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
    "HTTP/0.9": b"GET /\r\n\r\n",
    "lowercase version": b"GET / http/1.1\r\nHost: a\r\n\r\n",
    "two spaces": b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
    "space before colon": b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    "empty header name": b"GET / HTTP/1.1\r\nHost: a\r\n: x\r\n\r\n",
    "separator in header name": b"GET / HTTP/1.1\r\nHost: a\r\nX(A): x\r\n\r\n",
    "line without a colon": b"GET / HTTP/1.1\r\nHost: a\r\nnonsense\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n",
    "bare LF": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare LF with a later CRLF": b"GET / HTTP/1.1\nHost: a\n\n" + PLAIN,
    "bare CR": b"GET / HTTP/1.1\rHost: a\r\r\n\r\n",
    "leading empty line": b"\r\n" + PLAIN,
    "leading space": b" " + PLAIN,
    "binary garbage": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "a head over the size limit": b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: "
    + b"b" * (MAX_HEAD + 10)
    + b"\r\n\r\n",
}


@pytest.mark.parametrize("data", CASES.values(), ids=CASES.keys())
def test_both_backends_read_each_case_as_h11_does(data: bytes) -> None:
    _compare([data])
    # The same bytes arriving one at a time, then the client closing.
    _compare([data[i : i + 1] for i in range(len(data))] + [b""])


@pytest.mark.parametrize(
    ("data", "fast"),
    [
        (PLAIN, True),
        (CASES["POST with a body"], True),
        (CASES["HTTP/1.0 without Host"], True),
        (CASES["obs-text value"], True),
        (CASES["chunked"], False),
        (CASES["WebSocket upgrade"], False),
        (CASES["missing Host"], False),
        (CASES["bare LF"], False),
        (CASES["same Content-Length twice"], False),
    ],
)
@pytest.mark.parametrize("parser_class", PARSERS)
def test_plain_requests_take_the_fast_path_and_others_go_to_h11(
    parser_class: type[PlainParser], data: bytes, fast: bool
) -> None:
    assert _fast_path_taken(parser_class, data) is fast


def test_only_httptools_sends_a_method_llhttp_does_not_know_to_h11() -> None:
    # A token h11 accepts as a method; llhttp knows a fixed list.
    data = CASES["unknown method"]
    assert _fast_path_taken(PlainParser, data)
    assert not _fast_path_taken(HttptoolsParser, data)


def test_client_closing_in_the_middle_of_a_body_is_an_error_for_both() -> None:
    seen = _compare(
        [b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nhel", b"lo", b""]
    )
    assert seen[-1][:2] == ("error", 400)


def test_head_left_incomplete_at_close_is_an_error_for_both() -> None:
    seen = _compare([b"GET / HTTP/1.1\r\nHost: a\r\n", b""])
    assert seen[-1][:2] == ("error", 400)


# Generated requests: a head put together from parts h11 accepts and parts it
# refuses, with a body, cut into random pieces.
_methods = st.sampled_from([b"GET", b"POST", b"HEAD", b"FROB", b"get", b"G T", b""])
_targets = st.sampled_from(
    [b"/", b"/a?b", b"*", b"http://a/", b"/\xff", b"/a\x00", b"/%20", b""]
)
_versions = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/1.2", b"HTTP/11"])
_names = st.sampled_from(
    [
        b"Host",
        b"host",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Connection",
        b"Upgrade",
        b"Expect",
        b"X-A",
        b"X A",
        b"",
    ]
)
_values = st.one_of(
    st.sampled_from(
        [b"a", b"0", b"2", b"3", b"close", b"chunked", b"websocket", b"100-continue"]
    ),
    st.binary(max_size=8),
)
_endings = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r"])


@st.composite
def _requests(draw: st.DrawFn) -> list[bytes]:
    line = b" ".join([draw(_methods), draw(_targets), draw(_versions)])
    head = line + draw(_endings)
    for _ in range(draw(st.integers(0, 5))):
        head += draw(_names) + b":" + draw(_values) + draw(_endings)
    data = head + draw(_endings) + draw(st.binary(max_size=12))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=4)))
    pieces = [data[a:b] for a, b in pairwise([0, *cuts, len(data)]) if b > a]
    if draw(st.booleans()):
        pieces.append(b"")
    return pieces


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_requests())
@example([PLAIN])
def test_both_backends_read_generated_requests_as_h11_does(
    pieces: list[bytes],
) -> None:
    _compare(pieces)


@pytest.mark.parametrize(
    "parser",
    [h11.Connection(h11.SERVER), PlainParser(LIMITS), HttptoolsParser(LIMITS)],
)
def test_data_after_the_close_is_a_bug_for_both(parser: Any) -> None:
    parser.receive_data(PLAIN)
    parser.receive_data(b"")
    with pytest.raises(RuntimeError, match="received close, then received more data"):
        parser.receive_data(b"x")


def test_backend_choice() -> None:
    factory = parser_factory("h11", LIMITS)
    assert type(factory()) is PlainParser
    assert type(parser_factory("httptools", LIMITS)()) is HttptoolsParser
    assert type(parser_factory("auto", LIMITS)()) is HttptoolsParser
    with pytest.raises(ValueError, match="http must be one of auto, h11, httptools"):
        Config(http="llhttp")  # type: ignore[arg-type]


# -- the head checks: on the fast path, in the parser's pass; otherwise scan_head


def _h11_alone(limits: H1Limits) -> Any:
    return lambda: h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_head)


def _protocol_events(
    new_parser: Any, limits: H1Limits, pieces: list[bytes]
) -> list[Any]:
    """Every event H1Protocol gives for ``pieces``, with all a Request holds."""
    protocol = H1Protocol(new_parser, limits)
    seen: list[Any] = []
    for piece in pieces:
        protocol.receive_data(piece)
        while True:
            event = protocol.next_event()
            if event is NEED_DATA:
                break
            if type(event) is Request:
                seen.append(
                    (
                        "request",
                        event.method,
                        event.target,
                        event.http_version,
                        event.headers,
                        event.keep_alive,
                        event.forwarded,
                        event.upgrade,
                        event.te_trailers,
                    )
                )
            elif type(event) is Body:
                seen.append(("body", bytes(event.data)))
            elif type(event) is EndBody:
                ready = protocol.next_request()
                seen.append(("end", ready))
                if ready is None:
                    return seen
            elif type(event) is ProtocolError:
                seen.append(("error", event.status))
                return seen
            else:
                seen.append(type(event).__name__)
                return seen
    return seen


def _compare_checked(limits: H1Limits, pieces: list[bytes]) -> list[Any]:
    expected = _protocol_events(_h11_alone(limits), limits, pieces)
    for parser in PARSERS:
        got = _protocol_events(lambda p=parser: p(limits), limits, pieces)
        assert got == expected, parser.__name__
    return expected


_HEAD_CHECKS = {
    "forwarded and TE": b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n"
    b"TE: deflate, Trailers;q=0.5\r\n\r\n",
    "TE twice": b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nTE: deflate\r\n\r\n",
    "Forwarded": b"GET / HTTP/1.1\r\nHost: a\r\nForwarded: for=1.2.3.4\r\n\r\n",
    "absolute form": b"GET http://b:8/c?d HTTP/1.1\r\nHost: a\r\n\r\n",
    "HTTP/1.0 with close": b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n",
    "keep-alive then another": PLAIN + PLAIN,
    "POST then GET": CASES["body and a pipelined request"],
}


@pytest.mark.parametrize("data", _HEAD_CHECKS.values(), ids=_HEAD_CHECKS.keys())
def test_head_checks_are_the_same_on_the_fast_path(data: bytes) -> None:
    _compare_checked(LIMITS, [data])


def test_each_limit_is_the_same_on_the_fast_path() -> None:
    head = b"GET /abc HTTP/1.1\r\nHost: a\r\nX-Long: 0123456789\r\n\r\n"
    # Each limit at the head's own measure, and one below it.
    line, size, fields, field = 17, 48, 2, 18
    for limits, status in [
        (
            H1Limits(max_head=size, request_line=line, fields=fields, field_size=field),
            None,
        ),
        (
            H1Limits(
                max_head=size, request_line=line - 1, fields=fields, field_size=field
            ),
            414,
        ),
        (
            H1Limits(
                max_head=size - 1, request_line=line, fields=fields, field_size=field
            ),
            431,
        ),
        (
            H1Limits(
                max_head=size, request_line=line, fields=fields - 1, field_size=field
            ),
            431,
        ),
        (
            H1Limits(
                max_head=size, request_line=line, fields=fields, field_size=field - 1
            ),
            431,
        ),
    ]:
        seen = _compare_checked(limits, [head])
        if status is None:
            assert seen[0][0] == "request"
        else:
            assert seen == [("error", status)]


_limits = st.builds(
    H1Limits,
    max_head=st.integers(20, 200),
    request_line=st.integers(5, 60),
    fields=st.integers(0, 6),
    field_size=st.integers(3, 40),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_limits, _requests())
def test_generated_requests_are_checked_the_same_on_the_fast_path(
    limits: H1Limits, pieces: list[bytes]
) -> None:
    _compare_checked(limits, pieces)


@pytest.mark.parametrize("parser_class", PARSERS)
def test_a_plain_head_within_the_limits_comes_checked(
    parser_class: type[PlainParser],
) -> None:
    tight = H1Limits(max_head=MAX_HEAD, request_line=8190, fields=1, field_size=8190)
    for limits, kind in [(LIMITS, Request), (tight, ParsedRequest)]:
        parser = parser_class(limits)
        parser.receive_data(PLAIN)
        assert type(parser.next_event()) is kind
