"""The package's architecture (issue 19): layers, imports pointing down, no private names across modules.

The layers, lowest first (docs/architecture.md draws them). A module may
import its own layer or a lower one, never a higher one; the graph of the
package's imports (module level and function level) has no cycle:

    0 base       errors, records, progress, thread_raise
    1 native     _native (cffi), _core, segment_janitor, native/
    2 values     serialization, compat_worker, compat, results, native_tasks/
    3 lifecycle  lifecycle/ (TaskLifecycle, TaskHost, delays, callbacks, monitor)
    4 backends   backends/ (Backend, thread, process/), workers (the worker's entry point)
    5 workflows  workflows/ (dependencies, canvas, unique jobs, rate limits, schedules)
    6 api        engine, app
    7 surface    integrations/, observability/, cli, demo, demo_jobs, server, the package itself

Imports under ``if TYPE_CHECKING:`` never run: they are left out of the
cycle check, but they too may not point to a higher layer.
"""
from __future__ import annotations

import ast
import concurrent.futures
import os
import pathlib
import subprocess
import sys

import pytest

import catzilla_mp

PKG_DIR = pathlib.Path(catzilla_mp.__file__).parent
PKG = "catzilla_mp"

#: (layer name, module-name prefixes in it), lowest layer first.
LAYERS = [
    ("base", ["errors", "records", "progress", "thread_raise"]),
    ("native", ["_native", "_core", "segment_janitor", "native"]),
    ("values", ["serialization", "compat_worker", "compat", "results", "native_tasks"]),
    ("lifecycle", ["lifecycle"]),
    ("backends", ["backends", "workers"]),
    ("workflows", ["workflows"]),
    ("api", ["engine", "app"]),
    ("surface", ["integrations", "observability", "cli", "demo", "demo_jobs", "server", ""]),
]

#: Private names a module may take from another, each with its reason. Keep it short.
PRIVATE_IMPORT_EXCEPTIONS: dict[tuple[str, str], str] = {}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG_DIR).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)  # "" for the package itself


def _modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for p in sorted(PKG_DIR.rglob("*.py"))}


MODULES = _modules()


def _layer(module: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if prefix == "":
                matches = module == ""
            else:
                matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    assert best is not None, f"module {module!r} is in no layer: add it to LAYERS"
    return best


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str | None:
    """The package-relative name an import refers to, or None if it is not the package's."""
    if level == 0:
        if target is None or not (target == PKG or target.startswith(PKG + ".")):
            return None
        return target[len(PKG) + 1:] if target != PKG else ""
    base = module.split(".") if module else []
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    if target:
        base = base + target.split(".")
    return ".".join(base)


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


class _Imports:
    """Every import of the package's own modules by one module."""

    def __init__(self, module: str, path: pathlib.Path) -> None:
        self.module = module
        tree = ast.parse(path.read_text(), str(path))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        is_package = path.name == "__init__.py"
        #: (imported module, line, type-checking only)
        self.edges: list[tuple[str, int, bool]] = []
        #: (imported module, private name, line)
        self.private_names: list[tuple[str, str, int]] = []
        #: local name -> package module it is bound to
        self.module_aliases: dict[str, str] = {}
        self.tree = tree
        for node in ast.walk(tree):
            typing_only = _in_type_checking(node, parents)
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = _resolve(module, is_package, 0, alias.name)
                    if target is not None:
                        self.edges.append((target, node.lineno, typing_only))
                        if alias.asname:
                            self.module_aliases[alias.asname] = target
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, is_package, node.level, node.module)
                if source is None:
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}" if source else alias.name
                    if sub in MODULES:  # "from . import compat": the module compat
                        self.edges.append((sub, node.lineno, typing_only))
                        self.module_aliases[alias.asname or alias.name] = sub
                        continue
                    self.edges.append((source, node.lineno, typing_only))
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        self.private_names.append((source, alias.name, node.lineno))


IMPORTS = {name: _Imports(name, path) for name, path in MODULES.items()}


def _display(module: str) -> str:
    return f"{PKG}.{module}" if module else PKG


def test_issue_19_every_module_of_the_package_imports_alone_in_a_fresh_interpreter():
    """(a) No module works only because another was imported first (a hidden cycle would show here)."""
    names = [_display(m) for m in MODULES if not m.endswith("__main__")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(PKG_DIR.parent)] + sys.path))

    def import_alone(name: str) -> tuple[str, int, str]:
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True,
                              text=True, env=env, cwd=str(PKG_DIR.parent), timeout=120)
        return name, proc.returncode, proc.stderr[-2000:]

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        failed = [r for r in pool.map(import_alone, names) if r[1] != 0]
    assert not failed, "\n\n".join(f"{n}:\n{err}" for n, _, err in failed)


def test_issue_19_the_import_graph_has_no_cycle_and_no_layer_imports_a_higher_one():
    """(b) Module- and function-level imports form a DAG; every import points to its own layer or lower."""
    upward = []
    for module, imports in IMPORTS.items():
        for target, line, _ in imports.edges:
            if target not in MODULES:
                continue  # the compiled extension (_native) has no source here
            if _layer(target) > _layer(module):
                upward.append(f"{_display(module)}:{line} imports {_display(target)} "
                              f"({LAYERS[_layer(module)][0]} -> {LAYERS[_layer(target)][0]})")
    assert not upward, "imports pointing up a layer:\n" + "\n".join(upward)

    graph = {m: sorted({t for t, _, typing_only in imp.edges
                        if not typing_only and t in MODULES and t != m})
             for m, imp in IMPORTS.items()}
    # the package itself imports its submodules lazily (PEP 562): its edges
    # are real, but every submodule's import runs the package first, which is
    # Python's doing, not an import of the package's code
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(m: str) -> None:
        if m in done:
            return
        if m in on_path:
            cycle = path[path.index(m):] + [m]
            pytest.fail("import cycle: " + " -> ".join(_display(c) for c in cycle))
        on_path.add(m)
        path.append(m)
        for t in graph[m]:
            visit(t)
        path.pop()
        on_path.discard(m)
        done.add(m)

    for m in graph:
        visit(m)


def test_issue_19_no_module_takes_a_private_name_from_another_module_of_the_package():
    """(c) No ``from .x import _y`` and no ``x._y`` on a package module bound by an import.

    Private *modules* (``_core``, ``_native``) are the package's own and may be
    imported; a private name inside another module may not.
    """
    found = []
    for module, imports in IMPORTS.items():
        for source, name, line in imports.private_names:
            if (module, name) not in PRIVATE_IMPORT_EXCEPTIONS:
                found.append(f"{_display(module)}:{line}: from {_display(source)} import {name}")
        for node in ast.walk(imports.tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in imports.module_aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                target = imports.module_aliases[node.value.id]
                if target != module and (module, node.attr) not in PRIVATE_IMPORT_EXCEPTIONS:
                    found.append(f"{_display(module)}:{node.lineno}: "
                                 f"{node.value.id}.{node.attr} ({_display(target)})")
    assert not found, "private names taken across modules:\n" + "\n".join(found)


def test_issue_19_backends_reach_the_lifecycle_through_the_public_task_host_only():
    """A backend calls only TaskHost's public names on its host, and imports neither engine.py nor the lifecycle's core."""
    found = []
    for module, imports in IMPORTS.items():
        if not module.startswith("backends"):
            continue
        for target, line, _ in imports.edges:
            if target in ("engine", "app") or target == "lifecycle.core":
                found.append(f"{_display(module)}:{line} imports {_display(target)}")
        for node in ast.walk(imports.tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") \
                    and not node.attr.startswith("__"):
                owner = ast.unparse(node.value)
                if owner.split(".")[-1] in ("host", "engine"):
                    found.append(f"{_display(module)}:{node.lineno}: {owner}.{node.attr}")
    assert not found, "\n".join(found)
