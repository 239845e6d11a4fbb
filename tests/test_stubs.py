"""fastlm/_core.pyi stays true to the extension: every exported function, with its parameters
and defaults as bound in src/cpp/bindings.cpp. A new op added without its stub fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import fastlm
from fastlm import _core

STUB = Path(fastlm.__file__).parent / "_core.pyi"  # installed beside the package's modules


def stub_functions(kind=ast.FunctionDef):
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    return {node.name: node for node in tree.body if isinstance(node, kind)}


def exported_functions():
    return sorted(
        name
        for name in dir(_core)
        if not name.startswith("_") and callable(getattr(_core, name)) and not isinstance(getattr(_core, name), type)
    )


def exported_classes():
    return sorted(name for name in dir(_core) if not name.startswith("_") and isinstance(getattr(_core, name), type))


def split_top_level(text):
    """Split a parameter list at the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def bound_parameters(name):
    """[(name, default or None)] from the signature pybind11 writes first in the docstring."""
    first_line = getattr(_core, name).__doc__.splitlines()[0]
    match = re.fullmatch(rf"{name}\((.*)\) -> .*", first_line)
    assert match, f"unexpected pybind11 signature line: {first_line!r}"
    parameters = []
    for part in split_top_level(match.group(1)):
        head, _, default = part.partition(" = ")
        parameters.append((head.split(":")[0].strip(), ast.literal_eval(default) if default else None))
    return parameters


def stub_parameters(node):
    args = node.args.args
    defaults = [None] * (len(args) - len(node.args.defaults)) + [ast.literal_eval(d) for d in node.args.defaults]
    return [(a.arg, d) for a, d in zip(args, defaults)]


def test_the_stub_is_installed_with_the_package():
    assert STUB.is_file(), f"{STUB} is missing: the wheel must ship it beside _core"


def test_every_exported_function_has_a_stub_and_no_stub_is_stale():
    stubs = stub_functions()
    missing = [name for name in exported_functions() if name not in stubs]
    assert not missing, f"add to python/fastlm/_core.pyi: {', '.join(missing)}"
    stale = [name for name in stubs if name not in exported_functions()]
    assert not stale, f"python/fastlm/_core.pyi describes functions _core does not export: {', '.join(stale)}"


def test_every_exported_class_has_a_stub_with_its_methods():
    stubs = stub_functions(ast.ClassDef)
    assert sorted(stubs) == exported_classes()
    for name, node in stubs.items():
        methods = {m.name for m in node.body if isinstance(m, ast.FunctionDef)} - {"__init__"}
        public = {m for m in dir(getattr(_core, name)) if not m.startswith("_")}
        assert methods == public, f"{name}: stub methods {sorted(methods)}, bound {sorted(public)}"


@pytest.mark.parametrize("name", exported_functions())
def test_stub_parameters_match_the_binding(name):
    assert stub_parameters(stub_functions()[name]) == bound_parameters(name)
