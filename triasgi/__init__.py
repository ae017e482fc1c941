"""triasgi: a trio-native ASGI server built on structured concurrency."""

from ._config import Config as Config
from ._errors import ASGIProtocolError as ASGIProtocolError
from ._errors import ClientDisconnected as ClientDisconnected
from ._errors import StartupError as StartupError
from ._importer import AppImportError as AppImportError
from ._run import run as run
from ._serve._server import Server as Server
from ._serve._server import serve as serve
from ._version import __version__ as __version__

# Show public names as living here, not in the private modules.
for _name, _obj in list(globals().items()):
    if not _name.startswith("_") and getattr(_obj, "__module__", "").startswith(
        "triasgi._"
    ):
        _obj.__module__ = "triasgi"
del _name, _obj
