"""The reference documentation names every option the command has."""

from __future__ import annotations

from pathlib import Path

from triasgi._cli import build_command

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_every_cli_option_is_in_the_cli_reference():
    text = (DOCS / "cli.md").read_text()
    for param in build_command().params:
        for option in [*param.opts, *getattr(param, "secondary_opts", [])]:
            if option.startswith("--"):
                assert f"`{option}" in text or f"/{option}`" in text, (
                    f"option {option} is not documented in docs/cli.md"
                )


def test_every_module_the_architecture_page_names_exists():
    import re

    text = (DOCS / "architecture.md").read_text()
    package = DOCS.parent / "triasgi"
    named = set(re.findall(r"`(_[a-z0-9_]+/_[a-z0-9_]+\.py)`", text))
    assert len(named) > 10
    for path in named:
        assert (package / path).is_file(), f"docs/architecture.md names {path}"


def test_ci_runs_exactly_the_test_command_of_the_readme():
    readme = (DOCS.parent / "README.md").read_text()
    ci = (DOCS.parent / ".ci" / "run").read_text()
    command = next(
        line for line in readme.splitlines()
        if line.startswith("python3 -m venv") and "pytest" in line
    )
    assert ci.rstrip().splitlines()[-1] == command
