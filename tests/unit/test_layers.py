"""The package layout is the architecture: every import points down, none goes round.

Each top-level folder of ``src/crucible`` is a layer; a module may import its own
layer and the layers below it, never one above (nor a peer on its own tier):

    core ← engine ← store ← domain ← environments ← services ← dispatch ← wiring
         ← api, client ← cli, integrations

and the client, which runs on researchers' machines, imports only core and domain.

Read from the source with ``ast`` (nothing is imported): every ``import`` and
``from … import`` anywhere in a module counts, at its top, inside a function (a
deferred import is still a dependency) and under ``if TYPE_CHECKING:`` (a type-only
import still ties the two modules' designs together, and a cycle through one is
the kind of knot this test exists to stop; break it with a Protocol in the lower
module, as ``engine/host.py`` does). ``from pkg import name`` is an edge to
``pkg.name`` when that is a module, else to ``pkg`` (its ``__init__``); importing a
submodule is not counted as importing its parent packages.

Run it on any tree: ``python tests/unit/test_layers.py [src/crucible]``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "crucible"

# Lowest first; layers on one tier may not import each other.
TIERS: list[set[str]] = [
    {"core"},
    {"engine"},
    {"store"},
    {"domain"},
    {"environments"},
    {"services"},
    {"dispatch"},
    {"wiring"},
    {"api", "client"},
    {"cli", "integrations"},
]
# Layers allowed fewer than everything below them.
ONLY: dict[str, set[str]] = {"client": {"core", "domain"}}

Graph = Mapping[str, set[str]]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(module: str, source: str, known: set[str], *, is_package: bool) -> set[str]:
    """The modules of ``known`` that ``source`` (the text of ``module``) imports."""
    found: set[str] = set()

    def add(name: str) -> None:
        # The longest prefix that is one of ours (``import a.b.c`` names ``a.b.c``).
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                add(full if full in known else target)
    return found


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    return {
        name: imports_of(name, path.read_text(), known, is_package=path.name == "__init__.py")
        for name, path in files.items()
    }


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def layer_of(module: str) -> str:
    """``crucible.engine.session`` → ``engine``; the package itself is core."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "core"


def allowed(tiers: list[set[str]], only: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """Each layer → the layers it may import (its own included)."""
    out: dict[str, set[str]] = {}
    below: set[str] = set()
    for tier in tiers:
        for layer in tier:
            out[layer] = {layer} | only.get(layer, below)
        below = below | tier
    return out


def upward(
    graph: Graph,
    layer: Callable[[str], str] = layer_of,
    tiers: list[set[str]] = TIERS,
    only: Mapping[str, set[str]] = ONLY,
) -> list[str]:
    """Every import that points up the order (or sideways, or out of ``only``), and
    every module in a folder that is no layer."""
    may = allowed(tiers, only)
    bad = []
    for source, targets in sorted(graph.items()):
        a = layer(source)
        if a not in may:
            bad.append(f"{source}: in {a!r}, which is no layer (add it to TIERS)")
            continue
        for target in sorted(targets):
            b = layer(target)
            if b not in may[a]:
                bad.append(f"{source} ({a}) imports {target} ({b})")
    return bad


def report(graph: Graph, layer: Callable[[str], str] = layer_of) -> Iterable[str]:
    for component in cycles(graph):
        yield "cycle: " + " <-> ".join(component)
    for line in upward(graph, layer):
        yield "upward: " + line


# -- the checker, on graphs made up to fail it -------------------------------------


def test_the_checker_finds_a_cycle_and_an_upward_import() -> None:
    graph = {
        "crucible.core.a": set(),
        "crucible.engine.b": {"crucible.engine.c", "crucible.core.a"},
        "crucible.engine.c": {"crucible.engine.b"},  # a cycle inside one layer
        "crucible.store.d": {"crucible.services.e"},  # up
        "crucible.services.e": {"crucible.store.d"},  # down, but closes a cycle
        "crucible.client.f": {"crucible.engine.b"},  # below, yet not core or domain
        "crucible.api.g": {"crucible.client.f"},  # a peer on its tier
        "crucible.cli.h": {"crucible.api.g", "crucible.client.f"},  # fine
        "crucible.somewhere.i": set(),
    }
    assert cycles(graph) == [
        ["crucible.engine.b", "crucible.engine.c"],
        ["crucible.services.e", "crucible.store.d"],
    ]
    assert upward(graph) == [
        "crucible.api.g (api) imports crucible.client.f (client)",
        "crucible.client.f (client) imports crucible.engine.b (engine)",
        "crucible.somewhere.i: in 'somewhere', which is no layer (add it to TIERS)",
        "crucible.store.d (store) imports crucible.services.e (services)",
    ]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_reader_sees_every_kind_of_import() -> None:
    known = {
        "crucible",
        "crucible.engine",
        "crucible.engine.models",
        "crucible.engine.session",
        "crucible.engine.host",
        "crucible.core.errors",
        "crucible.services",
        "crucible.services.metrics",
    }
    source = """
from typing import TYPE_CHECKING
import os
from crucible.core.errors import Conflict
from . import models
from .host import SessionHost
from crucible.services import metrics
import crucible.engine
if TYPE_CHECKING:
    from crucible.engine.session import Sessions
def late():
    from crucible.nowhere import x
    from crucible import engine
"""
    got = imports_of("crucible.engine.sandbox", source, known, is_package=False)
    assert got == {
        "crucible.core.errors",
        "crucible.engine.models",
        "crucible.engine.host",
        "crucible.services.metrics",
        "crucible.engine",
        "crucible.engine.session",
        "crucible",  # crucible.nowhere is not ours: its nearest module is the package
    }
    # In a package's __init__, "." is the package itself.
    assert imports_of("crucible.engine", "from .models import X", known, is_package=True) == {
        "crucible.engine.models"
    }


# -- the tree ------------------------------------------------------------------------


def test_the_tree_has_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_every_import_points_down_the_layer_order() -> None:
    bad = upward(import_graph())
    assert not bad, "imports against the layer order (see this module's docstring):\n" + (
        "\n".join(bad)
    )


def test_the_graph_is_read_at_all() -> None:
    graph = import_graph()
    assert len(graph) > 80
    assert "crucible.engine.sandbox" in graph["crucible.engine"]
    assert "crucible.engine.host" in graph["crucible.engine.session"]  # TYPE_CHECKING


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else SRC
    lines = list(report(import_graph(root)))
    print("\n".join(lines) or "no cycles, no upward imports")
    sys.exit(1 if lines else 0)
