"""Imports point down the layers and never go round in circles (DESIGN.md, "Layout and layers").

Every module of bot/ and processes/ is parsed with ``ast`` (no import is executed), imports inside
functions and ``if TYPE_CHECKING:`` blocks included, relative imports resolved.  The graph of imports
between the project's own modules must have:
(a) no import from a lower layer up to a higher one,
(b) no cycle (a package's ``__init__`` is a module of its own),
(c) no module missing from LAYERS: a new module is placed on purpose.
Imports within one layer are allowed as long as they form no cycle.

Not seen (not imports): modules named in strings, e.g. ``bot.fleet.COMMANDS``, which names the
click commands of processes/ that the cli and `tradebot up` load lazily with importlib.
"""
from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "processes")

LEAF, DOMAIN, LOOPS, OPERATOR, ENTRY = 1, 2, 3, 4, 5
LAYER_NAMES = {LEAF: "leaf", DOMAIN: "domain", LOOPS: "loops", OPERATOR: "operator", ENTRY: "entry points"}

# module name prefix -> layer; the longest prefix wins. A prefix covers the module of that name and
# everything below it (bot.worker: the module today, the package and its stages soon).
LAYERS: dict[str, int] = {
    **dict.fromkeys(("bot.keys", "bot.codec", "bot.numbers", "bot.lua", "bot.config", "bot.logs", "bot.redisconn",
                     "bot.runtime", "bot.errors", "bot.embedded_redis"), LEAF),
    **dict.fromkeys(("bot.streams", "bot.signals", "bot.market", "bot.ledger", "bot.journal", "bot.risk",
                     "bot.strategies", "bot.ratelimit", "bot.alpaca", "bot.paper", "bot.order_events",
                     "bot.lease", "bot.heartbeat", "bot.pnl", "bot.retention", "bot.trading", "bot.strategy", "bot.breakers", "bot.recording"), DOMAIN),
    **dict.fromkeys(("bot.router", "bot.poller", "bot.worker", "bot.generator", "bot.consumer",
                     "bot.listener", "bot.reconcile"), LOOPS),
    **dict.fromkeys(("bot.ops", "bot.fleet", "bot.web", "bot.notify", "bot.replay"), OPERATOR),
    **dict.fromkeys(("bot.cli", "processes"), ENTRY),
}
# exact module name -> layer: the bot package's own __init__ (as a prefix it would place every module)
EXACT_LAYERS: dict[str, int] = {"bot": LEAF}

Graph = Mapping[str, Mapping[str, str]]  # importer -> {imported: "file:line" of the first such import}


# ----------------------------------------------------------------------------- the checker

def layer_of(module: str) -> int | None:
    if module in EXACT_LAYERS:
        return EXACT_LAYERS[module]
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in LAYERS:
            return LAYERS[prefix]
    return None


def _shown(module: str) -> str:
    layer = layer_of(module)
    return f"{module} ({'no layer' if layer is None else f'{layer} {LAYER_NAMES[layer]}'})"


def discover(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> tuple[dict[str, Path], set[str]]:
    """(module name -> file) of every .py file under the packages, and the names of the packages
    themselves (folders, with or without ``__init__.py``)."""
    modules: dict[str, Path] = {}
    package_names: set[str] = set()
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            for n in range(1, len(parts)):
                package_names.add(".".join(parts[:n]))
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules, package_names


def _is_own(name: str, packages: Iterable[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def imports_of(module: str, source: str, *, is_package: bool, known: set[str],
               packages: Iterable[str] = PACKAGES, filename: str = "<source>") -> dict[str, str]:
    """The project modules ``module`` imports anywhere in ``source`` -> "file:line" of the first import.

    ``known``: every module and package name of the project. ``import a.b.c`` and ``from a.b import c``
    point at the most specific known module (``a.b.c`` if ``c`` is a module, else ``a.b``); the
    implicit import of parent packages is not counted (a package's __init__ importing its own
    submodules would otherwise always be a cycle)."""
    packages = tuple(packages)
    found: dict[str, str] = {}

    def most_specific(name: str) -> str | None:
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            candidate = ".".join(parts[:n])
            if candidate in known:
                return candidate
        return None

    def add(name: str, line: int) -> None:
        if not _is_own(name, packages):
            return
        target = most_specific(name)
        if target is not None and target != module:  # a package's __init__ naming its own names: no edge
            found.setdefault(target, f"{filename}:{line}")

    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                if node.level > 1:
                    base = base[:-(node.level - 1)]
                if not base:
                    raise ValueError(f"{filename}:{node.lineno}: relative import beyond the top package")
                parent = ".".join(base + ([node.module] if node.module else []))
            else:
                parent = node.module or ""
            for alias in node.names:
                submodule = f"{parent}.{alias.name}"
                add(submodule if submodule in known else parent, node.lineno)
    return found


def import_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> tuple[dict[str, dict[str, str]], set[str]]:
    """(the import graph of the project's own modules, the names of all modules)."""
    packages = tuple(packages)
    modules, package_names = discover(root, packages)
    known = set(modules) | package_names
    graph: dict[str, dict[str, str]] = {}
    for module, path in modules.items():
        graph[module] = imports_of(module, path.read_text(encoding="utf-8"), is_package=path.name == "__init__.py",
                                   known=known, packages=packages, filename=str(path.relative_to(root)))
    return graph, set(modules)


def upward_imports(graph: Graph) -> list[str]:
    """Each import from a lower layer up to a higher one, as a readable line."""
    found = []
    for importer, imported in sorted(graph.items()):
        low = layer_of(importer)
        for target, where in sorted(imported.items()):
            high = layer_of(target)
            if low is not None and high is not None and high > low:
                found.append(f"{_shown(importer)} -> {_shown(target)}  at {where}")
    return found


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module, or one that imports itself."""
    nodes = sorted(set(graph) | {t for targets in graph.values() for t in targets})
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0

    def visit(start: str) -> None:  # iterative: no recursion limit on a deep import chain
        nonlocal counter
        work = [(start, iter(sorted(graph.get(start, {}))))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, {})))))
                    advanced = True
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, {}):
                    components.append(sorted(component))

    for node in nodes:
        if node not in index:
            visit(node)
    return sorted(components)


def cycles(graph: Graph) -> list[str]:
    """Each import cycle as a readable block: its modules and the imports between them."""
    found = []
    for component in strongly_connected(graph):
        members = set(component)
        edges = [f"    {_shown(a)} -> {_shown(b)}  at {where}"
                 for a in component for b, where in sorted(graph.get(a, {}).items()) if b in members]
        found.append(f"cycle among {', '.join(component)}:\n" + "\n".join(edges))
    return found


def unplaced(modules: Iterable[str]) -> list[str]:
    return sorted(m for m in modules if layer_of(m) is None)


# ----------------------------------------------------------------------------- the project

@pytest.fixture(scope="module")
def project() -> tuple[dict[str, dict[str, str]], set[str]]:
    graph, modules = import_graph()
    assert {"bot", "bot.cli", "bot.fleet", "bot.ops", "processes.worker"} <= modules  # the parser found the tree
    return graph, modules


def test_every_module_has_a_layer(project: tuple[dict[str, dict[str, str]], set[str]]) -> None:
    _graph, modules = project
    missing = unplaced(modules)
    assert not missing, ("modules missing from LAYERS in tests/test_layers.py (place each in its layer):\n  "
                         + "\n  ".join(missing))


def test_imports_point_down(project: tuple[dict[str, dict[str, str]], set[str]]) -> None:
    graph, _modules = project
    found = upward_imports(graph)
    assert not found, "imports from a lower layer up to a higher one (importer -> imported):\n  " + "\n  ".join(found)


def test_no_import_cycles(project: tuple[dict[str, dict[str, str]], set[str]]) -> None:
    graph, _modules = project
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(found)


def test_only_the_cli_imports_the_cli(project: tuple[dict[str, dict[str, str]], set[str]]) -> None:
    graph, _modules = project
    importers = sorted(m for m, imported in graph.items() if "bot.cli" in imported and m.startswith("bot"))
    assert not importers, f"bot.cli is an entry point; imported by {', '.join(importers)}"


# ----------------------------------------------------------------------------- the checker checked

def test_the_checker_catches_upward_imports_and_cycles() -> None:
    graph = {
        "bot.keys": {"bot.ops": "bot/keys.py:3"},  # leaf -> operator: upward
        "bot.streams": {"bot.signals": "bot/streams.py:5", "bot.keys": "bot/streams.py:6"},
        "bot.signals": {"bot.streams": "bot/signals.py:9"},  # a cycle within one layer
        "bot.router": {"bot.router": "bot/router.py:1"},  # a module importing itself
        "bot.ops": {"bot.fleet": "bot/ops.py:2"},  # operator -> operator, no cycle: fine
        "bot.cli": {"bot.ops": "bot/cli.py:4", "bot.keys": "bot/cli.py:5"},  # downward: fine
    }
    assert upward_imports(graph) == [
        "bot.keys (1 leaf) -> bot.ops (4 operator)  at bot/keys.py:3"]
    assert strongly_connected(graph) == [["bot.router"], ["bot.signals", "bot.streams"]]
    [router_cycle, signals_cycle] = cycles(graph)
    assert "bot.streams (2 domain) -> bot.signals (2 domain)  at bot/streams.py:5" in signals_cycle
    assert "bot.signals (2 domain) -> bot.streams (2 domain)  at bot/signals.py:9" in signals_cycle
    assert "bot.router" in router_cycle
    assert strongly_connected({"a": {"b": ""}, "b": {"c": ""}, "c": {"a": ""}, "d": {"a": ""}}) == [["a", "b", "c"]]
    assert unplaced(["bot", "bot.worker", "bot.worker.intake", "bot.newthing", "processes.x", "bot.clix"]) == [
        "bot.clix", "bot.newthing"]


def test_the_parser_sees_every_kind_of_import() -> None:
    known = {"bot", "bot.keys", "bot.codec", "bot.paper", "bot.paper.app", "bot.paper.clock", "bot.fleet",
             "bot.cli", "bot.worker", "bot.worker.intake", "processes", "processes.worker"}
    source = '''
from __future__ import annotations
import json
from typing import TYPE_CHECKING
import bot.keys
from bot import __version__
from bot.paper import app
from . import clock
from .. import codec
if TYPE_CHECKING:
    from bot.fleet import FleetPlan
def later():
    import processes.worker
    from bot.worker.intake import read
class Lazy:
    def method(self):
        from ..cli import cli
'''
    found = imports_of("bot.paper.exchange", source, is_package=False, known=known, filename="x.py")
    assert found == {"bot.keys": "x.py:5", "bot": "x.py:6", "bot.paper.app": "x.py:7", "bot.paper.clock": "x.py:8",
                     "bot.codec": "x.py:9", "bot.fleet": "x.py:11", "processes.worker": "x.py:13",
                     "bot.worker.intake": "x.py:14", "bot.cli": "x.py:17"}
    # in a package's __init__, "." is the package itself
    assert imports_of("bot.paper", "from .app import serve\nfrom . import clock\n", is_package=True,
                      known=known) == {"bot.paper.app": "<source>:1", "bot.paper.clock": "<source>:2"}
