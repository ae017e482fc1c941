"""H1Protocol on its own: bytes in, events out; a response in, bytes out.

No socket and no trio: an h11 client in the same process is the other end.
Every test runs on both request parsers.
"""

from __future__ import annotations

import h11
import pytest

from triasgi._events import (
    NEED_DATA,
    Body,
    EndBody,
    ProtocolError,
    Request,
)
from triasgi._protocol._h1 import CONTINUE_100, H1Protocol
from triasgi._protocol._h1parse import H1Limits, parser_factory

LIMITS = H1Limits(max_head=16 * 1024, request_line=8190, fields=100, field_size=8190)
DEFAULTS = [(b"server", b"server: triasgi\r\n")]


@pytest.fixture(params=["h11", "httptools"])
def protocol(request):
    return H1Protocol(parser_factory(request.param, LIMITS), LIMITS)


def client_bytes(*events, client=None):
    client = client or h11.Connection(h11.CLIENT)
    return b"".join(client.send(event) or b"" for event in events)


def drain(protocol):
    """Every event up to NEED_DATA, as (kind name, detail) pairs."""
    seen = []
    while True:
        event = protocol.next_event()
        if event is NEED_DATA:
            return seen
        if type(event) is Request:
            seen.append(("request", event.method, event.target))
        elif type(event) is Body:
            seen.append(("body", event.data))
        elif type(event) is EndBody:
            seen.append(("end",))
            return seen
        else:
            seen.append((type(event).__name__,))
            return seen


def merge_bodies(events):
    merged = []
    for event in events:
        if event[0] == "body" and merged and merged[-1][0] == "body":
            merged[-1] = ("body", merged[-1][1] + event[1])
        else:
            merged.append(event)
    return merged


REQUESTS = {
    "get": [
        h11.Request(method="GET", target="/a?b=1", headers=[("host", "x")]),
        h11.EndOfMessage(),
    ],
    "post with a length": [
        h11.Request(
            method="POST",
            target="/up",
            headers=[("host", "x"), ("content-length", "11")],
        ),
        h11.Data(data=b"hello world"),
        h11.EndOfMessage(),
    ],
    "chunked post": [
        h11.Request(
            method="POST",
            target="/up",
            headers=[("host", "x"), ("transfer-encoding", "chunked")],
        ),
        h11.Data(data=b"hello "),
        h11.Data(data=b"world"),
        h11.EndOfMessage(),
    ],
}


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_a_request_split_at_every_offset_gives_the_same_events(protocol, name):
    data = client_bytes(*REQUESTS[name])
    whole = H1Protocol(protocol._new_parser, LIMITS)
    whole.receive_data(data)
    expected = merge_bodies(drain(whole))
    assert expected[0][0] == "request"
    assert expected[-1] == ("end",)
    for split in range(len(data) + 1):
        fresh = H1Protocol(protocol._new_parser, LIMITS)
        seen = []
        for piece in (data[:split], data[split:]):
            if piece:  # an empty piece would say the client closed
                fresh.receive_data(piece)
                seen += drain(fresh)
        assert merge_bodies(seen) == expected, split
        assert fresh.request_complete


def test_the_response_reaches_an_h11_client_whole(protocol):
    client = h11.Connection(h11.CLIENT)
    protocol.receive_data(client_bytes(*REQUESTS["get"], client=client))
    assert drain(protocol)[-1] == ("end",)
    data = b"".join(
        protocol.response_data(
            200, [(b"content-type", b"text/plain")], b"hi", False, DEFAULTS
        )
        + protocol.response_data(0, [], b" there", True, DEFAULTS)
    )
    client.receive_data(data)
    response = client.next_event()
    assert response.status_code == 200
    assert (b"transfer-encoding", b"chunked") in response.headers
    assert (b"server", b"triasgi") in response.headers
    body = b""
    while type(event := client.next_event()) is h11.Data:
        body += event.data
    assert body == b"hi there"
    assert type(event) is h11.EndOfMessage
    assert protocol.keep_alive


def test_a_response_given_whole_gets_a_content_length(protocol):
    protocol.receive_data(client_bytes(*REQUESTS["get"]))
    drain(protocol)
    head = protocol.response_data(200, [], b"hello", True, ())[0]
    assert b"content-length: 5\r\n" in head
    assert protocol.response_body_bytes == 5


def test_pipelined_requests_wait_for_the_next_cycle(protocol):
    client = h11.Connection(h11.CLIENT)
    first = client_bytes(*REQUESTS["post with a length"], client=client)
    second = client_bytes(*REQUESTS["get"])
    protocol.receive_data(first + second)
    assert drain(protocol) == [
        ("request", b"POST", b"/up"),
        ("body", b"hello world"),
        ("end",),
    ]
    assert protocol.request_complete
    protocol.response_data(200, [], b"", True, ())
    assert protocol.next_request() is False  # the next one has begun to arrive
    assert drain(protocol) == [("request", b"GET", b"/a?b=1"), ("end",)]
    protocol.response_data(204, [], b"", True, ())
    assert protocol.next_request() is True
    assert protocol.next_event() is NEED_DATA


def test_an_unread_body_keeps_the_request_incomplete(protocol):
    request = REQUESTS["post with a length"]
    data = client_bytes(*request)
    protocol.receive_data(data[: len(data) - 4])
    events = drain(protocol)
    assert events[0] == ("request", b"POST", b"/up")
    # The rest of the body has not come: the next request must not be parsed.
    assert not protocol.request_complete
    assert protocol.body_pending
    protocol.response_data(200, [], b"", True, ())
    assert protocol.keep_alive
    assert protocol.next_request() is None


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\nhost: x\r\nbad header\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n"
            b"transfer-encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.0\r\ntransfer-encoding: chunked\r\n\r\n", 400),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nhost: x\r\n\r\n", 414),
        (b"GET / HTTP/1.1\r\nhost: x\r\n" + b"x-a: 1\r\n" * 101 + b"\r\n", 431),
        (b"GET / HTTP/1.1\r\nhost: x\r\nx-big: " + b"v" * 9000 + b"\r\n\r\n", 431),
        (
            b"GET / HTTP/1.1\r\nhost: x\r\n"
            + b"".join(b"x-%d: %s\r\n" % (i, b"v" * 8000) for i in range(3))
            + b"\r\n",
            431,
        ),
        (
            b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1234567890123456789012\r\n\r\n",
            400,
        ),
    ],
    ids=[
        "bad header line",
        "length and chunked",
        "chunked in 1.0",
        "long request line",
        "too many fields",
        "field too large",
        "head too large in one piece",
        "22-digit length",
    ],
)
def test_malformed_heads_give_the_status_to_answer(protocol, data, status):
    protocol.receive_data(data)
    event = protocol.next_event()
    assert type(event) is ProtocolError
    assert event.status == status


def test_a_request_line_that_never_ends_is_caught_while_it_arrives(protocol):
    protocol.receive_data(b"GET /" + b"a" * 8200)
    assert protocol.next_event() is NEED_DATA
    assert protocol.pending_head_size() > 8000
    assert protocol.request_line_too_long()


@pytest.mark.parametrize(
    ("version", "headers", "response_headers", "closing", "keep_alive"),
    [
        ("1.1", [], [], False, True),
        ("1.0", [], [], False, False),
        ("1.1", [("connection", "close")], [], False, False),
        ("1.1", [("connection", "keep-alive, closed-captions")], [], False, True),
        ("1.1", [], [(b"connection", b"close")], False, False),
        ("1.1", [], [], True, False),
    ],
    ids=["1.1", "1.0", "request close", "no close token", "response close", "shutdown"],
)
def test_keep_alive_after_each_response(
    protocol, version, headers, response_headers, closing, keep_alive
):
    lines = [f"GET / HTTP/{version}", "host: x", *(f"{k}: {v}" for k, v in headers)]
    protocol.receive_data(("\r\n".join(lines) + "\r\n\r\n").encode())
    request = protocol.next_event()
    assert type(request) is Request
    assert type(protocol.next_event()) is EndBody
    protocol.closing = closing
    head = protocol.response_data(200, response_headers, b"ok", True, ())[0]
    assert protocol.keep_alive is keep_alive
    assert (protocol.next_request() is not None) is keep_alive
    assert (b"connection: close\r\n" in head) is not keep_alive


def test_an_error_answer_to_head_has_no_body(protocol):
    protocol.receive_data(b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert type(protocol.next_event()) is Request
    answer = protocol.error_response(500, DEFAULTS)
    assert answer.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert answer.endswith(b"\r\n\r\n")
    assert b"connection: close\r\n" in answer
    assert b"server: triasgi\r\n" in answer


def test_an_error_answer_to_a_bad_head_has_a_body(protocol):
    protocol.receive_data(b"BAD\r\n\r\n")
    assert type(protocol.next_event()) is ProtocolError
    answer = protocol.error_response(400, ())
    assert answer.endswith(b"\r\n\r\nBad Request\n")


def test_a_client_that_expects_100_continue_is_seen(protocol):
    protocol.receive_data(
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nexpect: 100-continue\r\n\r\n"
    )
    assert type(protocol.next_event()) is Request
    assert protocol.expects_100_continue
    client = h11.Connection(h11.CLIENT)
    client.send(
        h11.Request(
            method="POST",
            target="/",
            headers=[
                ("host", "x"),
                ("content-length", "3"),
                ("expect", "100-continue"),
            ],
        )
    )
    client.receive_data(CONTINUE_100)
    assert type(client.next_event()) is h11.InformationalResponse


def test_eof_in_the_middle_of_a_body_is_an_error(protocol):
    protocol.receive_data(
        b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\nabc"
    )
    assert type(protocol.next_event()) is Request
    assert type(protocol.next_event()) is Body
    protocol.receive_data(b"")
    event = protocol.next_event()
    assert type(event) is ProtocolError
    assert event.status == 400


def test_a_trailer_section_ends_a_response_when_te_trailers_was_sent(protocol):
    protocol.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\nte: trailers\r\n\r\n")
    assert protocol.next_event().te_trailers
    data = protocol.response_data(200, [], b"abc", True, (), trailers=True)
    data.append(protocol.trailers_data([(b"x-sum", b"1")]))
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
    client.send(h11.EndOfMessage())
    client.receive_data(b"".join(data))
    assert type(client.next_event()) is h11.Response
    assert client.next_event().data == b"abc"
    end = client.next_event()
    assert list(end.headers) == [(b"x-sum", b"1")]


def test_trailers_are_dropped_without_te_trailers(protocol):
    protocol.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    assert not protocol.next_event().te_trailers
    data = protocol.response_data(200, [], b"abc", True, (), trailers=True)
    assert b"content-length: 3\r\n" in data[0]
    assert protocol.trailers_data([(b"x-sum", b"1")]) == b""


@pytest.mark.parametrize(("version", "sent"), [("1.1", True), ("1.0", False)])
def test_interim_responses_go_only_to_http11_clients(protocol, version, sent):
    protocol.receive_data(f"GET / HTTP/{version}\r\nhost: x\r\n\r\n".encode())
    assert type(protocol.next_event()) is Request
    data = protocol.informational(103, [(b"link", b"</a>")])
    assert (data == b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n") is sent
    assert (data == b"") is not sent


def test_a_file_response_frames_the_file_by_its_size(protocol):
    protocol.receive_data(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
    protocol.next_event()
    before, after, send = protocol.file_response(200, [], 1234, ())
    assert send
    assert b"content-length: 1234\r\n" in before
    assert after == b""
    assert protocol.response_body_bytes == 1234
