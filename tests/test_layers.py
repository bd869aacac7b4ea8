"""The package's structure stays as drawn: layers only import downwards, and no cycles.

Read with ``ast`` (every import, also those inside functions), so a late import cannot
hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "memollm"

LAYERS = [
    {"config"},                                   # every knob, validated once
    {"memory", "models", "texts", "stats", "notebook", "reading", "strength"},  # forgetting curve; loading; text; statistics;
                                                  # set-up; the one read and decode loop
    {"policies"},                                 # eviction scores
    {"cache", "attention"},                       # mechanics: slots, positions, the attention hook
    {"views"},                                    # what a session and a conversation's cache hold, as results
    {"session", "lessons"},                       # one generation's bookkeeping; hand loops
    {"template"},                                 # a conversation as text and tokens
    {"chat"},                                     # a conversation over one session
    {"llm"},                                      # the seed's API
    {"bench", "evaluate", "training"},            # measurement only; fitting a strength gate
    {"viz"},                                      # every plot
    {"cli", "__main__"},                          # the command line
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(path: Path) -> str:
    """The layer unit of a file: its top-level module or subpackage (``bench/report.py`` -> ``bench``)."""
    rel = path.relative_to(PACKAGE).with_suffix("")
    return rel.parts[0] if rel.parts[0] != "__init__" else "__init__"


def _imports(path: Path) -> set[str]:
    """Top-level memollm units imported by ``path``."""
    rel = path.relative_to(PACKAGE)
    depth = len(rel.parts) - 1  # 0 for memollm/x.py, 1 for memollm/bench/x.py
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "memollm":
                    found.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "memollm":
                    continue
                names = parts[1:] or [a.name for a in node.names]
            elif node.level - 1 == depth:  # relative to the package root
                names = node.module.split(".")[:1] if node.module else [a.name for a in node.names]
            else:  # inside a subpackage: a sibling, same unit
                continue
            for name in names:
                found.add(name if (PACKAGE / name).exists() or (PACKAGE / f"{name}.py").exists() else "__init__")
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        unit = _unit(path)
        if unit == "__init__":
            continue  # the package root re-exports the public API: it may import anything
        graph.setdefault(unit, set()).update(_imports(path) - {unit})
    return graph


def test_every_module_has_a_layer():
    missing = sorted(set(_graph()) - set(LAYER))
    assert not missing, f"add {missing} to LAYERS in {__file__} (where they belong in the drawing)"


def test_layers_only_import_downwards():
    upward = [(unit, dep) for unit, deps in _graph().items() for dep in deps
              if dep == "__init__" or LAYER.get(dep, -1) > LAYER.get(unit, -1)]
    assert not upward, f"upward imports (module -> higher module): {sorted(upward)}"


def _assert_acyclic(graph: dict[str, set[str]], roots_to_skip: tuple[str, ...] = ()) -> None:
    """Depth-first search over ``graph``; fails with the path of the first cycle found."""
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            assert state.get(dep) != 1, f"import cycle: {' -> '.join(path + [node, dep])}"
            if dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state and node not in roots_to_skip:
            visit(node, [])


def test_no_import_cycles():
    _assert_acyclic(_graph())


def test_no_module_is_too_long_without_saying_why():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        lines = text.count("\n")
        doc = ast.get_docstring(ast.parse(text)) or ""
        assert lines <= 400 or "long because" in doc.lower(), (
            f"{path.relative_to(PACKAGE)} has {lines} lines; split it, or say in its docstring why it is long")


def _module_graph() -> dict[str, set[str]]:
    """Module -> modules it imports, inside memollm, at module granularity (a subpackage's
    ``__init__`` is the module ``memollm.x``; ``from . import y`` names ``y`` if it is a module)."""
    def name_of(path: Path) -> str:
        parts = ("memollm",) + path.relative_to(PACKAGE).with_suffix("").parts
        return ".".join(parts[:-1]) if parts[-1] == "__init__" else ".".join(parts)

    def is_module(dotted: str) -> bool:
        rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
        return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()

    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        me = name_of(path)
        package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
        found = graph.setdefault(me, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if not target.startswith("memollm"):
                    continue
                subs = [f"{target}.{a.name}" for a in node.names if is_module(f"{target}.{a.name}")]
                found.update(subs or [target])
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("memollm"))
        found.discard(me)
    return graph


def test_no_import_cycles_between_modules():
    """Also inside a subpackage: a module must not import its own package (whose ``__init__``
    imports it back)."""
    _assert_acyclic(_module_graph(), roots_to_skip=("memollm",))  # the root re-exports the public API


def test_scipy_only_in_the_tools():
    """scipy comes with the ``eval`` extra: only the statistics and the tools that measure may import it
    (``stats`` inside its functions, so the table writer there stays import-light); the core never."""
    tools = {"stats", "evaluate", "bench", "viz", "cli"}
    users = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n.split(".")[0] == "scipy" for n in names):
                users.add(_unit(path))
    assert users <= tools, f"scipy imported outside the tools: {sorted(users - tools)}"
    stats = ast.parse((PACKAGE / "stats.py").read_text())
    top = [n for n in stats.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not any("scipy" in ast.dump(n) for n in top), "stats imports scipy at module level"
