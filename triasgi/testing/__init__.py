"""Helpers that run the real triasgi server inside a test's nursery."""

from ._server import open_memory_connection as open_memory_connection
from ._server import open_memory_server as open_memory_server
from ._server import open_server as open_server

for _name, _obj in list(globals().items()):
    if not _name.startswith("_") and getattr(_obj, "__module__", "").startswith(
        "triasgi.testing._"
    ):
        _obj.__module__ = "triasgi.testing"
del _name, _obj
