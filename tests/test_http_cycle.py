"""HTTPCycle on its own: the ASGI side of one request, driven by plain messages.

No socket and no trio: each test plays the app's messages and the
protocol's events against the cycle and checks what it says.
"""

from __future__ import annotations

import pytest

from triasgi import ASGIProtocolError, ClientDisconnected
from triasgi._asgi._http import HTTPCycle, Outcome
from triasgi._asgi._messages import ResponseState
from triasgi._events import H1_END_BODY, H1_STREAM, Body, Request

START = {"type": "http.response.start", "status": 200, "headers": [(b"a", b"b")]}
MORE = {"type": "http.response.body", "body": b"part", "more_body": True}
LAST = {"type": "http.response.body", "body": b"end"}


def new_cycle() -> HTTPCycle:
    request = Request(
        H1_STREAM,
        b"GET",
        b"/",
        b"1.1",
        [(b"host", b"x")],
        keep_alive=True,
        forwarded=False,
        upgrade=False,
    )
    return HTTPCycle(request, {"type": "http"})


def play(cycle: HTTPCycle, *messages: dict) -> list[bytes | None]:
    """Send messages as the app would, with the protocol's part done."""
    written = []
    for message in messages:
        body = cycle.app_sent(message)
        written.append(body)
        if body is not None:  # the protocol framed it; the serving layer says so
            more = message.get("more_body", False)
            cycle.state = ResponseState.BODY if more else ResponseState.DONE
    return written


def to_state(state: ResponseState) -> HTTPCycle:
    cycle = new_cycle()
    steps = {
        ResponseState.START: [],
        ResponseState.HEAD: [START],
        ResponseState.BODY: [START, MORE],
        ResponseState.DONE: [START, LAST],
    }[state]
    play(cycle, *steps)
    assert cycle.state is state
    return cycle


def test_a_streamed_response_moves_through_every_state():
    cycle = new_cycle()
    assert play(cycle, START) == [None]
    assert cycle.state is ResponseState.HEAD
    assert cycle.status == 200
    assert not cycle.head_written
    assert play(cycle, MORE) == [b"part"]
    assert cycle.state is ResponseState.BODY
    assert cycle.head_written
    assert play(cycle, LAST) == [b"end"]
    assert cycle.state is ResponseState.DONE
    assert cycle.outcome() is Outcome.KEEP_ALIVE


def test_messages_after_the_response_are_ignored():
    cycle = to_state(ResponseState.DONE)
    assert play(cycle, LAST, START, {"type": "anything"}) == [None, None, None]
    assert cycle.state is ResponseState.DONE


@pytest.mark.parametrize(
    ("state", "message", "error"),
    [
        (ResponseState.START, LAST, "Expected http.response.start"),
        (ResponseState.HEAD, START, "Expected http.response.body"),
        (ResponseState.BODY, START, "Expected http.response.body"),
        (ResponseState.START, {"status": 200}, "without a 'type' key"),
        (ResponseState.START, {**START, "status": 101}, "from 200 to 599"),
        (ResponseState.START, {**START, "status": 103}, "from 200 to 599"),
        (ResponseState.START, {**START, "status": "200"}, "from 200 to 599"),
        (ResponseState.START, {**START, "headers": [("a", "b")]}, "byte strings"),
        (ResponseState.HEAD, {**LAST, "body": "text"}, "must be bytes"),
    ],
)
def test_messages_out_of_order_or_malformed_are_asgi_errors(state, message, error):
    cycle = to_state(state)
    with pytest.raises(ASGIProtocolError, match=error):
        cycle.app_sent(message)
    assert cycle.state is state


@pytest.mark.parametrize(
    "state", [ResponseState.START, ResponseState.HEAD, ResponseState.BODY]
)
def test_after_a_disconnect_send_raises_and_the_connection_closes(state):
    cycle = to_state(state)
    cycle.on_disconnect()
    with pytest.raises(ClientDisconnected):
        cycle.app_sent(LAST)
    cycle.app_returned(None)
    assert cycle.outcome() is Outcome.CLOSE


@pytest.mark.parametrize(
    ("state", "outcome"),
    [
        (ResponseState.START, Outcome.ANSWER_500),
        (ResponseState.HEAD, Outcome.ANSWER_500),
        (ResponseState.BODY, Outcome.CLOSE),
        (ResponseState.DONE, Outcome.KEEP_ALIVE),
    ],
)
@pytest.mark.parametrize("failed", [False, True])
def test_the_app_returning_in_each_state(state, outcome, failed, caplog):
    cycle = to_state(state)
    cycle.app_returned(RuntimeError("boom") if failed else None)
    assert cycle.outcome() is outcome
    logged = [r.getMessage() for r in caplog.records]
    if state is ResponseState.DONE:
        assert logged == (
            ["Exception in ASGI application after the response"] if failed else []
        )
    elif failed:
        assert logged == ["Exception in ASGI application"]
    else:
        assert len(logged) == 1
        assert "returned without" in logged[0]


def test_a_response_the_protocol_refused_can_still_become_a_500():
    # An invalid head: the protocol raised, so the state did not move on.
    cycle = to_state(ResponseState.HEAD)
    assert cycle.app_sent(LAST) == b"end"
    cycle.must_close = True
    assert cycle.outcome() is Outcome.ANSWER_500


def test_the_body_ends_with_its_last_piece_when_the_end_is_already_here():
    cycle = new_cycle()
    message = cycle.body_message(Body(H1_STREAM, b"abc"), H1_END_BODY)
    assert message == {"type": "http.request", "body": b"abc", "more_body": False}
    assert cycle.body_complete


def test_a_second_piece_already_here_is_kept_for_the_next_receive():
    cycle = new_cycle()
    second = Body(H1_STREAM, b"def")
    message = cycle.body_message(Body(H1_STREAM, b"abc"), second)
    assert message == {"type": "http.request", "body": b"abc", "more_body": True}
    assert cycle.pending_body is second
    assert not cycle.body_complete


def test_a_request_without_a_body_gives_one_empty_message():
    cycle = new_cycle()
    message = cycle.body_message(H1_END_BODY, None)
    assert message == {"type": "http.request", "body": b"", "more_body": False}
    assert cycle.body_complete


def test_anything_but_body_is_no_message():
    cycle = new_cycle()
    assert cycle.body_message(object(), None) is None
    assert not cycle.body_complete


# -- response extensions ----------------------------------------------------------


def test_announced_trailers_come_after_the_last_body_and_end_the_response():
    from triasgi._events import Trailers

    cycle = new_cycle()
    assert cycle.app_sent({**START, "trailers": True}) is None
    assert cycle.app_sent(LAST) == b"end"
    cycle.after_body(True)
    assert cycle.state is ResponseState.TRAILERS
    first = {"type": "http.response.trailers", "headers": [(b"x-a", b"1")]}
    assert cycle.app_sent({**first, "more_trailers": True}) is None
    last = cycle.app_sent({**first, "headers": [(b"x-b", b"2")]})
    assert type(last) is Trailers
    assert last.headers == [(b"x-a", b"1"), (b"x-b", b"2")]
    cycle.after_command(last)
    assert cycle.outcome() is Outcome.KEEP_ALIVE


@pytest.mark.parametrize("name", [b":status", b"content-length", b"Host"])
def test_trailer_fields_that_cannot_be_trailers_are_refused(name):
    cycle = new_cycle()
    cycle.app_sent({**START, "trailers": True})
    cycle.app_sent(LAST)
    cycle.after_body(True)
    with pytest.raises(ASGIProtocolError, match="cannot carry the field"):
        cycle.app_sent({"type": "http.response.trailers", "headers": [(name, b"1")]})


@pytest.mark.parametrize("state", [ResponseState.START, ResponseState.HEAD])
def test_early_hints_and_informational_responses_leave_the_state(state):
    from triasgi._events import Informational

    cycle = to_state(state)
    hint = cycle.app_sent(
        {"type": "http.response.early_hint", "links": (x for x in [b"</a>"])}
    )
    assert type(hint) is Informational
    assert (hint.status, hint.headers) == (103, [(b"link", b"</a>")])
    info = cycle.app_sent({"type": "http.response.informational", "status": 100})
    assert info.status == 100
    assert cycle.sent_100
    assert cycle.state is state


def test_early_hints_after_the_body_started_are_refused():
    cycle = to_state(ResponseState.BODY)
    with pytest.raises(ASGIProtocolError, match=r"Expected http\.response\.body"):
        cycle.app_sent({"type": "http.response.early_hint", "links": [b"</a>"]})


def test_a_path_send_is_the_whole_body_once():
    from triasgi._events import PathSend

    cycle = to_state(ResponseState.HEAD)
    command = cycle.app_sent({"type": "http.response.pathsend", "path": "/f"})
    assert type(command) is PathSend
    assert command.path == "/f"
    cycle.after_command(command)
    assert cycle.state is ResponseState.DONE
    assert cycle.app_sent({"type": "http.response.pathsend", "path": "/f"}) is None


def test_a_path_send_after_a_body_is_refused():
    cycle = to_state(ResponseState.BODY)
    with pytest.raises(ASGIProtocolError):
        cycle.app_sent({"type": "http.response.pathsend", "path": "/f"})
