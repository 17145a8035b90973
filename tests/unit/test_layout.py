"""The folders show the architecture: every package is in the README's map, command-line
parsing stays in the CLI modules, only broker/ imports pika, only the store's engines
touch a database driver, and no two modules import each other, even indirectly."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOP = ("schemas", "broker", "dispatcher", "agent", "simulator")


def _modules() -> dict[str, Path]:
    found = {}
    for top in TOP:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The project modules ``path`` imports at run time (``TYPE_CHECKING`` blocks aside)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for stmt in block.body
        for node in ast.walk(stmt)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in names if name in MODULES}


def test_every_package_is_on_the_readme_map() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `([a-z_/]+)/`", section, flags=re.M))
    packages = {
        str(init.parent.relative_to(ROOT))
        for top in TOP
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert packages - listed == set()


def test_only_command_line_modules_parse_arguments() -> None:
    parsing = {name for name, path in MODULES.items() if "argparse" in _imports_any(path)}

    def is_cli(name: str) -> bool:
        return ".cli." in f"{name}." or name.endswith(("_cli", ".cli"))

    assert {name for name in parsing if not is_cli(name)} == set()


def _imports_any(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_only_the_store_touches_a_database_driver() -> None:
    drivers = {"sqlite3", "psycopg"}
    touching = {
        name
        for name, path in MODULES.items()
        if {module.split(".")[0] for module in _imports_any(path)} & drivers
    }
    assert touching == {"dispatcher.store.sqlite", "dispatcher.store.postgres"}


def test_only_the_broker_layer_imports_pika() -> None:
    touching = {
        name
        for name, path in MODULES.items()
        if "pika" in {module.split(".")[0] for module in _imports_any(path)}
    }
    assert touching and {name for name in touching if not name.startswith("broker.")} == set()


def test_no_import_cycles() -> None:
    graph = {name: _imports(path) - {name} for name, path in MODULES.items()}
    cycles = [component for component in _components(graph) if len(component) > 1]
    assert cycles == []


def _components(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan): a component of two or more is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_class_name_means_two_things() -> None:
    defined: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ClassDef):
                defined.setdefault(node.name, []).append(name)
    assert {cls: where for cls, where in defined.items() if len(where) > 1} == {}


# What only broker.broker.Broker may build: every connection of a process is one it owns.
TRANSPORTS = {
    "broker.link": {"Link"},
    "broker.session": {"Session"},
    "broker.consumer": {"Consumer"},
    "broker.publisher": {"ConfirmingPublisher"},
    "broker.requester": {"RequestChannel"},
    "broker.queue_probe": {"QueueProbe"},
    "broker.multiplex": {"Loop", "Lane"},
    "broker.topology": {"declare_all"},
    "broker.provisioning": {"provision_clients"},
    "broker.peek": {"peek", "consumers"},
    "broker.migration": {"move_to_quorum"},
}


def _transport_names(tree: ast.AST) -> tuple[dict[str, str], dict[str, str]]:
    """Local names of the transports and of the broker modules that hold them."""
    names: dict[str, str] = {}
    modules: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in TRANSPORTS:
            for alias in node.names:
                if alias.name in TRANSPORTS[node.module]:
                    names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.ImportFrom) and node.module == "broker":
            for alias in node.names:
                if f"broker.{alias.name}" in TRANSPORTS:
                    modules[alias.asname or alias.name] = f"broker.{alias.name}"
    return names, modules


def _transports_built(path: Path) -> set[str]:
    """The transports ``path`` calls directly, whatever it calls them."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names, modules = _transport_names(tree)
    built: set[str] = set()
    for node in ast.walk(tree):
        func = node.func if isinstance(node, ast.Call) else None
        if isinstance(func, ast.Name) and func.id in names:
            built.add(names[func.id])
        elif isinstance(func, ast.Attribute):
            owner = ast.unparse(func.value)
            module = modules.get(owner, owner)  # broker.topology.declare_all(...) too
            if func.attr in TRANSPORTS.get(module, ()):
                built.add(f"{module}.{func.attr}")
    return built


def test_only_the_broker_layer_builds_connections() -> None:
    building = {
        str(path.relative_to(ROOT)): built
        for name, path in MODULES.items()
        if not name.startswith("broker") and (built := _transports_built(path))
    }
    assert building == {}
