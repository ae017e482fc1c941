"""The public API: what is exported, and the one vocabulary of settings."""

from __future__ import annotations

import dataclasses
import gc

import pytest
import trio

import triasgi
import triasgi.logging
import triasgi.testing
from triasgi import Config
from triasgi._cli import build_command


@pytest.mark.parametrize("module", [triasgi, triasgi.logging, triasgi.testing])
def test_public_names_are_documented_and_live_in_the_public_module(module):
    public = [name for name in dir(module) if not name.startswith("_")]
    assert public
    for name in public:
        obj = getattr(module, name)
        if isinstance(obj, type(triasgi)) or isinstance(obj, str):
            continue
        assert obj.__module__ == module.__name__, name
        assert obj.__doc__, f"{name} has no docstring"


def test_every_setting_has_one_cli_option_named_after_it():
    command = build_command()
    options = {param.name: param for param in command.params}
    for field in dataclasses.fields(Config):
        assert field.name in options, field.name
        param = options[field.name]
        env = f"TRIASGI_{field.name.upper()}"
        assert env in (param.envvar or []), field.name
        flag = "--" + field.name.replace("_", "-")
        assert any(opt.startswith(flag.rstrip("s")) for opt in param.opts), param.opts


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"port": -1}, "port must be at least 0"),
        ({"timeout_keep_alive": -0.5}, "timeout_keep_alive must be at least 0"),
        ({"lifespan": "sometimes"}, "lifespan must be one of auto, on, off"),
        ({"limit_concurrency": 0}, "limit_concurrency must be at least 1"),
        ({"headers": ["nocolon"]}, "headers entries must look like 'name:value'"),
    ],
)
def test_bad_settings_raise_one_sentence(settings, message):
    with pytest.raises(ValueError, match=message):
        Config(**settings)


def test_default_headers_are_parsed_once():
    config = Config(headers=["X-A: 1", "x-b:two words"])
    assert config.default_headers == [(b"x-a", b"1"), (b"x-b", b"two words")]


async def test_serve_leaves_the_embedding_programs_collector_alone(hello):
    # The CLI freezes startup objects out of garbage collection; serve() is
    # a guest in someone else's process and does not.
    before = gc.get_freeze_count()
    async with trio.open_nursery() as nursery:
        server = await nursery.start(
            triasgi.serve, hello, Config(port=0, lifespan="off")
        )
        assert server.addresses
        nursery.cancel_scope.cancel()
    assert gc.get_freeze_count() == before == 0
