"""tiffin: take MLflow, scikit-learn and PyTorch models into production serving.

Importing tiffin is cheap: framework modules and everything heavy load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from tiffin._version import __version__
from tiffin.exceptions import TiffinError
from tiffin.tag import Tag

if TYPE_CHECKING:
    from tiffin import exceptions, io, models, ray
    from tiffin.building.builder import build
    from tiffin.client import AsyncClient, Client
    from tiffin.frameworks import mlflow, picklable_model, pytorch, sklearn
    from tiffin.runner.runnable import Runnable
    from tiffin.runner.runner import Runner
    from tiffin.serving.service import Service

# attribute -> module that provides it (a module itself when the names match)
_LAZY: dict[str, str] = {
    "AsyncClient": "tiffin.client",
    "Client": "tiffin.client",
    "Runnable": "tiffin.runner.runnable",
    "Runner": "tiffin.runner.runner",
    "Service": "tiffin.serving.service",
    "build": "tiffin.building.builder",
    "exceptions": "tiffin.exceptions",
    "io": "tiffin.io",
    "mlflow": "tiffin.frameworks.mlflow",
    "models": "tiffin.models",
    "picklable_model": "tiffin.frameworks.picklable_model",
    "pytorch": "tiffin.frameworks.pytorch",
    "ray": "tiffin.ray",
    "sklearn": "tiffin.frameworks.sklearn",
}


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'tiffin' has no attribute {name!r}")
    module = importlib.import_module(target)
    value = module if target.rsplit(".", 1)[-1] == name else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "AsyncClient",
    "Client",
    "Runnable",
    "Runner",
    "Service",
    "Tag",
    "TiffinError",
    "__version__",
    "build",
    "exceptions",
    "io",
    "mlflow",
    "models",
    "picklable_model",
    "pytorch",
    "ray",
    "sklearn",
]
