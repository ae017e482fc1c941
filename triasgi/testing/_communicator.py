"""Drive one ASGI app call message by message, with no server and no socket."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, final

import trio

from .._asgi._messages import (
    ResponseState,
    WebSocketState,
    next_response_state,
    next_websocket_state,
)
from .._asgi._scope import ASGI_VERSION
from .._errors import ASGIProtocolError
from .._types import ASGIApp, Message, Scope
from ._server import open_nursery_unwrapped

# The message-order rules of each scope type, as (first state, step), taken
# from the ones the server enforces.  Scope types not listed are not checked.
_RULES: dict[str, tuple[Any, Callable[[Any, Message], Any]]] = {
    "http": (ResponseState.START, next_response_state),
    "websocket": (WebSocketState.HANDSHAKE, next_websocket_state),
}
_COMPLETE: dict[str, Any] = {"http": ResponseState.DONE}


def _full_scope(scope: Scope) -> Scope:
    """``scope`` with the keys it leaves out set as for a plain request."""
    kind = scope.get("type")
    if kind in ("http", "websocket"):
        defaults: dict[str, Any] = {
            "asgi": dict(ASGI_VERSION),
            "http_version": "1.1",
            "scheme": "http" if kind == "http" else "ws",
            "path": "/",
            "query_string": b"",
            "root_path": "",
            "headers": [],
            "client": ("127.0.0.1", 50000),
            "server": ("testserver", 80),
            "state": {},
            "extensions": {},
        }
        if kind == "http":
            defaults["method"] = "GET"
        else:
            defaults["subprotocols"] = []
            defaults["extensions"] = {"websocket.http.response": {}}
    elif kind == "lifespan":
        defaults = {"asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}
    else:
        raise ValueError(
            f"The scope needs a 'type' of http, websocket or lifespan, got {kind!r}."
        )
    full = {**defaults, **scope}
    if "raw_path" not in scope and kind != "lifespan":
        full["raw_path"] = full["path"].encode("utf-8")
    return full


@final
class _Violation:
    """Marks, in the stream of sent messages, where the app broke the rules."""

    def __init__(self, error: ASGIProtocolError) -> None:
        self.error = error


# The timeout parameters below are the point of this API (a test whose app
# hangs fails after a second, with a message saying where), so they stay
# parameters rather than scopes the caller must remember to open.


@final
class Communicator:
    """The test's side of one ASGI app call.

    The test plays the server: :meth:`send` gives the app a message to
    ``receive()``, :meth:`receive` takes the next message the app
    ``send()``-s.  Every message the app sends is checked against the ASGI
    message order the server enforces (for ``http`` and ``websocket``
    scopes); a message out
    of order raises :class:`~triasgi.ASGIProtocolError` inside the app, as
    the server would, and in the test at the :meth:`receive` that reaches
    it.  Get one from :func:`open_communicator`.

    Attributes:
        scope: the scope the app was called with, with defaults filled in.
    """

    def __init__(self, app: ASGIApp, scope: Scope, *, timeout: float) -> None:
        self.scope = _full_scope(scope)
        self._app = app
        self._timeout = timeout
        self._to_app_send, self._to_app = trio.open_memory_channel[Message](math.inf)
        self._from_app_send, self._from_app = trio.open_memory_channel[
            "Message | _Violation"
        ](math.inf)
        rules = _RULES.get(self.scope["type"])
        self._state = rules[0] if rules else None
        self._step = rules[1] if rules else None
        self._finished = trio.Event()
        self._waiting_in_receive = False
        self._error: BaseException | None = None
        self._error_seen = False

    # -- the test's side -------------------------------------------------------

    async def send(self, message: Message) -> None:
        """Give the app a message; its next ``receive()`` returns it.

        Messages queue up: the app may take them later.
        """
        self._to_app_send.send_nowait(message)
        await trio.lowlevel.checkpoint()

    async def receive(self, timeout: float | None = None) -> Message:  # noqa: ASYNC109
        """Wait for the next message the app sends.

        Args:
            timeout: seconds to wait, on trio's clock; the communicator's
                default when None.

        Returns:
            The message, as the app sent it.

        Raises:
            ASGIProtocolError: the app sent this message out of order or
                malformed.
            trio.TooSlowError: the app sent nothing in time.
            AssertionError: the app returned without sending another message.
            Exception: whatever the app raised, as it raised it.
        """
        seconds = self._timeout if timeout is None else timeout
        with trio.move_on_after(seconds):
            try:
                item = await self._from_app.receive()
            except trio.EndOfChannel:
                self._raise_app_error()
                raise AssertionError(
                    f"The app returned without sending another message"
                    f"{self._incomplete_note()}."
                ) from None
            if isinstance(item, _Violation):
                self._error_seen = True
                raise ASGIProtocolError(
                    f"The app broke the ASGI message order: {item.error}"
                ) from None
            return item
        raise trio.TooSlowError(
            f"The app sent nothing within {seconds:g} seconds"
            f"{'; it is waiting in receive()' if self._waiting_in_receive else ''}."
        )

    async def receive_nothing(self, timeout: float = 0.1) -> None:  # noqa: ASYNC109
        """Check that the app sends nothing for ``timeout`` seconds.

        Raises:
            AssertionError: the app sent a message.
        """
        with trio.move_on_after(timeout):
            try:
                item = await self._from_app.receive()
            except trio.EndOfChannel:
                await trio.sleep_forever()  # the app returned: it sent nothing.
            shown = item.error if isinstance(item, _Violation) else item
            raise AssertionError(f"Expected no message from the app, got {shown!r}.")

    async def wait(self, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """Wait for the app call to return.

        Args:
            timeout: seconds to wait, on trio's clock; the communicator's
                default when None.

        Raises:
            trio.TooSlowError: the app is still running after ``timeout``.
            Exception: whatever the app raised, as it raised it.
        """
        seconds = self._timeout if timeout is None else timeout
        with trio.move_on_after(seconds):
            await self._finished.wait()
            self._raise_app_error()
            return
        raise trio.TooSlowError(
            f"The app did not return within {seconds:g} seconds"
            f"{'; it is waiting in receive()' if self._waiting_in_receive else ''}."
        )

    @property
    def finished(self) -> bool:
        """True once the app call has returned or raised."""
        return self._finished.is_set()

    # -- the app's side --------------------------------------------------------

    async def _app_receive(self) -> Message:
        self._waiting_in_receive = True
        try:
            return await self._to_app.receive()
        finally:
            self._waiting_in_receive = False

    async def _app_send(self, message: Message) -> None:
        if self._step is not None:
            try:
                self._state = self._step(self._state, message)
            except ASGIProtocolError as exc:
                self._from_app_send.send_nowait(_Violation(exc))
                await trio.lowlevel.checkpoint()
                raise
        self._from_app_send.send_nowait(message)
        await trio.lowlevel.checkpoint()

    async def run(self) -> None:
        """Call the app; what it raises is kept for the test."""
        try:
            await self._app(self.scope, self._app_receive, self._app_send)
        except Exception as exc:
            self._error = exc
        finally:
            self._finished.set()
            self._from_app_send.close()

    # -- outcome -----------------------------------------------------------------

    def _raise_app_error(self) -> None:
        error = self._error
        if error is None:
            return
        if isinstance(error, ASGIProtocolError) and self._error_seen:
            return  # the test has already been told, by receive().
        self._error_seen = True
        raise error

    def unreported_error(self) -> BaseException | None:
        """What the app raised, if the test has not been told yet."""
        if self._error is None or self._error_seen:
            return None
        return self._error

    def _incomplete_note(self) -> str:
        kind = self.scope["type"]
        state = self._state
        if kind in _COMPLETE and state is not None and state is not _COMPLETE[kind]:
            return f" and without completing the response (it was {state.value})"
        return ""


@asynccontextmanager
async def open_communicator(
    app: ASGIApp,
    scope: Scope,
    *,
    timeout: float = 1.0,  # noqa: ASYNC109
) -> AsyncIterator[Communicator]:
    """Call ``app`` with ``scope`` and talk to it message by message.

    The app runs in a task of the block's own nursery.  Keys the scope leaves
    out get the values triasgi would give a plain request, so
    ``{"type": "http", "path": "/x"}`` is enough.  Leaving the block cancels
    the app if it is still running; an exception the app raised that the
    test never received is raised there, so it cannot go unnoticed.

    Example::

        async with open_communicator(app, {"type": "http", "path": "/"}) as app_call:
            await app_call.send({"type": "http.request", "body": b""})
            start = await app_call.receive()
            assert start["status"] == 200

    Args:
        app: the ASGI application.
        scope: the connection scope; ``type`` is required.
        timeout: default seconds :meth:`Communicator.receive` and
            :meth:`Communicator.wait` wait, on trio's clock.

    Yields:
        The :class:`Communicator`.
    """
    communicator = Communicator(app, scope, timeout=timeout)
    async with open_nursery_unwrapped() as nursery:
        nursery.start_soon(communicator.run)
        try:
            yield communicator
        finally:
            nursery.cancel_scope.cancel()
    # Reached only when the body succeeded: a failing test keeps its own error.
    error = communicator.unreported_error()
    if error is not None:
        raise error
