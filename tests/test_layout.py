"""The Python package's module layout (docs/architecture.md): no import cycle, counting
imports anywhere in a module (a function-local import hides a cycle from Python, not from
this test), and model.py free of training and files."""

from __future__ import annotations

import ast
from pathlib import Path

import fastlm

PACKAGE = Path(fastlm.__file__).resolve().parent


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
