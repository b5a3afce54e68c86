"""The package's layout rules, checked from the source: no import cycles, ``web`` never imports ``cli``.

Every import counts: module level, lazy ones inside functions, ``TYPE_CHECKING`` ones and
relative ones. ``from pkg import name`` depends on ``pkg.name`` when that is a module, else on
``pkg``. A package's ``__init__`` that runs because a submodule is imported is not counted as
an edge (every submodule would otherwise form a cycle with its package).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pulse_sr

SRC = Path(pulse_sr.__file__).resolve().parent


def modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root`` (the package ``package``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that module ``name`` (file ``path``) imports anywhere."""
    is_pkg = path.name == "__init__.py"
    here = name if is_pkg else name.rpartition(".")[0]
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                deps.add(_known_prefix(alias.name, known))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                deps.add(full if full in known else _known_prefix(target, known))
    deps.discard("")
    deps.discard(name)  # `from pkg import x` inside pkg/__init__ resolving to itself
    return deps


def _known_prefix(dotted: str, known: dict[str, Path]) -> str:
    """The longest prefix of ``dotted`` that is a known module ("" if none)."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in known:
            return candidate
    return ""


def graph(root: Path, package: str) -> dict[str, set[str]]:
    known = modules(root, package)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    counter = 0
    for start in sorted(g):
        if start in index:
            continue
        work = [(start, iter(sorted(g[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(g.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = set()
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    comp.add(top)
                    if top == node:
                        break
                if len(comp) > 1:
                    found.append(comp)
    return found


def test_no_import_cycles() -> None:
    found = cycles(graph(SRC, "pulse_sr"))
    assert found == [], f"import cycles (lazy imports included): {[sorted(c) for c in found]}"


def test_web_never_imports_cli() -> None:
    g = graph(SRC, "pulse_sr")
    bad = {m: sorted(d for d in deps if d == "pulse_sr.cli" or d.startswith("pulse_sr.cli."))
           for m, deps in g.items() if m.startswith("pulse_sr.web")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_checker_finds_planted_cycles(tmp_path: Path) -> None:
    """The checker itself can fail: a lazy relative import cycle, a TYPE_CHECKING one and a
    ``from pkg import module`` one are each found; an acyclic tree passes."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "b.py").write_text("import os\nfrom pkg.c import thing\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    (pkg / "d.py").write_text("from pkg import e\n")
    (pkg / "e.py").write_text("import pkg.d as d\n")
    (pkg / "f.py").write_text("from pkg import a\n")
    found = sorted(sorted(c) for c in cycles(graph(pkg, "pkg")))
    assert found == [["pkg.a", "pkg.c", "pkg.sub.b"], ["pkg.d", "pkg.e"]]
    (pkg / "c.py").write_text("import json\n")
    (pkg / "e.py").write_text("")
    assert cycles(graph(pkg, "pkg")) == []
