"""The framework layer: one module per framework on one contract, and their registry.

Each framework module (``tiffin.frameworks.sklearn``, ``.picklable_model``, ``.pytorch``,
``.mlflow``) offers ``save_model`` (``import_model`` for MLflow), ``load_model``, ``get`` and
``get_runnable``: how to write a model into the store, read it back, and call it through a
runner. PyTorch's files, its runnable and what runs around a module on a device are
``pytorch_formats``, ``pytorch_runnable`` and ``pytorch_runtime``, shared with MLflow's
native PyTorch flavor. ``model.yaml`` records ``module: tiffin.<framework>``; it is resolved
through the fixed table below, never imported as an arbitrary string, so a hand-edited store
cannot make tiffin import code of its choosing.

May import: the runner layer, the store layer, ``tag``, ``config``, ``batch_settings``,
``device_settings``, ``exceptions``; ML libraries only inside functions (they are optional extras).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tiffin.runner.runner import Runner
from tiffin.store.models import FRAMEWORKS, check_module

if TYPE_CHECKING:
    from tiffin.runner.runnable import Runnable
    from tiffin.store.models import Model

__all__ = ["REGISTRY", "load", "runnable_for", "runner_for"]

#: framework name (model.yaml records ``module: tiffin.<name>``) -> the module that implements it
REGISTRY: dict[str, str] = {name: f"tiffin.frameworks.{name}" for name in FRAMEWORKS}


def load(module: str) -> ModuleType:
    """The framework module for ``tiffin.<framework>`` (or a bare framework name)."""
    return importlib.import_module(REGISTRY[check_module(module)])


def runnable_for(model: Model) -> type[Runnable]:
    """The Runnable class that runs ``model``, from the framework that saved it."""
    runnable: type[Runnable] = load(model.info.module).get_runnable(model)
    return runnable


def runner_for(
    model: Model,
    *,
    name: str | None = None,
    max_batch_size: int | None = None,
    max_latency_ms: float | None = None,
    method_configs: Mapping[str, Mapping[str, Any]] | None = None,
    embedded: bool = False,
    device: str | None = None,
    precision: str | None = None,
) -> Runner:
    """What ``model.to_runner()`` returns: a Runner whose methods are the model's signatures."""
    return Runner(
        runnable_for(model),
        name=name or model.tag.name,
        models=[model],
        max_batch_size=max_batch_size,
        max_latency_ms=max_latency_ms,
        method_configs=method_configs,
        embedded=embedded,
        device=device,
        precision=precision,
    )
