"""The import rules the README states, checked on the import graph (every import statement,
at module level and inside functions), not only by what one run happened to import.

- No import cycles between buildsys modules (lazy imports included: a lazy import is one line
  away from a top-level one).
- The runtime (``buildsys.runtime``) reaches nothing from the build side: not torch, not the
  TVM compiler (``tvm`` itself is loaded by path, ``tvm.relax`` never), not the builder, the
  exporter, the compiler pipeline or the tuner, and no SQLAlchemy on its default (SQLite) path;
  the registry API is imported lazily, only for other database URLs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import buildsys

ROOT = Path(buildsys.__file__).parent
BUILD_SIDE = ("buildsys.config", "buildsys.pipeline", "buildsys.compiler", "buildsys.models", "buildsys.ops",
              "buildsys.ui", "buildsys.cli", "buildsys.workspace", "buildsys.distribution.release",
              "buildsys.distribution.bundle", "buildsys.distribution.outbound")
HEAVY = ("torch", "torchvision", "tvm.relax", "tvm.s_tir", "onnx", "onnxsim", "sqlalchemy", "alembic")
# The loader's lazy doors, each for a case the default deployment does not take.
RUNTIME_LAZY_ALLOWED = {"buildsys.artifacts.registry", "buildsys.artifacts.registry.api", "buildsys.distribution.signing"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in the file."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    for node in tree.body:  # `if TYPE_CHECKING:` / `try:` blocks at module level count as top level
        if isinstance(node, (ast.If, ast.Try)):
            top_level.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            for alias in node.names:  # `from . import x` may name a submodule
                candidate = f"{module}.{alias.name}"
                found.append((candidate if _exists(candidate) else module, id(node) in top_level))
    return found


def _exists(module: str) -> bool:
    if not module.startswith("buildsys"):
        return False
    path = ROOT.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph() -> dict[str, list[tuple[str, bool]]]:
    """module -> its imports; importing ``a.b.c`` runs ``a`` and ``a.b`` (their __init__) too."""
    graph = {}
    for path in sorted(ROOT.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        imports = _imports(path)
        parents = [(".".join(target.split(".")[:i]), top) for target, top in imports if target.startswith("buildsys.")
                   for i in range(2, target.count(".") + 1)]
        graph[_module_name(path)] = imports + parents
    return graph


def _internal(target: str, graph) -> str | None:
    """The buildsys module an import names (a symbol import names its module)."""
    while target and target not in graph:
        target = target.rpartition(".")[0]
    return target or None


def test_no_import_cycles_between_buildsys_modules():
    graph = _graph()
    edges = {m: {t for t in (_internal(i, graph) for i, _ in imports if i.startswith("buildsys"))
                 if t and t != m and not m.startswith(t + ".")}  # a module importing its own package
             for m, imports in graph.items()}
    # Tarjan's strongly connected components
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
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
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert cycles == [], f"import cycles: {cycles}"


def test_the_runtime_reaches_nothing_from_the_build_side():
    graph = _graph()
    seen, todo, problems = set(), [m for m in graph if m.startswith("buildsys.runtime")], []
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for target, top_level in graph[module]:
            internal = _internal(target, graph) if target.startswith("buildsys") else None
            if internal is None:
                if any(target == h or target.startswith(h + ".") for h in HEAVY):
                    problems.append(f"{module} imports {target}")
                continue
            if internal.startswith(BUILD_SIDE):
                problems.append(f"{module} imports {internal} (build side)")
                continue
            if not top_level and internal in RUNTIME_LAZY_ALLOWED:
                continue  # a lazy door the default path does not open; its own imports are not the runtime's
            todo.append(internal)
    assert problems == [], "\n".join(problems)
    assert "buildsys.runtime.loader" in seen and "buildsys.artifacts.store" in seen


def _package_edges(graph) -> set[tuple[str, str, str]]:
    """(importing module, imported module, ...) between top-level buildsys packages, lazy included."""
    edges = set()
    for module, imports in graph.items():
        for target, _top in imports:
            internal = _internal(target, graph) if target.startswith("buildsys") else None
            if internal and internal != module and not module.startswith(internal + "."):
                edges.add((module, internal))
    return edges


def _within(module: str, packages) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


# (importer packages, packages they must never import): the flow only points downstream.
DOWNSTREAM_ONLY = [
    (("buildsys.artifacts",), ("buildsys.config", "buildsys.pipeline", "buildsys.compiler", "buildsys.models",
                               "buildsys.ops", "buildsys.ui", "buildsys.cli", "buildsys.distribution",
                               "buildsys.runtime", "buildsys.workspace")),
    (("buildsys.config",), ("buildsys.pipeline", "buildsys.ops", "buildsys.ui", "buildsys.cli",
                            "buildsys.workspace", "buildsys.distribution")),
    (("buildsys.pipeline", "buildsys.compiler"), ("buildsys.ops", "buildsys.ui", "buildsys.cli",
                                                   "buildsys.distribution", "buildsys.workspace")),
    (tuple(f"buildsys.{p}" for p in ("artifacts", "config", "pipeline", "compiler", "models", "ops", "ui",
                                     "distribution", "runtime", "workspace", "errors")), ("buildsys.cli",)),
]


def test_the_flow_only_points_downstream():
    problems = [f"{a} imports {b}" for a, b in sorted(_package_edges(_graph()))
                for importers, forbidden in DOWNSTREAM_ONLY
                if _within(a, importers) and _within(b, forbidden)]
    assert problems == [], "\n".join(problems)


def test_the_rules_bite():
    """The checks above see a forbidden edge when there is one (a test that cannot fail is a defect)."""
    graph = _graph()
    graph["buildsys.artifacts.store"] = [*graph["buildsys.artifacts.store"], ("buildsys.pipeline.build", False)]
    assert ("buildsys.artifacts.store", "buildsys.pipeline.build") in _package_edges(graph)
    assert _within("buildsys.pipeline.build", DOWNSTREAM_ONLY[0][1])
