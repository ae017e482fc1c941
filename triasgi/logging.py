"""Log formatters to name in a log configuration file (``--log-config``).

``triasgi.logging.JSONFormatter`` writes each record as one JSON object, with
the fields of the request on access lines; it is the formatter of
``--log-format json``.
"""

from ._logging import JSONFormatter as JSONFormatter

# Show public names as living here, not in the private module.
JSONFormatter.__module__ = "triasgi.logging"
