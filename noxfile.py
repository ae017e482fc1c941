"""Developer sessions: ``nox -s tests``, ``nox -s lint``, ``nox -s typecheck``."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (what CI runs)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff lint and format check."""
    session.install("ruff")
    session.run(
        "ruff", "check", "triasgi", "tests", "examples", "benchmarks", "noxfile.py"
    )
    session.run("ruff", "format", "--check", "triasgi")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[lint]")
    session.run("mypy", "--strict", "triasgi")


@nox.session(default=False)
def bench(session: nox.Session) -> None:
    """The benchmark harness against uvicorn and hypercorn (needs wrk installed).

    Pass the harness's options after ``--``, e.g. ``nox -s bench -- --quick``.
    """
    session.install("-e", ".[bench]")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(default=False)
def integration(session: nox.Session) -> None:
    """Only the tests behind a real nginx (``tests`` runs them too, given nginx)."""
    session.install("-e", ".[test]")
    session.run(
        "python", "-m", "pytest", "tests/test_nginx.py", "-rs", *session.posargs
    )


@nox.session(default=False)
def fuzz(session: nox.Session) -> None:
    """A long run of the request fuzzer: ``nox -s fuzz -- 20000`` examples per test."""
    session.install("-e", ".[test]")
    examples = session.posargs[0] if session.posargs else "5000"
    session.run(
        "python", "-m", "pytest", "tests/test_fuzz.py", "-p", "no:cacheprovider",
        env={"TRIASGI_FUZZ_EXAMPLES": examples},
    )
