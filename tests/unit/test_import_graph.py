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
RUNTIME_LAZY_ALLOWED = {"buildsys.artifacts.registry", "buildsys.artifacts.registry.api", "buildsys.artifacts.signing"}


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


# The packages from the bottom up: a package imports its own layer and the layers below it, never
# one above (lazy imports included). The vocabulary (format, errors, platforms) is at the bottom,
# the artifacts (store, manifest, registry, signatures) on it, then the build side's config,
# models and compiler, which need no runtime; the runtime sits just below the pipeline that
# verifies with it (and reaches nothing of the build side below it either: the test above); then
# what works on built artifacts (distribution: a release import publishes as a build does; ops),
# then what people see.
LAYERS = [
    ("buildsys.errors", "buildsys.platforms", "buildsys.format"),
    ("buildsys.artifacts",),
    ("buildsys.config",),
    ("buildsys.models",),
    ("buildsys.compiler",),
    ("buildsys.runtime",),
    ("buildsys.pipeline",),
    ("buildsys.distribution",),
    ("buildsys.ops",),
    ("buildsys.ui",),
    ("buildsys.workspace",),
    ("buildsys.cli",),
]


def _layer(module: str) -> int:
    for n, packages in enumerate(LAYERS):
        if _within(module, packages):
            return n
    raise AssertionError(f"{module} is in no layer: add its package to LAYERS (where it belongs)")


def _upward(edges) -> list[str]:
    return [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})" for a, b in sorted(edges)
            if _layer(b) > _layer(a)]


def test_every_package_has_a_layer():
    for module in _graph():
        if module != "buildsys":
            _layer(module)


def test_no_package_imports_one_above_it():
    problems = _upward(_package_edges(_graph()))
    assert problems == [], "arrows back up the tree:\n" + "\n".join(problems)


def test_the_rules_bite():
    """The checks above see a forbidden edge when there is one (a test that cannot fail is a defect)."""
    graph = _graph()
    graph["buildsys.artifacts.store"] = [*graph["buildsys.artifacts.store"], ("buildsys.pipeline.build", False)]
    graph["buildsys.config.toolchain"] = [*graph["buildsys.config.toolchain"], ("buildsys.runtime.loader", False)]
    assert _upward(_package_edges(graph)) == [
        "buildsys.artifacts.store (layer 1) imports buildsys.pipeline.build (layer 6)",
        "buildsys.config.toolchain (layer 2) imports buildsys.runtime.loader (layer 5)"]
