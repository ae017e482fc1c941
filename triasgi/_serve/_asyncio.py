"""Running asyncio apps on trio (``--loop asyncio``), through trio-asyncio.

With ``loop="asyncio"`` the server wraps the app once, in an
:class:`AsyncioApp`, and :meth:`Server.run` keeps a trio-asyncio loop open
around everything the app does.  Each app call (lifespan, HTTP, WebSocket)
then runs as an asyncio task on that loop, awaited by the trio task that
made the call, so the connection's cancel scope still owns it::

    the app call's trio task (in a connection's nursery, or the lifespan task)
    └── bridge nursery, owned by that task
        ├── waits for the app's asyncio task
        └── one trio task per pending receive() or send() of the app

Cancelling the trio task cancels the asyncio task, which sees
``asyncio.CancelledError``; the call returns only once that task has ended
and every receive() and send() it started has ended too.

Which loop an app gets under ``loop="auto"`` is decided in
:mod:`._loop_choice`.  On trio the app is wrapped too, only to notice the errors an
asyncio-only app raises under trio and to say which option fixes them.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, final

import sniffio
import trio

from .._errors import StartupError
from .._types import ASGIApp, Message, Receive, Scope, Send
from ._loop_choice import LoopChoice

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    # At run time asyncio is imported by the code of --loop asyncio only,
    # so that serving on trio does not pay for importing it.
    import asyncio
    import concurrent.futures

logger = logging.getLogger("triasgi.error")

ASYNCIO_HINT = (
    "The app needs an asyncio event loop, and the server runs it on trio: "
    "serve it with --loop asyncio (loop='asyncio'), which needs "
    "pip install 'triasgi[asyncio]'."
)
TRIO_HINT = (
    "The app awaited trio code while running as asyncio code: serve it "
    "without --loop asyncio."
)


def wrap_app(app: ASGIApp, choice: LoopChoice) -> ASGIApp:
    """The app as the server calls it, on the loop chosen for it.

    Returns:
        An :class:`AsyncioApp` for ``"asyncio"``; for ``"trio"``, the app
        behind a thin wrapper that logs :data:`ASYNCIO_HINT` when the app
        fails the way asyncio-only code fails under trio.
    """
    if choice.loop == "asyncio":
        return AsyncioApp(app, choice)
    return _hint_on_mismatch(app)


@asynccontextmanager
async def open_app_loop(app: ASGIApp) -> AsyncIterator[None]:
    """Keep the event loop ``app`` needs open for the body of the block.

    Only an :class:`AsyncioApp` needs one; for any other app this does
    nothing.

    Raises:
        StartupError: trio-asyncio is not installed.
    """
    if isinstance(app, AsyncioApp):
        async with app.open_loop():
            yield
    else:
        await trio.lowlevel.checkpoint()
        yield


# The trio-asyncio loops open in this process, the latest last.
_open_loops: list[Any] = []


@final
class AsyncioApp:
    """An ASGI app run as asyncio code on a trio-asyncio loop.

    It is called like any app, from trio, but only inside :meth:`open_loop`.

    Attributes:
        app: the wrapped asyncio app.
        choice: why it runs on asyncio.
    """

    def __init__(self, app: ASGIApp, choice: LoopChoice) -> None:
        self.app = app
        self.choice = choice
        self._loop: Any = None

    @asynccontextmanager
    async def open_loop(self) -> AsyncIterator[None]:
        """Open the trio-asyncio loop the app runs on, for the block's body.

        On exit, asyncio tasks the app started and left running are
        cancelled and waited for, as ``asyncio.run()`` does.

        Raises:
            StartupError: trio-asyncio is not installed.
        """
        import asyncio

        try:
            trio_asyncio = importlib.import_module("trio_asyncio")
        except ImportError:
            raise StartupError(self.choice.missing_extra()) from None
        loop: Any = None
        try:
            async with trio_asyncio.open_loop() as loop:
                # trio-asyncio's own handler raises an unhandled asyncio error
                # (a task's exception nobody retrieved) out of the loop, which
                # would stop the whole server for one bad request.
                loop.set_exception_handler(_log_loop_error)
                loop.run_in_executor = functools.partial(
                    _run_in_executor,
                    loop,
                    loop.run_in_executor,
                    trio_asyncio.TrioExecutor,
                )
                # Code that took asyncio.get_running_loop before trio-asyncio
                # replaced it (anyio's asyncio backend does, and so does
                # asyncio's own C code) asks the thread's running loop: make
                # it this one, until the loop's last task has ended.
                _open_loops.append(loop)
                asyncio.events._set_running_loop(loop)
                self._loop = loop
                try:
                    yield
                finally:
                    self._loop = None
        finally:
            if loop in _open_loops:
                _open_loops.remove(loop)
                asyncio.events._set_running_loop(
                    _open_loops[-1] if _open_loops else None
                )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        import asyncio

        loop = self._loop
        if loop is None:
            raise RuntimeError("An asyncio app was called with no asyncio loop open.")
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            bridge = _Bridge(nursery, loop, receive, send)
            try:
                await loop.run_aio_coroutine(
                    _call_app(self.app, scope, bridge.receive, bridge.send)
                )
            except asyncio.CancelledError:
                # Had trio cancelled us this would be trio.Cancelled: the app
                # cancelled its own task.
                failure = RuntimeError("The app's asyncio task was cancelled.")
            except Exception as exc:
                # Raised after the nursery, so it is not wrapped in a group.
                failure = exc
                if needs_trio(exc):
                    logger.error(TRIO_HINT)
            finally:
                bridge.close()
        if failure is not None:
            raise failure


async def _call_app(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    # The call itself happens in the asyncio task: an app object may do
    # asyncio work before it returns its coroutine.
    await app(scope, receive, send)


@final
class _Bridge:
    """The receive() and send() of one app call, for asyncio callers.

    The asyncio side awaits an asyncio future; a trio task in the app call's
    nursery makes the real call and settles the future.  Cancelling the
    future (its asyncio caller was cancelled) cancels that task; a trio
    cancellation of the task cancels the future.

    A message that arrives for a receive() whose caller has been cancelled
    is kept for the next receive(), which returns it without suspending.
    Nothing is lost, and a receive() made in an already-cancelled asyncio
    scope (anyio's way of polling) gets a message that is already there.
    """

    def __init__(
        self, nursery: trio.Nursery, loop: Any, receive: Receive, send: Send
    ) -> None:
        self._nursery = nursery
        self._loop = loop
        self._trio_receive = receive
        self._trio_send = send
        self._pending: set[trio.CancelScope] = set()
        self._closed = False
        self._kept: deque[Message] = deque()
        # Set while a trio receive() runs: the next one waits for it.
        self._receiving: trio.Event | None = None

    async def receive(self) -> Message:
        """The app's ``receive()``, to be awaited from asyncio."""
        if self._kept and self._receiving is None:
            return self._kept.popleft()
        message: Message = await self._call(self._receive_in_order, (), keep=True)
        return message

    async def send(self, message: Message) -> None:
        """The app's ``send()``, to be awaited from asyncio."""
        await self._call(self._trio_send, (message,), keep=False)

    def close(self) -> None:
        """The app call is over: refuse new calls and cancel pending ones."""
        self._closed = True
        for scope in self._pending:
            scope.cancel()

    async def _call(
        self,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        *,
        keep: bool,
    ) -> Any:
        import asyncio

        if self._closed:
            raise RuntimeError(
                "receive() or send() was called after the ASGI app call had returned."
            )
        future: asyncio.Future[Any] = self._loop.create_future()
        cancel_scope = trio.CancelScope()
        self._pending.add(cancel_scope)
        self._nursery.start_soon(self._run, future, cancel_scope, fn, args, keep)
        try:
            return await future
        except asyncio.CancelledError:
            # The caller was cancelled (or the trio call was): so is the call.
            cancel_scope.cancel()
            raise

    async def _run(
        self,
        future: asyncio.Future[Any],
        cancel_scope: trio.CancelScope,
        fn: Callable[..., Awaitable[Any]],
        args: tuple[Any, ...],
        keep: bool,
    ) -> None:
        returned = False
        result: Any = None
        try:
            with cancel_scope:
                result = await fn(*args)
                returned = True
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        except BaseException:
            # trio.Cancelled from an enclosing scope: the asyncio caller is
            # being cancelled too, and the Cancelled goes on to its scope.
            if not future.done():
                future.cancel()
            raise
        finally:
            self._pending.discard(cancel_scope)
        if not returned:
            if not future.done():
                future.cancel()
        elif not future.done():
            future.set_result(result)
        elif keep:
            # No checkpoint since the message was taken: still first in line.
            self._kept.appendleft(result)

    async def _receive_in_order(self) -> Message:
        while self._receiving is not None:
            await self._receiving.wait()
        if self._kept:
            # Handed over with no checkpoint in between, so nothing can take
            # a later message first.
            return self._kept.popleft()
        done = self._receiving = trio.Event()
        try:
            return await self._trio_receive()
        finally:
            self._receiving = None
            done.set()


def _run_in_executor(
    loop: Any,
    trio_run_in_executor: Callable[..., asyncio.Future[Any]],
    trio_executor_type: type[concurrent.futures.Executor],
    executor: concurrent.futures.Executor | None,
    func: Callable[..., Any],
    *args: Any,
) -> asyncio.Future[Any]:
    """``loop.run_in_executor`` that also takes a standard library executor.

    trio-asyncio runs the default executor's work in trio's worker threads,
    but refuses any other executor.  Libraries bring their own, such as the
    one-thread executor asgiref uses for Django's synchronous views; their
    work is submitted to them as asyncio would do it.
    """
    if executor is None or isinstance(executor, trio_executor_type):
        return trio_run_in_executor(executor, func, *args)
    import asyncio

    return asyncio.wrap_future(executor.submit(func, *args), loop=loop)


def _log_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    message = context.get("message") or "Unhandled error in the asyncio loop"
    logger.error("asyncio: %s", message, exc_info=context.get("exception"))


# -- the mismatch hint -------------------------------------------------------


def _hint_on_mismatch(app: ASGIApp) -> ASGIApp:
    async def app_on_trio(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            send = _hint_on_lifespan_failure(send)
        try:
            await app(scope, receive, send)
        except Exception as exc:
            if needs_asyncio(exc):
                logger.error(ASYNCIO_HINT)
            raise

    return app_on_trio


def _hint_on_lifespan_failure(send: Send) -> Send:
    # Frameworks catch their own lifespan errors and report only the text.
    async def send_lifespan(message: Message) -> None:
        if message.get("type") in _LIFESPAN_FAILURES and _asyncio_missing(
            str(message.get("message", ""))
        ):
            logger.error(ASYNCIO_HINT)
        await send(message)

    return send_lifespan


_LIFESPAN_FAILURES = ("lifespan.startup.failed", "lifespan.shutdown.failed")


def _asyncio_missing(text: str) -> bool:
    # asyncio.get_running_loop(), and get_event_loop() where it no longer
    # makes a loop up.
    return "no running event loop" in text or "no current event loop" in text


def needs_asyncio(exc: BaseException) -> bool:
    """Whether ``exc`` is how asyncio-only code fails when it runs on trio."""
    if isinstance(exc, BaseExceptionGroup):
        return any(needs_asyncio(e) for e in exc.exceptions)
    if isinstance(exc, sniffio.AsyncLibraryNotFoundError):
        return True
    text = str(exc)
    # An asyncio future awaited directly under trio is the TypeError.
    return _asyncio_missing(text) or (
        isinstance(exc, TypeError) and "unrecognized yield message" in text
    )


def needs_trio(exc: BaseException) -> bool:
    """Whether ``exc`` is how trio code fails when it runs as asyncio code."""
    if isinstance(exc, BaseExceptionGroup):
        return any(needs_trio(e) for e in exc.exceptions)
    return isinstance(exc, RuntimeError) and str(exc).startswith("Task got bad yield")
