"""The package's house rules, checked on the source with ``ast``:

- no import cycle between modules of ``src/gradedit`` (imports inside functions count; only imports
  under ``if TYPE_CHECKING:`` are exempt);
- no module over 400 lines;
- no private name (``_x``) imported from another module (private *modules* such as ``_files`` are
  fine: their public names are the package-internal API);
- at most 8 modules at the package root;
- layers: a module imports only from its own folder or from layers below it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "gradedit"
MAX_LINES = 400
MAX_ROOT_MODULES = 8

# bottom to top; a module may import from its own top-level folder or from any earlier entry
LAYERS: list[set[str]] = [
    {"_version", "errors", "_files", "_progress", "_config"},
    {"dist"},
    {"models", "data"},
    {"metrics"},
    {"decompose"},
    {"edits"},
    {"gradiend", "blast", "viz"},
    {"demo"},
    {"cli"},
    {"__init__", "__main__"},
]


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported module, names imported from it, line) for every runtime import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found: list[tuple[str, list[str], int]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "gradedit":
                        found.append((alias.name, [], child.lineno))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    mod = ".".join(base + ([child.module] if child.module else []))
                else:
                    mod = child.module or ""
                if mod.split(".")[0] != "gradedit":
                    continue
                names = [a.name for a in child.names]
                # ``from pkg import submodule`` imports the submodule
                subs = [n for n in names if f"{mod}.{n}" in modules]
                for n in subs:
                    found.append((f"{mod}.{n}", [], child.lineno))
                rest = [n for n in names if n not in subs]
                if rest or not subs:
                    found.append((mod, rest, child.lineno))
            visit(child)

    visit(tree)
    return found


def _resolve(mod: str, modules: dict[str, Path]) -> str | None:
    while mod and mod not in modules:
        mod = mod.rpartition(".")[0]
    return mod or None


def _graph() -> tuple[dict[str, Path], dict[str, set[str]]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for mod, _, _ in _imports(name, path, modules):
            target = _resolve(mod, modules)
            if target and target != name:
                graph[name].add(target)
    return modules, graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_no_import_cycles() -> None:
    _, graph = _graph()
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_module_over_limit() -> None:
    long = {str(p.relative_to(SRC)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_private_names_across_modules() -> None:
    modules = _modules()
    bad = []
    for name, path in modules.items():
        for mod, names, line in _imports(name, path, modules):
            if _resolve(mod, modules) == name:
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(SRC)}:{line} imports {n} from {mod}")
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_thin_root() -> None:
    root = sorted(p.name for p in PKG.glob("*.py"))
    assert len(root) <= MAX_ROOT_MODULES, f"{len(root)} modules at the package root: {root}"


def _layer(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    return None


def test_imports_only_downward() -> None:
    modules, graph = _graph()
    bad, unknown = [], set()
    for name, targets in graph.items():
        li = _layer(name)
        if li is None:
            unknown.add(name.split(".")[1] if "." in name else name)
            continue
        for t in targets:
            lt = _layer(t)
            same_top = t.split(".")[:2] == name.split(".")[:2]
            if lt is None or same_top:
                continue
            if lt > li:
                bad.append(f"{name} (layer {li}) imports {t} (layer {lt})")
    assert not unknown, f"modules in no layer (add them to LAYERS or move them): {sorted(unknown)}"
    assert not bad, "upward imports:\n" + "\n".join(sorted(bad))


@pytest.mark.parametrize("source, expected", [
    ("import gradedit.a\n", ["gradedit.a"]),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import gradedit.a\n", []),
    ("def f():\n    from gradedit import a\n", ["gradedit.a"]),
])
def test_import_scanner(tmp_path: Path, source: str, expected: list[str]) -> None:
    """The scanner itself: function-level imports count, TYPE_CHECKING imports do not."""
    f = tmp_path / "m.py"
    f.write_text(source)
    got = [m for m, _, _ in _imports("gradedit.m", f, {"gradedit.a": f})]
    assert got == expected


def test_cycle_finder() -> None:
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
