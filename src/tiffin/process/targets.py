"""Finding the Service a ``tiffin serve`` target names: one rule for every command that takes
a target (:func:`resolve_target`).

* A ``.py`` path (``path/to/file.py:attr``), or an importable module with that attribute
  (``module:attr``, or a module holding exactly one ``tiffin.Service``), is a service.
* Otherwise the target is a built tiffin's tag, ``NAME[:VERSION]`` (:mod:`tiffin.store.tiffins`).
* ``force="service"`` / ``force="tiffin"`` (``--service`` / ``--tiffin``) skip the guess.

A module is imported to look for the attribute only when a built tiffin of that very tag
exists too; otherwise importability decides, and the module is imported once, to serve it.
A built tiffin is served from its own ``src/`` (the working directory and the first entry of
``sys.path``) and ``models/`` (the only models its service's lookups see), in any working
directory and in every process of ``--workers N`` (:func:`load_built`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tiffin.exceptions import InvalidArgument, InvalidTag, NotFound, UserCodeFailed
from tiffin.serving.service import Service
from tiffin.store import tiffins
from tiffin.store.models import use_bundled_models
from tiffin.tag import Tag

__all__ = [
    "Target",
    "load_built",
    "module_name_for",
    "resolve_module",
    "resolve_service",
    "resolve_target",
]


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

    Built tiffins are :func:`resolve_target`'s; this imports a service.
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
        module = resolve_module(module_part, target, base)
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


@dataclass(frozen=True)
class Target:
    """What a target names: a service (``service`` is the target as given) or a built tiffin."""

    service: str | None = None
    tiffin: tiffins.BuiltTiffin | None = None


def _importable(module_part: str, base: Path) -> bool:
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    if module_part in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module_part) is not None
    except (ImportError, ValueError):  # a parent package that is missing, a malformed name
        return False


def _built(target: str) -> tiffins.BuiltTiffin | None:
    try:
        return tiffins.get(Tag.from_str(target))
    except (NotFound, InvalidTag):
        return None


def resolve_target(
    target: str,
    *,
    force: Literal["service", "tiffin"] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> Target:
    """Decide what ``target`` names (see the module docstring); a built tiffin is looked up."""
    if force == "tiffin":
        return Target(tiffin=tiffins.get(target))
    module_part, _, attr = target.partition(":")
    base = Path(cwd or os.getcwd())
    if force == "service" or module_part.endswith(".py") or "/" in module_part:
        return Target(service=target)
    if _importable(module_part, base):
        built = _built(target) if attr else None
        if built is None:
            return Target(service=target)
        # both exist: the module decides, by having the attribute or not
        module = resolve_module(module_part, target, base)
        return Target(service=target) if hasattr(module, attr) else Target(tiffin=built)
    built = _built(target)
    if built is not None:
        return Target(tiffin=built)
    raise NotFound(
        f"cannot find {target!r}: no module named {module_part!r} (looked in {base} and on "
        "sys.path; a service is module:attr or path/to/file.py:attr) and no built tiffin of "
        "that tag (run `tiffin list`)"
    )


def resolve_module(module_part: str, target: str, base: Path) -> Any:
    """Import ``module_part`` (a module name) for ``target``; the user's errors, their frames."""
    if str(base) not in sys.path:
        sys.path.insert(0, str(base))
    try:
        return importlib.import_module(module_part)
    except ModuleNotFoundError as exc:
        if exc.name and module_part.startswith(exc.name):
            raise NotFound(
                f"cannot find service {target!r}: no module named {module_part!r} "
                f"(looked in {base} and on sys.path); use module:attr or path/to/file.py:attr"
            ) from exc
        raise UserCodeFailed.from_exception(f"cannot import service {target!r}", exc) from exc
    except Exception as exc:
        raise UserCodeFailed.from_exception(f"cannot import service {target!r}", exc) from exc


def load_built(path: str | os.PathLike[str], *, chdir: bool = False) -> Service:
    """The service of the built tiffin at ``path``, imported from its ``src/`` with its
    ``models/`` as the only models lookups see. ``chdir``: make ``src/`` the working
    directory first (a server process: the service's relative paths mean what they meant
    where it was written)."""
    built = tiffins.BuiltTiffin.from_path(Path(path), check_place=False)
    use_bundled_models(built.models_dir, str(built.tag))
    src = str(built.src_dir)
    if chdir:
        os.chdir(src)
    if src in sys.path:
        sys.path.remove(src)
    sys.path.insert(0, src)
    return resolve_service(built.info.service, cwd=src)
