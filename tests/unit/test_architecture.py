"""The layering rules of docs/ARCHITECTURE.md, checked on the syntax tree of every module.

Each rule names the module and the import that breaks it, so a failure says what to move.
"""

from __future__ import annotations

import ast
import functools
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "nkdaemon"
MAX_LINES = 450
CORE_MAY_IMPORT = {"orjson"}  # canonical JSON: a pure function over values
LOWER_LAYERS = {"core", "services", "sources", "targets", "repository", "dialects"}
ADAPTERS = {"sources", "targets", "repository"}


def _modules(package: Path) -> dict[str, Path]:
    """Every module of ``package`` by dotted name."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules(PACKAGE)


@functools.cache
def _imports(module: str, path: Path) -> list[tuple[str, list[str]]]:
    """(module imported, names taken from it) for every import, relative ones resolved."""
    package = module
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.append((base, [alias.name for alias in node.names]))
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "nkdaemon" else ""


def _violations(rule: str, modules: dict[str, Path] = MODULES) -> list[str]:
    out = []
    for module, path in modules.items():
        layer = _layer(module)
        for imported, names in _imports(module, path):
            top = imported.split(".")[0]
            target = _layer(imported)
            if rule == "core is pure" and layer == "core":
                allowed = top in sys.stdlib_module_names or top in CORE_MAY_IMPORT
                if not (allowed or target == "core" or imported == "nkdaemon"):
                    out.append(f"{module} imports {imported}")
            elif rule == "nothing below runtime imports it" and layer in LOWER_LAYERS:
                if target in {"runtime", "cli"}:
                    out.append(f"{module} imports {imported}")
            elif rule == "adapters stand alone" and layer in ADAPTERS:
                if target in (ADAPTERS - {layer}) | {"services"}:
                    out.append(f"{module} imports {imported}")
            elif rule == "no private name crosses a module" and top == "nkdaemon":
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if imported != module:
                    out += [f"{module} imports {imported}.{n}" for n in private]
    return out


@pytest.mark.parametrize(
    "rule",
    [
        "core is pure",
        "nothing below runtime imports it",
        "adapters stand alone",
        "no private name crosses a module",
    ],
)
def test_the_layering_rule_holds(rule: str) -> None:
    assert _violations(rule) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_over_the_line_limit(module: str) -> None:
    lines = MODULES[module].read_text().count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it by job"


def test_the_checks_see_a_violation_when_there_is_one(tmp_path: Path) -> None:
    """The rules are not vacuous: planted impure, upward, sideways and private imports."""
    core = tmp_path / "nkdaemon" / "core"
    core.mkdir(parents=True)
    (core / "planted.py").write_text(
        "import sqlite3\nimport psycopg\nfrom nkdaemon.runtime.config import Settings\n"
        "from .log import _private\n"
    )
    targets = tmp_path / "nkdaemon" / "targets"
    targets.mkdir()
    (targets / "planted.py").write_text("from ..sources import postgres\n")
    modules = _modules(tmp_path / "nkdaemon")
    assert _violations("core is pure", modules) == [
        "nkdaemon.core.planted imports psycopg",
        "nkdaemon.core.planted imports nkdaemon.runtime.config",
    ]
    assert _violations("nothing below runtime imports it", modules) == [
        "nkdaemon.core.planted imports nkdaemon.runtime.config"
    ]
    assert _violations("adapters stand alone", modules) == [
        "nkdaemon.targets.planted imports nkdaemon.sources"
    ]
    assert _violations("no private name crosses a module", modules) == [
        "nkdaemon.core.planted imports nkdaemon.core.log._private"
    ]
