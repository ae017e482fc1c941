"""The response writer: framing rules, checked without sockets."""

from __future__ import annotations

import h11
import pytest

from triasgi._protocol._h1writer import ResponseError, ResponseWriter


def parse(request: bytes, response: bytes) -> tuple[h11.Response, bytes, bool]:
    """Read a response back with h11 acting as the client."""
    client = h11.Connection(h11.CLIENT)
    client.send(
        h11.Request(
            method=request.split()[0],
            target="/",
            headers=[("host", "a")],
            http_version=request.split()[1],
        )
    )
    client.send(h11.EndOfMessage())
    client.receive_data(response)
    event = client.next_event()
    assert isinstance(event, h11.Response)
    body = b""
    while True:
        part = client.next_event()
        if isinstance(part, h11.Data):
            body += part.data
        elif isinstance(part, h11.EndOfMessage):
            break
        elif part is h11.NEED_DATA:
            client.receive_data(b"")  # close-delimited: the end is the close
        else:
            raise AssertionError(part)
    return event, body, client.our_state is h11.DONE and client.their_state is h11.DONE


def write(
    version=b"1.1",
    method=b"GET",
    status=200,
    headers=(),
    chunks=(b"ab", b"cd"),
    keep_alive=True,
):
    writer = ResponseWriter(
        http_version=version, head_only=method == b"HEAD", keep_alive=keep_alive
    )
    out = writer.head(status, b"OK", list(headers))
    for chunk in chunks:
        out += writer.body(chunk)
    out += writer.end()
    return writer, out


def test_unknown_length_is_chunked_for_http_1_1():
    writer, out = write()
    response, body, reusable = parse(b"GET 1.1", out)
    assert (b"transfer-encoding", b"chunked") in response.headers
    assert body == b"abcd"
    assert writer.keep_alive
    assert reusable


def test_unknown_length_is_close_delimited_for_http_1_0():
    writer, out = write(version=b"1.0")
    head, _, body = out.partition(b"\r\n\r\n")
    assert body == b"abcd"
    assert b"\r\nconnection: close" in head
    assert b"transfer-encoding" not in head
    assert not writer.keep_alive


def test_content_length_framing_and_app_transfer_encoding_dropped():
    _writer, out = write(
        headers=[(b"Content-Length", b"4"), (b"transfer-encoding", b"gzip")]
    )
    _response, body, _ = parse(b"GET 1.1", out)
    assert body == b"abcd"
    assert out.count(b"content-length") == 1
    assert b"transfer-encoding" not in out


def test_final_body_gets_a_content_length():
    writer = ResponseWriter(http_version=b"1.1", head_only=False, keep_alive=True)
    out = (
        writer.head(200, b"OK", [], final_body=b"hello")
        + writer.body(b"hello")
        + writer.end()
    )
    assert b"content-length: 5\r\n" in out
    assert out.endswith(b"\r\n\r\nhello")


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses_send_no_body(status):
    _, out = write(status=status, headers=[(b"content-length", b"4")])
    head, _, body = out.partition(b"\r\n\r\n")
    assert body == b""
    assert (b"content-length: 4" in head) == (status == 304)


def test_head_keeps_the_length_and_sends_no_body():
    _, out = write(method=b"HEAD", headers=[(b"content-length", b"4")])
    assert out.endswith(b"content-length: 4\r\n\r\n")


def test_connection_close_from_the_app_ends_keep_alive():
    writer, out = write(headers=[(b"connection", b"close")])
    assert out.count(b"connection: close") == 1
    assert not writer.keep_alive


@pytest.mark.parametrize(
    ("value", "closes"),
    [
        (b"Upgrade, CLOSE", True),
        (b"close ,x", True),
        (b"keep-alive, closed-captions", False),
        (b"x-close", False),
    ],
)
def test_only_a_close_token_from_the_app_ends_keep_alive(value, closes):
    writer, out = write(headers=[(b"connection", value)])
    assert writer.keep_alive is not closes
    if closes:
        assert out.count(b"connection: close") == 1
        assert value not in out
    else:
        assert b"connection: %s\r\n" % value in out
        assert b"connection: close" not in out


def test_connection_close_when_the_request_asked_for_it():
    _writer, out = write(keep_alive=False)
    assert b"connection: close\r\n" in out


@pytest.mark.parametrize(
    "header",
    [
        (b"x-bad", b"one\r\nset-cookie: injected=1"),
        (b"x-bad", b"nul\x00"),
        (b"bad name", b"1"),
        (b"x-bad:", b"1"),
        (b"content-length", b"12a"),
    ],
)
def test_header_injection_and_bad_values_are_refused(header):
    writer = ResponseWriter(http_version=b"1.1", head_only=False, keep_alive=True)
    with pytest.raises(ResponseError):
        writer.head(200, b"OK", [header])


def test_conflicting_content_lengths_are_refused():
    writer = ResponseWriter(http_version=b"1.1", head_only=False, keep_alive=True)
    with pytest.raises(ResponseError):
        writer.head(200, b"OK", [(b"content-length", b"4"), (b"content-length", b"5")])


def test_too_much_and_too_little_body_are_errors():
    writer = ResponseWriter(http_version=b"1.1", head_only=False, keep_alive=True)
    writer.head(200, b"OK", [(b"content-length", b"3")])
    with pytest.raises(ResponseError, match="longer"):
        writer.body(b"1234")
    writer = ResponseWriter(http_version=b"1.1", head_only=False, keep_alive=True)
    writer.head(200, b"OK", [(b"content-length", b"3")])
    writer.body(b"12")
    with pytest.raises(ResponseError, match="shorter"):
        writer.end()
    assert not writer.keep_alive


def test_server_defaults_go_out_unless_the_app_set_the_header():
    defaults = [(b"server", b"server: triasgi\r\n"), (b"x-team", b"x-team: infra\r\n")]
    headers = [(b"X-Team", b"app"), (b"content-type", b"text/plain")]
    outputs = []
    for _ in range(2):  # the second time from the checked-lines cache
        writer = ResponseWriter(http_version=b"1.1", head_only=False, keep_alive=True)
        outputs.append(writer.head(200, b"OK", headers, defaults=defaults))
    assert outputs[0] == outputs[1]
    response, _, _ = parse(b"GET 1.1", outputs[0] + b"0\r\n\r\n")
    assert list(response.headers) == [
        (b"x-team", b"app"),
        (b"content-type", b"text/plain"),
        (b"server", b"triasgi"),
        (b"transfer-encoding", b"chunked"),
    ]


def test_a_bad_header_is_refused_every_time():
    for _ in range(2):
        writer = ResponseWriter(http_version=b"1.1", head_only=False, keep_alive=True)
        with pytest.raises(ResponseError):
            writer.head(200, b"OK", [(b"x-a", b"one\r\ninjected: yes")])
