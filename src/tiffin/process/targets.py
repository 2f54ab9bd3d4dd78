"""Finding the Service a ``tiffin serve`` target names.

A target is ``module:attr``, ``path/to/file.py:attr``, or a module (or file) holding exactly
one ``tiffin.Service``. An importable module is tried first.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from tiffin.exceptions import InvalidArgument, NotFound, UserCodeFailed
from tiffin.serving.service import Service

__all__ = ["module_name_for", "resolve_service"]


def module_name_for(path: Path) -> str:
    """The module name a service file is imported under: the same in every process (API
    workers and runner processes unpickle each other's instances of its classes by it)."""
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    return f"_tiffin_service_{path.stem if path.stem.isidentifier() else 'file'}_{digest}"


def _import_file(path: Path, target: str) -> Any:
    module_name = module_name_for(path)
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise InvalidArgument(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    sys.path.insert(0, str(path.parent))
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise UserCodeFailed.from_exception(f"cannot import service {target!r}", exc) from exc
    return module


def resolve_service(target: str, cwd: str | os.PathLike[str] | None = None) -> Service:
    """The Service named by ``module:attr``, ``path/to/file.py:attr``, or a module holding one.

    An importable module is tried first; built tiffins are looked up only when none matches.
    """
    module_part, _, attr = target.partition(":")
    base = Path(cwd or os.getcwd())
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    if module_part.endswith(".py") or "/" in module_part:
        path = (base / module_part).resolve()
        if not path.is_file():
            raise NotFound(f"service file {path} does not exist")
        module = _import_file(path, target)
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as exc:
            if exc.name and module_part.startswith(exc.name):
                raise NotFound(
                    f"cannot find service {target!r}: no module named {module_part!r} "
                    f"(looked in {base} and on sys.path); use module:attr or path/to/file.py:attr"
                ) from exc
            raise UserCodeFailed.from_exception(f"cannot import service {target!r}", exc) from exc
        except Exception as exc:
            raise UserCodeFailed.from_exception(f"cannot import service {target!r}", exc) from exc
    if attr:
        service = getattr(module, attr, None)
        if service is None:
            raise NotFound(f"module {module_part!r} has no attribute {attr!r}")
    else:
        found = [v for v in vars(module).values() if isinstance(v, Service)]
        if len(found) != 1:
            raise InvalidArgument(
                f"module {module_part!r} holds {len(found)} tiffin.Service objects; "
                "name one with module:attr"
            )
        service = found[0]
    if not isinstance(service, Service):
        raise InvalidArgument(f"{target!r} is a {type(service).__name__}, not a tiffin.Service")
    return service
