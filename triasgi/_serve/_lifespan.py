"""The ASGI lifespan protocol (lifespan.rst), run in the server's nursery."""

from __future__ import annotations

import logging
from typing import Any, Literal

import trio

from .._errors import ASGIProtocolError
from .._types import ASGIApp, Message

logger = logging.getLogger("triasgi.error")


class LifespanFailure(Exception):
    """Lifespan startup failed; the message is fit to show a user."""


class Lifespan:
    """Runs the app's lifespan scope as a task and talks to it.

    ``startup()`` starts the task in the given nursery and waits for
    ``lifespan.startup.complete``; ``shutdown()`` asks the app to shut down
    and waits for it, within the configured timeouts.
    """

    def __init__(
        self,
        app: ASGIApp,
        mode: Literal["auto", "on", "off"],
        state: dict[str, Any],
        *,
        startup_timeout: float,
        shutdown_timeout: float,
    ) -> None:
        self._app = app
        self._mode = mode
        self._state = state
        self._startup_timeout = startup_timeout
        self._shutdown_timeout = shutdown_timeout
        self._scope = trio.CancelScope()
        self._startup_sent = False
        self._startup_done = trio.Event()
        self._shutdown_requested = trio.Event()
        self._shutdown_done = trio.Event()
        self._started = False
        self._failure: str | None = None
        self._running = False
        self._shutdown_called = False
        self._ended = trio.Event()

    async def startup(self, nursery: trio.Nursery) -> None:
        """Run lifespan startup; return when the app is ready.

        Raises:
            LifespanFailure: the app reported failure, raised with
                ``lifespan="on"``, or did not finish within the timeout.
        """
        if self._mode == "off":
            self._ended.set()
            await trio.lowlevel.checkpoint()
            return
        self._running = True
        nursery.start_soon(self._main)
        with trio.move_on_after(self._startup_timeout):
            await self._startup_done.wait()
        if not self._startup_done.is_set():
            self._scope.cancel()
            raise LifespanFailure(
                f"Lifespan startup did not complete within "
                f"{self._startup_timeout:g} seconds."
            )
        if self._failure is not None:
            self._scope.cancel()
            raise LifespanFailure(self._failure)

    async def shutdown(self) -> None:
        """Send ``lifespan.shutdown`` and wait for the app, within the timeout.

        Calling it again does nothing.
        """
        if self._shutdown_called:
            await trio.lowlevel.checkpoint()
            return
        self._shutdown_called = True
        if not (self._running and self._started):
            self._scope.cancel()
            await trio.lowlevel.checkpoint()
            return
        self._shutdown_requested.set()
        with trio.move_on_after(self._shutdown_timeout):
            await self._shutdown_done.wait()
        if not self._shutdown_done.is_set():
            logger.warning(
                "Lifespan shutdown did not complete within %g seconds; cancelling it.",
                self._shutdown_timeout,
            )
        self._scope.cancel()

    async def _main(self) -> None:
        scope = {
            "type": "lifespan",
            "asgi": {"version": "3.0", "spec_version": "2.0"},
            "state": self._state,
        }
        with self._scope:
            try:
                await self._app(scope, self._receive, self._send)
            except Exception as exc:
                self._app_failed(exc)
            else:
                if not self._startup_done.is_set():
                    self._not_supported(
                        "the app returned without completing lifespan startup"
                    )
            finally:
                self._running = False
                self._startup_done.set()
                self._shutdown_done.set()
                self._ended.set()

    @property
    def has_ended(self) -> bool:
        """The app's lifespan call has returned (or never ran)."""
        return self._ended.is_set()

    async def ended(self) -> None:
        """Wait until the app's lifespan call has returned (or never ran)."""
        await self._ended.wait()

    def _app_failed(self, exc: Exception) -> None:
        if self._startup_done.is_set():
            if self._started:
                logger.error("Exception in the lifespan protocol", exc_info=exc)
            return
        self._not_supported(f"{type(exc).__name__}: {exc}", exc)

    def _not_supported(self, why: str, exc: Exception | None = None) -> None:
        if self._mode == "on":
            self._failure = f"Lifespan startup failed: {why}."
            if exc is not None:
                logger.debug("Lifespan startup exception", exc_info=exc)
        else:
            logger.info(
                "The app does not support the lifespan protocol (%s); "
                "serving without it.",
                why,
            )
            if exc is not None:
                logger.debug("Lifespan exception", exc_info=exc)

    async def _receive(self) -> Message:
        if not self._startup_sent:
            self._startup_sent = True
            await trio.lowlevel.checkpoint()
            return {"type": "lifespan.startup"}
        await self._shutdown_requested.wait()
        return {"type": "lifespan.shutdown"}

    async def _send(self, message: Message) -> None:
        msg_type = message.get("type")
        if msg_type in ("lifespan.startup.complete", "lifespan.startup.failed"):
            if self._startup_done.is_set() or not self._startup_sent:
                raise ASGIProtocolError(f"Unexpected lifespan message {msg_type!r}.")
            if msg_type == "lifespan.startup.complete":
                self._started = True
            else:
                text = message.get("message") or "no message given"
                self._failure = f"Lifespan startup failed: {text}"
            self._startup_done.set()
        elif msg_type in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
            if not self._shutdown_requested.is_set() or self._shutdown_done.is_set():
                raise ASGIProtocolError(f"Unexpected lifespan message {msg_type!r}.")
            if msg_type == "lifespan.shutdown.failed":
                logger.error(
                    "Lifespan shutdown failed: %s",
                    message.get("message") or "no message given",
                )
            self._shutdown_done.set()
        else:
            raise ASGIProtocolError(f"Unexpected lifespan message {msg_type!r}.")
        await trio.lowlevel.checkpoint()
