"""Test ASGI apps against the real triasgi server, inside the test's nursery.

With pytest, the ``triasgi_server`` and ``triasgi_client`` fixtures (a plugin
installed with triasgi, running on pytest-trio) do the setup; the same
helpers are here as async context managers for any other test runner.
``MemoryClient`` and ``open_client`` need httpx; they are imported on first
use so that the pytest plugin loads in projects without it.
"""

import typing as _typing

from ._communicator import Communicator as Communicator
from ._communicator import open_communicator as open_communicator
from ._plugin import ClientFactory as ClientFactory
from ._plugin import ServerFactory as ServerFactory
from ._server import LiveServer as LiveServer
from ._server import open_memory_connection as open_memory_connection
from ._server import open_memory_server as open_memory_server
from ._server import open_server as open_server
from ._wsclient import MemoryWebSocket as MemoryWebSocket
from ._wsclient import WebSocketClosed as WebSocketClosed
from ._wsclient import WebSocketRejected as WebSocketRejected
from ._wsclient import open_websocket as open_websocket

if _typing.TYPE_CHECKING:
    from ._client import MemoryClient as MemoryClient
    from ._client import open_client as open_client

_NEED_HTTPX = ("MemoryClient", "open_client")


def _show_as_public(obj: _typing.Any) -> None:
    if getattr(obj, "__module__", "").startswith("triasgi.testing._"):
        obj.__module__ = "triasgi.testing"


def __getattr__(name: str) -> _typing.Any:
    if name not in _NEED_HTTPX:
        raise AttributeError(f"module 'triasgi.testing' has no attribute {name!r}")
    try:
        from . import _client
    except ImportError as exc:
        raise ImportError(
            f"triasgi.testing.{name} needs httpx: pip install 'triasgi[testing]'."
        ) from exc
    obj = getattr(_client, name)
    _show_as_public(obj)
    globals()[name] = obj
    return obj


def __dir__() -> list[str]:
    return sorted({*globals(), *_NEED_HTTPX})


for _name, _obj in list(globals().items()):
    if not _name.startswith("_"):
        _show_as_public(_obj)
del _name, _obj
