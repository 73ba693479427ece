"""The package's layers import downward only, and only the gateway executes SQL."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "sa_pgtq"

# Lowest first. A module may import modules of lower layers and of its own package
# folder (worker.*); anything else, lazy or TYPE_CHECKING imports included, is a cycle
# waiting to happen.
LAYERS = [
    {"errors", "models", "embedded", "bridge", "runner", "tasks"},
    {"periodic"},
    {"validation", "schema", "ticks"},
    {"statements"},
    {"inspection"},
    {"gateway", "binding"},
    {"notifications", "backend"},
    {"listener"},
    {"context", "handlers", "leases"},
    {"execution", "consuming", "schedules"},
    {"queue"},
    {"q4pg", "pgtq"},
    {"worker"},
    {"aio"},
    {"monitor"},
    {"dashboard"},
    {"demo", "testing"},
    {"cli"},
    {"__init__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return "__init__" if parts == ("__init__",) else parts[0]  # worker/* is the worker layer, …


def imported(path: Path) -> set[str]:
    """The sa_pgtq modules (top-level names) that `path` imports, anywhere in the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sa_pgtq"):
            names.add(node.module.split(".")[1] if "." in node.module else "__init__")
        elif isinstance(node, ast.ImportFrom) and node.level:
            if path.parent != PACKAGE and node.level == 1:
                continue  # a module of its own package folder (worker's services, aio's parts)
            if node.module:
                names.add(node.module.split(".")[0])
            else:
                names.update(alias.name for alias in node.names)
    return names


def test_every_module_has_a_layer() -> None:
    layered = set().union(*LAYERS)
    assert {module_name(p) for p in PACKAGE.rglob("*.py")} == layered


def test_layers_import_downward_only() -> None:
    layer_of = {name: n for n, layer in enumerate(LAYERS) for name in layer}
    upward = [
        f"{module_name(path)} imports {target}"
        for path in PACKAGE.rglob("*.py")
        for target in imported(path)
        if layer_of[target] >= layer_of[module_name(path)] and target != module_name(path)
    ]
    assert upward == []


def test_only_the_gateway_executes_statements() -> None:
    executing = sorted(
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(
            isinstance(node, ast.Attribute)
            and node.attr in ("execute", "exec_driver_sql", "scalars", "scalar")
            and isinstance(node.ctx, ast.Load)
            and path.name != "demo.py"  # the demo's own table, as an application's code
            for node in ast.walk(ast.parse(path.read_text()))
        )
    )
    # schema.py holds the DDL steps Alembic runs (op.execute); the gateway calls them.
    assert executing == ["gateway.py", "schema.py"]
