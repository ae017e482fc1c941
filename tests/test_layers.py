"""The package's layers, read from every module's imports (ast; nothing is run).

docs/architecture.md: ``_protocol/`` and ``_asgi/`` are sans-io and never
import each other; only ``_protocol/`` (and ``testing/``) speaks to the
protocol libraries; a lower layer never imports a higher one; no cycles.
Imports under ``if TYPE_CHECKING:`` are for the type checker only and are
left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "triasgi"

# Lower first.  A module may import its own layer and those below it.
LAYERS: list[set[str]] = [
    {"_types", "_errors", "_events", "_version"},
    {"_protocol", "_asgi"},
    {"_config", "_config_file", "_logging", "_importer", "_metrics"},
    {"_serve"},
    {"_process"},
    {"_run"},
    {"_cli"},
    {"__init__", "__main__", "testing", "logging"},
]
SANS_IO = {"_protocol", "_asgi"}
IO_MODULES = {"trio", "anyio", "socket", "ssl", "selectors", "asyncio"}
PROTOCOL_LIBRARIES = {"h11", "h2", "hpack", "wsproto", "httptools"}
# Where the protocol libraries may be imported.
PROTOCOL_HOMES = {"_protocol", "testing"}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, function-level ones too, but not TYPE_CHECKING's."""
    stack = [tree]
    while stack:
        node = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                stack.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            stack.append(child)


def imported_modules(path: Path, root: Path) -> set[str]:
    """The absolute names of what the module at ``path`` imports."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            prefix = ".".join(base)
            target = f"{prefix}.{node.module}" if node.module else prefix
        else:
            target = node.module or ""
        found.add(target)
        # ``from . import _config`` imports a module, not a name.
        for alias in node.names:
            candidate = f"{target}.{alias.name}"
            if _module_path(candidate, root) is not None:
                found.add(candidate)
    return found


def _module_path(name: str, root: Path) -> Path | None:
    parts = name.split(".")
    if parts[0] != root.name:
        return None
    base = root.parent.joinpath(*parts)
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def graph(root: Path) -> dict[str, set[str]]:
    """Module name -> the package's modules it imports (and outside names)."""
    return {
        module_name(path, root): imported_modules(path, root)
        for path in sorted(root.rglob("*.py"))
    }


def layer_of(name: str, root_name: str) -> str:
    """The top-level part of the package a module belongs to (``_serve``, ...)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def rank(layer: str) -> int:
    for index, members in enumerate(LAYERS):
        if layer in members:
            return index
    raise AssertionError(f"{layer} is in no layer: add it to LAYERS")


def violations(root: Path) -> list[str]:
    """Every broken rule, one sentence each."""
    found = []
    modules = graph(root)
    own = root.name
    for name, imports in modules.items():
        layer = layer_of(name, own)
        for target in sorted(imports):
            top = target.split(".")[0]
            if layer in SANS_IO and top in IO_MODULES:
                found.append(f"{name} is sans-io but imports {target}")
            if top in PROTOCOL_LIBRARIES and layer not in PROTOCOL_HOMES:
                found.append(f"{name} imports {target} outside _protocol/")
            if top != own or target == own:
                continue
            other = layer_of(target, own)
            if layer in SANS_IO and other in SANS_IO and other != layer:
                found.append(f"{name} imports {target}: the sans-io layers are peers")
            elif rank(other) > rank(layer):
                found.append(f"{name} imports {target}, a higher layer")
    found.extend(f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(modules))
    return found


def cycles(modules: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group of modules (Tarjan)."""
    edges = {
        name: sorted(t for t in targets if t in modules and t != name)
        for name, targets in modules.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return groups


def test_the_package_keeps_its_layers():
    assert violations(PACKAGE) == []


def test_the_walk_reads_real_imports():
    # The rules above are only as good as the walk: it must see what is there.
    modules = graph(PACKAGE)
    assert "trio" in modules["triasgi._serve._server"]
    assert "triasgi._config" in modules["triasgi._serve._server"]
    assert "h11" in modules["triasgi._protocol._h1parse"]
    assert "triasgi._errors" in modules["triasgi._asgi._messages"]


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"_protocol/_x.py": "import trio\n"},
            "triasgi._protocol._x is sans-io but imports trio",
        ),
        (
            {"_asgi/_x.py": "from socket import socket\n"},
            "triasgi._asgi._x is sans-io but imports socket",
        ),
        (
            {"_serve/_x.py": "import h11\n"},
            "triasgi._serve._x imports h11 outside _protocol/",
        ),
        (
            {"_asgi/_x.py": "from .._protocol import _y\n", "_protocol/_y.py": ""},
            "triasgi._asgi._x imports triasgi._protocol._y: the sans-io layers are peers",
        ),
        (
            {"_protocol/_x.py": "from .._serve._y import z\n", "_serve/_y.py": ""},
            "triasgi._protocol._x imports triasgi._serve._y, a higher layer",
        ),
        (
            {
                "_serve/_a.py": "from ._b import x\n",
                "_serve/_b.py": "def f():\n    from ._a import y\n",
            },
            "import cycle: triasgi._serve._a -> triasgi._serve._b",
        ),
    ],
)
def test_each_rule_catches_what_it_names(tmp_path, files, expected):
    root = tmp_path / "triasgi"
    for folder in ("", "_protocol", "_asgi", "_serve"):
        (root / folder).mkdir(exist_ok=True)
        (root / folder / "__init__.py").write_text("")
    for name, text in files.items():
        (root / name).write_text(text)
    assert expected in violations(root)


def test_type_checking_imports_are_left_out(tmp_path):
    root = tmp_path / "triasgi"
    (root / "_serve").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "_serve" / "__init__.py").write_text("")
    (root / "_serve" / "_a.py").write_text("from ._b import x\n")
    (root / "_serve" / "_b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ._a import y\n"
    )
    assert violations(root) == []
