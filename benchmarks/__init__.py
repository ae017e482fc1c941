"""The benchmark harness: triasgi against its peers on the same ASGI apps.

Run it with ``python -m benchmarks`` (or ``nox -s bench``); ``--help`` lists
the options and docs/performance.md has the latest results.
"""
