"""A test module that changes the machine's broker for everyone (stops its app, raises an
alarm) is marked ``exclusive``: `make test` runs those alone, never beside its workers."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# What tests/faults/harness.py offers that acts on the whole machine broker.
BROKER_WIDE = {"rabbitmqctl", "restores_broker", "start_app_again", "uninterrupted"}
BROKER_WIDE |= {"memory_alarm", "refuse_a_restart_it_may_not_survive"}


def _broker_wide_imports(tree: ast.Module) -> set[str]:
    return {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "tests.faults.harness"
        for alias in node.names
        if alias.name in BROKER_WIDE
    }


def _module_marks(tree: ast.Module) -> set[str]:
    """The names of the ``pytest.mark.*`` in the module's ``pytestmark``."""
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            return {
                part.attr
                for part in ast.walk(node.value)
                if isinstance(part, ast.Attribute)
                and isinstance(part.value, ast.Attribute)
                and part.value.attr == "mark"
            }
    return set()


def test_every_module_that_changes_the_broker_for_everyone_is_exclusive() -> None:
    changing: dict[str, set[str]] = {}
    for path in sorted(TESTS.rglob("test_*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        used = _broker_wide_imports(tree)
        if used:
            changing[str(path.relative_to(TESTS))] = used
            assert "exclusive" in _module_marks(tree), (
                f"{path.relative_to(TESTS)} uses {sorted(used)}: mark it pytest.mark.exclusive"
            )
    # The scan finds the two known ones, so it cannot pass by finding nothing.
    assert {"faults/test_broker_restart.py", "faults/test_memory_alarm.py"} <= set(changing)
