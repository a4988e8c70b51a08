"""No import circles in mcir/: imports go one way (frontend -> core <- passes; codegen reads the core).

The module-level imports of every module are read with ``ast`` (nothing is executed), so a
circle fails here even when import order happens to make it work today. Imports inside
functions are not edges (they are the honest design for optional heavy dependencies such as
torch or llvmlite), nor are imports under ``if TYPE_CHECKING:``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[1] / "mcir"

# Edges of circles that other work in progress removes, allowed until it lands (each with its owner).
ALLOWED: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.Module, lazy: bool) -> list[ast.Import | ast.ImportFrom]:
    """Imports executed when the module is imported (the body, including try/if blocks), and with
    ``lazy`` also those inside functions and classes."""
    if lazy:
        typing_only = {
            id(n)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and _is_type_checking(block)
            for n in ast.walk(block)
        }
        return [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom) and id(n) not in typing_only]
    out: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.append(node)
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.With):
            todo += node.body
    return out


def import_graph(lazy: bool = False) -> nx.DiGraph:
    """module -> module it imports at module level (with ``lazy``, anywhere), for every module under mcir/."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path)), lazy):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from .x import y
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                # "from pkg import sub" imports the submodule when there is one, else a name of pkg
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            g.add_edges_from((name, t) for t in targets if t in modules and t != name)
    return g


def _circles(g: nx.DiGraph) -> list[str]:
    g = g.copy()
    g.remove_edges_from(ALLOWED)
    out = []
    for scc in nx.strongly_connected_components(g):
        if len(scc) > 1:
            cycle = " -> ".join(a for a, _ in nx.find_cycle(g.subgraph(scc)))
            out.append(f"{sorted(scc)}\n    e.g. {cycle} -> (back)")
    return out


def test_the_import_graph_sees_known_edges():
    g = import_graph()
    assert g.has_edge("mcir.ir", "mcir.types")
    assert g.has_edge("mcir.ops.elementwise", "mcir.ops.registry")
    assert "mcir.codegen.kernels.gemm_f32" in g
    assert not import_graph().has_edge("mcir.printer", "mcir.ir")  # under TYPE_CHECKING only
    assert import_graph(lazy=True).has_edge("mcir", "mcir.frontend.torch_import")  # inside mcir.trace


def test_no_import_circles_in_mcir():
    circles = _circles(import_graph())
    assert not circles, "import circles (module-level imports):\n  " + "\n  ".join(circles)


def test_no_import_circles_even_through_imports_inside_functions():
    # an import inside a function only postpones a circle: the modules still depend on each other
    circles = _circles(import_graph(lazy=True))
    assert not circles, "import circles (counting imports inside functions):\n  " + "\n  ".join(circles)


def test_every_allowed_edge_still_exists():
    g = import_graph(lazy=True)
    gone = [f"{a} -> {b}" for a, b in ALLOWED if not g.has_edge(a, b)]
    assert not gone, f"these circles are gone: remove them from ALLOWED in {__file__}: {gone}"


def test_the_core_imports_neither_torch_nor_llvmlite():
    # torch belongs to the frontend and llvmlite to codegen: the IR, passes and CLI start without them
    code = (
        "import sys, mcir, mcir.passes.quantize, mcir.passes.prune, mcir.replace, mcir.serialize; "
        "print(sorted(m for m in ('torch', 'llvmlite') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
