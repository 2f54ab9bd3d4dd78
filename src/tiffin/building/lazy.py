"""While ``tiffin build`` imports the service: installed packages load when first used.

A build imports the service to check that it loads and to record its APIs; it does not call
the model. Most of that import's time goes to the packages a service imports at its top
(``import torch``, ``import mlflow``: seconds) that its import-time code never touches. So
during the build's import, each top-level package that is not tiffin's, not the standard
library's, not already imported and not the user's own code (files under the build context)
is *found* at once -- a package that is not installed fails the build as before, at the
user's line -- but its code runs only when something touches it (``importlib.util.
LazyLoader``): ``from torch import nn``, ``np.float32`` or a runner that reads the package
load it then, in full. Extension modules, namespace packages and packages found by custom
import hooks load as usual. ``tiffin serve`` imports everything as usual.

The cost: a package that is installed but fails its own import passes the build unless the
service's import-time code uses it; it fails ``tiffin serve`` (and the build environment is
not the one a built tiffin runs in: that comes from ``env/``).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["is_lazy", "lazy_packages", "module_file"]

_EAGER = frozenset({"tiffin", "__main__"})


class _LazyFinder(importlib.abc.MetaPathFinder):
    """Finds top-level third-party packages as :mod:`importlib`'s path finder does, and
    wraps their loader in a ``LazyLoader``."""

    def __init__(self, own: str) -> None:
        self.own = own

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if (
            path is not None  # a submodule: its package is loaded by now
            or fullname in sys.modules
            or fullname in sys.stdlib_module_names
            or fullname in _EAGER
        ):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname)
        if spec is None or spec.origin is None or spec.loader is None:
            return None  # not found (the usual error follows), or a namespace package
        if not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None  # an extension module: it runs when it is created, laziness or not
        if os.path.realpath(spec.origin).startswith(self.own):
            return None  # the user's own code runs now
        spec.loader = importlib.util.LazyLoader(spec.loader)
        return spec


@contextlib.contextmanager
def lazy_packages(build_ctx: Path) -> Iterator[None]:
    """Installed packages imported meanwhile load when first used (see the module docstring)."""
    finder = _LazyFinder(str(build_ctx) + os.sep)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


def is_lazy(module: Any) -> bool:
    """Whether ``module`` is a package that has not loaded yet (asking does not load it)."""
    return type(module).__name__ == "_LazyModule"


def module_file(module: Any) -> str | None:
    """A module's ``__file__``, read without loading a lazy one."""
    try:
        namespace = object.__getattribute__(module, "__dict__")
    except AttributeError:
        return None
    file = namespace.get("__file__")
    return file if isinstance(file, str) else None
