"""The package's layout holds: layers import downward only, no module imports itself
through others, the top level stays small, and files and functions stay readable.

Every import counts, also one inside a function (a lazy import of a heavy library is
fine; a lazy import of a trainforge module that would close a loop is not).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "trainforge"

# top to bottom: a layer imports only the layers below it; names in one layer are siblings
# that do not import each other (the contract in docs/architecture.md)
LAYERS = [
    ("__main__",),
    ("cli",),
    ("run",),
    ("analysis",),
    ("engine",),
    ("data",),
    ("models", "losses", "metrics"),
    ("config",),
    ("distributed",),
    ("files",),
    ("errors",),
]
PACKAGE_DATA = {"conf"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set:
    """The trainforge modules ``path`` imports, anywhere in it (resolved to modules, not names)."""
    tree = ast.parse(path.read_text())
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return {m for m in found if m.split(".")[0] == "trainforge" and _exists(m)}


def _exists(name: str) -> bool:
    path = SRC / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def modules() -> dict:
    return {module_name(p): p for p in sorted(PKG.rglob("*.py")) if "conf" not in p.relative_to(PKG).parts[:1]}


def graph() -> dict:
    mods = modules()
    return {m: {i for i in imports(p) if i in mods and i != m} for m, p in mods.items()}


def layer_of(module: str):
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package itself (registers, names the old modules)
    for index, names in enumerate(LAYERS):
        if parts[1] in names:
            return index, parts[1]
    raise AssertionError(f"{module}: in no layer of tests/test_layout.py (add it to LAYERS and the docs)")


def test_every_import_points_down_the_layers():
    wrong = []
    for module, targets in graph().items():
        here = layer_of(module)
        for target in targets:
            there = layer_of(target)
            if here is not None and there is None:  # the package root sits above every layer
                wrong.append(f"{module} -> {target}")
            if here is None or there is None or here[1] == there[1]:
                continue
            if there[0] <= here[0]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_itself_through_others():
    g = graph()
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g[v]:
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

    for v in g:
        if v not in index:
            visit(v)
    # a package's __init__ that re-exports its modules is not a loop of its modules
    cycles = [c for c in cycles if not all(m == c[0] or m.startswith(c[0] + ".") for m in c)]
    assert not cycles, f"import cycles: {cycles}"


def test_the_top_level_holds_at_most_14_names():
    names = sorted(p.name for p in PKG.iterdir() if p.name not in PACKAGE_DATA and p.name != "__pycache__")
    assert len(names) <= 14, names


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("root", ["trainforge", "hydra_plugins"])
def test_files_and_functions_stay_short(root):
    files = [p for p in (SRC / root).rglob("*.py")]
    long_files = [f"{p.relative_to(SRC)}: {len(p.read_text().splitlines())}" for p in files
                  if len(p.read_text().splitlines()) > 400]
    lengths = sorted((n, f"{p.relative_to(SRC)}:{name}") for p in files for name, n in _functions(p))
    long_functions = [f"{where}: {n} lines" for n, where in lengths if n > 60]
    p90 = lengths[int(len(lengths) * 0.9)][0]
    assert not long_files, long_files
    assert not long_functions, long_functions
    assert p90 <= 25, f"p90 of function lengths is {p90}"


@pytest.mark.slow
def test_a_wheel_carries_every_config(tmp_path):
    """The configs are package data: a wheel holds each YAML of src/trainforge/conf."""
    import zipfile

    from conftest import build_wheel

    wheel = build_wheel(tmp_path)
    held = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("trainforge/conf/")}
    wanted = {f"trainforge/{p.relative_to(PKG).as_posix()}" for p in (PKG / "conf").rglob("*.yaml")}
    assert wanted and wanted <= held, sorted(wanted - held)
