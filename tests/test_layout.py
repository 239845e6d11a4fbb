"""The Python package's module layout (docs/architecture.md): no import cycle, counting
imports anywhere in a module (a function-local import hides a cycle from Python, not from
this test), model.py free of training and files, and the architecture's table of modules
true to the code: every module in it, each importing just what its row says, all of it
from rows above."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import fastlm

PACKAGE = Path(fastlm.__file__).resolve().parent
ARCHITECTURE = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


def fastlm_imports(path):
    """The fastlm modules a source file imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "fastlm":
            if node.module == "fastlm":  # from fastlm import model_dir, _core, ...
                found.update(f"fastlm.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "fastlm")
    return found


def import_graph():
    modules = {f"fastlm.{p.stem}": p for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    graph = {}
    for name, path in modules.items():
        # "import fastlm" / the package's public names: an edge to every module __init__ imports
        targets = fastlm_imports(path)
        if "fastlm" in targets:
            targets = (targets - {"fastlm"}) | fastlm_imports(PACKAGE / "__init__.py")
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def test_no_import_cycle():
    graph = import_graph()
    done, on_path = set(), []

    def visit(module):
        if module in on_path:
            cycle = on_path[on_path.index(module) :] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        on_path.append(module)
        for target in sorted(graph[module]):
            visit(target)
        on_path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_model_imports_neither_training_nor_files():
    imported = fastlm_imports(PACKAGE / "model.py")
    assert not imported & {"fastlm.training", "fastlm.model_dir", "fastlm.lstmlm", "fastlm"}, imported


def test_fit_and_save_are_defined_once():
    from fastlm import lstmlm, model_dir, training

    assert lstmlm.LSTMLM.fit is training.fit
    assert lstmlm.LSTMLM.save is model_dir.save
    assert "seq_len" in training.fit.__doc__


def module_imports():
    """Every module of the package (short names; the package itself is "fastlm", datasets/ is
    "datasets") -> the short names of the package's modules it imports."""
    paths = {p.stem: p for p in PACKAGE.glob("*.py")}
    paths["fastlm"] = paths.pop("__init__")
    paths["datasets"] = PACKAGE / "datasets" / "__init__.py"
    return {
        name: {target.split(".")[1] if "." in target else target for target in fastlm_imports(path)} - {name}
        for name, path in paths.items()
    }


def documented_layout():
    """docs/architecture.md's table, row by row: (the modules the row names, the modules its
    last column says they import), parenthesised remarks left out."""
    rows = []
    for line in ARCHITECTURE.read_text(encoding="utf-8").splitlines():
        if line.startswith("| `"):
            first, *_, last = line.strip().strip("|").split("|")
            names = [re.sub(r"\.py$|/$", "", n).replace("__init__", "fastlm") for n in re.findall(r"`([^`]+)`", first)]
            imports = set(re.findall(r"\w+", re.sub(r"\([^)]*\)", "", last))) - {"—"}
            rows.append((names, imports))
    return rows


def test_the_architecture_table_names_every_module_once():
    named = [name for names, _ in documented_layout() for name in names]
    assert sorted(named) == sorted({*module_imports(), "_core"})


def test_every_module_imports_what_the_architecture_says_from_rows_above():
    imports, above = module_imports(), set()
    for names, documented in documented_layout():
        actual = set().union(*(imports.get(name, set()) for name in names))
        assert actual == documented, f"{', '.join(names)} imports {sorted(actual)}, the table says {sorted(documented)}"
        assert actual <= above, f"{', '.join(names)} imports {sorted(actual - above)}, listed below it"
        above.update(names)
