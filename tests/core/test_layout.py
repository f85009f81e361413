"""The code's shape, checked: the package layering and the thin adapters over the use cases.

A CLI command and a Prefect task are adapters over one use-case function each; when one grows past a
screen it has started to hold domain logic of its own, which the other adapter then lacks (the drift this
layout exists to prevent).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Upstream first: a package may import only the packages before it.
LAYERS = ("pipelines", "features", "training", "serving_stub", "orchestration")
MAX_COMMAND_LINES = 40  # signature, docstring and body of one CLI command function
MAX_TASK_LINES = 15


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", LAYERS)
def test_no_package_imports_a_package_downstream_of_it(package: str) -> None:
    downstream = set(LAYERS[LAYERS.index(package) + 1:])
    offenders = {str(p.relative_to(ROOT)): sorted(_imported_packages(p) & downstream)
                 for p in _modules(package) if _imported_packages(p) & downstream}
    assert offenders == {}


def _decorated(path: Path, marker: str) -> list[tuple[str, int]]:
    """(function name, lines) of each function whose decorator mentions ``marker``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            marker in ast.unparse(d) for d in node.decorator_list
        ):
            out.append((node.name, node.end_lineno - node.lineno + 1))
    return out


def test_cli_commands_are_thin_adapters() -> None:
    commands = [(f"{p.name}:{name}", n) for p in _modules("orchestration/cli")
                for name, n in _decorated(p, ".command(")]
    assert len(commands) >= 25  # the scan found the commands
    assert [c for c in commands if c[1] > MAX_COMMAND_LINES] == []


def test_flow_tasks_are_thin_adapters() -> None:
    tasks = _decorated(ROOT / "orchestration" / "flows.py", "task")
    assert len(tasks) >= 8
    assert [t for t in tasks if t[1] > MAX_TASK_LINES] == []


def test_cli_settings_come_from_the_context_not_the_environment() -> None:
    """Commands build settings from the invocation's flags (``cli_settings``); the environment is written
    only where flows, which read ``CTRFLOW_*`` in their own processes, are handed the settings."""
    for path in _modules("orchestration/cli"):
        source = path.read_text()
        assert "get_settings(" not in source or path.name == "app.py", path.name
        tree = ast.parse(source)
        writes = [n for n in ast.walk(tree) if isinstance(n, ast.Subscript)
                  and ast.unparse(n.value) == "os.environ" and isinstance(n.ctx, ast.Store)]
        writes += [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) in (
            "os.environ.setdefault", "os.environ.update", "os.putenv")]
        assert not writes or path.name == "app.py", path.name
