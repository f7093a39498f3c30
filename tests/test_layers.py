"""The import graph of ``src/spatialadv`` points one way: no upward import, no circle (DESIGN.md, "layers that point one way").

Every ``import`` / ``from ... import`` of every module is read with :mod:`ast` —
at the top of the file *and* inside functions, classes and ``if`` blocks (an
import inside a function still ties the two modules together) — relative
imports resolved, and mapped to the module it loads. Importing
``a.b.c`` from outside package ``a.b`` also runs ``a/b/__init__.py``, so
that package is an import target too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "spatialadv"

#: The layers, top to bottom. A module may import its own layer (without a circle) and the layers below it.
#: ``attention`` (Grad-CAM maps of a model) sits with the pure tensor functions; ``optim`` (L-BFGS), ``viz``
#: (figures), ``distributed``, ``references``, ``_validation``, ``_config`` (Config dataclasses → CLI options) and ``_paths`` (checks of
#: user-given paths) are leaves that import no other layer.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli", "__main__"),
    ("experiments", "audit"),
    ("training",),
    ("defenses", "certify"),
    ("eval",),
    ("attacks",),
    ("models",),
    ("threats", "ops", "data", "attention"),
    ("viz", "distributed", "references", "_validation", "_config", "_paths", "_deprecated", "optim"),
)


def module_name(path: Path, src: Path = SRC) -> str:
    """``src/spatialadv/a/b.py`` → ``spatialadv.a.b``; a package's ``__init__.py`` → the package."""
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover(src: Path = SRC) -> dict[str, Path]:
    """Every module of the package: name → file."""
    return {module_name(p, src): p for p in sorted((src / ROOT).rglob("*.py"))}


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _known(name: str, modules: set[str]) -> str | None:
    """The longest prefix of ``name`` that is a module of the package (None: not ours)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in modules:
            return cand
    return None


def imports(source: str, module: str, is_package: bool, modules: set[str]) -> list[tuple[str, int, str]]:
    """The package's modules that ``source`` (the text of ``module``) imports: ``(target, line, statement)``.

    Every import statement counts, at any depth. ``from X import n`` imports
    ``X`` and, when ``X.n`` is a module, ``X.n``. Importing a module also runs
    the ``__init__`` of each package above it that does not contain the
    importer.
    """
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            named = [(_known(a.name, modules), False) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node, module, is_package)
            # ``from X import n``: the module X.n, or the name n that X's __init__ defines (X itself, even
            # when X is the importer's own package: ``from . import f`` runs and needs that __init__)
            named = [(f"{base}.{a.name}", False) if f"{base}.{a.name}" in modules else (_known(base, modules), True)
                     for a in node.names]
        else:
            continue
        text = ast.unparse(node)
        for target, explicit in named:
            if target is None:
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):  # the target and the packages above it (not the root package)
                t = ".".join(parts[:i])
                if t == module:
                    continue
                if t == target and explicit or not module.startswith(t + "."):
                    out.append((t, node.lineno, text))
    return out


def layer_of(module: str) -> int | None:
    """Index of the module's layer in :data:`LAYERS` (0 = top); None for the root package."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    for i, names in enumerate(LAYERS):
        if parts[1] in names:
            return i
    raise AssertionError(f"{module} is in no layer of LAYERS: place it there")


def graph(src: Path = SRC) -> dict[str, dict[str, tuple[int, str]]]:
    """module → {imported module → (line, statement) of the first such import}."""
    mods = discover(src)
    names = set(mods)
    g: dict[str, dict[str, tuple[int, str]]] = {m: {} for m in mods}
    for m, path in mods.items():
        for target, line, text in imports(path.read_text(encoding="utf-8"), m, path.name == "__init__.py", names):
            g[m].setdefault(target, (line, text))
    return g


def upward(g: dict[str, dict[str, tuple[int, str]]]) -> list[str]:
    """Each import from a lower layer to a higher one, as ``file:line: statement (layer → layer)``."""
    bad = []
    for m, targets in g.items():
        lm = layer_of(m)
        for t, (line, text) in targets.items():
            lt = layer_of(t)
            if lm is not None and lt is not None and lt < lm:
                bad.append(f"{m} line {line}: `{text}` imports {t} ({'/'.join(LAYERS[lm])} → {'/'.join(LAYERS[lt])}, upward)")
    return sorted(bad)


def circles(g: dict[str, dict[str, tuple[int, str]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # recursive: the package has a few hundred modules at most
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, {}):
            if w not in index:
                visit(w)
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


def _describe(g, comp: list[str]) -> str:
    inside = set(comp)
    edges = [f"  {m} line {line}: `{text}` → {t}" for m in comp for t, (line, text) in g[m].items() if t in inside]
    return "circle of " + ", ".join(comp) + ":\n" + "\n".join(edges)


# ------------------------------------------------------------------------------------------------ the package
def test_every_module_has_a_layer():
    for m in discover():
        layer_of(m)  # raises, naming the module, when a new top-level module or package is not placed


def test_no_import_points_upward():
    bad = upward(graph())
    assert not bad, "imports from a lower layer to a higher one:\n" + "\n".join(bad)


def test_no_circle_of_imports():
    g = graph()
    found = circles(g)
    assert not found, "\n".join(_describe(g, c) for c in found)


# ------------------------------------------------------------------------------------------------ self-tests
def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp_path / ROOT / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path


def test_a_synthetic_upward_import_inside_a_function_is_flagged(tmp_path):
    src = _fake_package(tmp_path, {
        "__init__.py": "",
        "models/__init__.py": "",
        "models/cache.py": "def f():\n    from ..training.loop import train_model\n",
        "training/__init__.py": "",
        "training/loop.py": "from ..models import cache\n",
    })
    bad = upward(graph(src))
    assert len(bad) == 2 and bad[0].startswith("spatialadv.models.cache line 2: `from ..training.loop import train_model`")
    assert "spatialadv.training (models → training, upward)" in bad[0] and "spatialadv.training.loop" in bad[1]


def test_a_synthetic_circle_is_flagged_and_a_line_is_not(tmp_path):
    src = _fake_package(tmp_path, {
        "__init__.py": "",
        "ops/__init__.py": "",
        "ops/a.py": "from . import b\n",
        "ops/b.py": "import spatialadv.ops.c\n",
        "ops/c.py": "def f():\n    from .a import x\n",
        "data/__init__.py": "from ..ops.b import y\n",
    })
    g = graph(src)
    assert circles(g) == [["spatialadv.ops.a", "spatialadv.ops.b", "spatialadv.ops.c"]]
    assert "spatialadv.ops.c line 2: `from .a import x` → spatialadv.ops.a" in _describe(g, circles(g)[0])
    assert not upward(g)  # ops and data share a layer


def test_relative_imports_resolve_and_parent_packages_count():
    mods = {"spatialadv.models", "spatialadv.models.artifacts", "spatialadv.training", "spatialadv.training.specs",
            "spatialadv.distributed"}
    got = imports("from .. import distributed\nfrom ..models.artifacts import load_or_build\n",
                  "spatialadv.training.specs", False, mods)
    assert {t for t, _, _ in got} == {"spatialadv.distributed", "spatialadv.models", "spatialadv.models.artifacts"}
    inside = imports("from . import specs\n", "spatialadv.training", True, mods)
    assert [t for t, _, _ in inside] == ["spatialadv.training.specs"]


@pytest.mark.parametrize("module, layer", [("spatialadv.cli", 0), ("spatialadv.training.specs", 2),
                                           ("spatialadv.certify.penalties", 3), ("spatialadv.ops.flow_smoothness", 7)])
def test_layer_of(module, layer):
    assert layer_of(module) == layer
    with pytest.raises(AssertionError, match="spatialadv.newthing is in no layer"):
        layer_of("spatialadv.newthing")
