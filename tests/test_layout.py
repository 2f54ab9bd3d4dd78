"""The package's shape: module size, ``__all__``, layer docstrings, and the error tree.

The layers contract itself (imports point down) is import-linter's, run by ``make lint``.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

import tiffin
from tiffin import exceptions

SRC = Path(tiffin.__file__).resolve().parent
MODULES = sorted(SRC.rglob("*.py"))
MAX_LINES = 400

#: what may be raised that is not a TiffinError subclass, and why
FOREIGN_RAISES = {
    "AttributeError": "a module's or object's __getattr__ must raise it",
    "TypeError": "orjson's default= hook signals 'no JSON form' with it",
    "ValueError": "checks inside a function that re-raises it as a TiffinError, and pydantic",
    "RecursionError": "caught where it is raised (a cycle of JSON schema references)",
    "RuntimeError": "deadline() used outside a task: a programming error, not an input",
    "TimeoutError": "the request deadline follows asyncio.timeout's contract",
    "ConnectionError": "the wire's corrupt-stream signal, caught by the connection",
    "ClientDisconnect": "starlette's own signal that the client went away",
    "Expired": "the request deadline passed; the pipeline answers it with a 504",
    "BadParameter": "click's usage errors on the command line",
    "UsageError": "click's usage errors on the command line",
    "AssertionError": "unreachable code",
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_is_over_400_lines(path: Path) -> None:
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(SRC)} has {lines} lines; split it by concept"


PUBLIC = [p for p in MODULES if not p.name.startswith("_") or p.name == "__init__.py"]


@pytest.mark.parametrize("path", PUBLIC, ids=lambda p: str(p.relative_to(SRC)))
def test_every_public_module_declares_all_and_it_resolves(path: Path) -> None:
    module = importlib.import_module(_module_name(path))
    names = getattr(module, "__all__", None)
    assert isinstance(names, list), f"{module.__name__} has no __all__"
    assert len(set(names)) == len(names), f"{module.__name__}.__all__ repeats a name"
    for name in names:
        assert hasattr(module, name), f"{module.__name__}.__all__ names missing {name!r}"


LAYERS = ["store", "frameworks", "runner", "io", "serving", "process", "building", "ray"]


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_says_what_lives_there_and_what_it_may_import(layer: str) -> None:
    doc = importlib.import_module(f"tiffin.{layer}").__doc__ or ""
    assert "May import" in doc, f"tiffin.{layer}'s docstring states no rule"
    assert len(doc.splitlines()) >= 3


def _tiffin_errors() -> list[type[exceptions.TiffinError]]:
    return [
        value
        for value in vars(exceptions).values()
        if inspect.isclass(value) and issubclass(value, exceptions.TiffinError)
    ]


def test_the_error_tree_in_the_docstring_names_every_error() -> None:
    doc = exceptions.__doc__ or ""
    for error in _tiffin_errors():
        assert f" {error.__name__} " in doc or f"── {error.__name__}" in doc or (
            error is exceptions.TiffinError and doc.count("TiffinError") >= 1
        ), f"{error.__name__} is missing from the tree in tiffin.exceptions' docstring"
        assert error.__doc__, f"{error.__name__} has no docstring"


def _raised_names(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            func = node.exc.func
            if isinstance(func, ast.Name) and func.id[:1].isupper():
                found.append((func.id, node.lineno))
    return found


def test_every_raised_error_is_a_named_tiffin_error_or_a_listed_exception() -> None:
    tiffin_errors = {error.__name__ for error in _tiffin_errors()} - {"TiffinError"}
    bad = []
    for path in MODULES:
        for name, line in _raised_names(path):
            if name not in tiffin_errors and name not in FOREIGN_RAISES:
                bad.append(f"{path.relative_to(SRC)}:{line} raises {name}")
    assert not bad, "raise a named TiffinError subclass instead:\n" + "\n".join(bad)


def test_the_check_above_sees_raises() -> None:
    """The scan finds what it looks for (it is not vacuously true)."""
    names = {name for path in MODULES for name, _ in _raised_names(path)}
    assert {"InvalidArgument", "NotFound", "CorruptEntry"} <= names
    assert "TiffinError" not in names  # the base class is never raised bare
