"""Runnables for imported MLflow models: pyfunc (exact MLflow semantics) and native flavors.

The pyfunc runnable gives the model what its signature declares, whatever container the
caller used: :class:`~tiffin.frameworks.mlflow.inputs.InputSchema` converts lists, dicts of
columns, ndarrays and DataFrames exactly (``runner.predict.run(nested_list)`` on a float32
tensor signature, a dict of columns on a model logged from a DataFrame); without a signature a
dict of columns or records becomes a DataFrame and nested lists an ndarray. What tiffin
converted already meets the schema, so the model is called without MLflow checking it a second
time (unless ``params`` are passed or the model declares a parameter schema, which MLflow
checks as usual); what tiffin leaves to MLflow (Array/Object/Map columns, type-hint
signatures, other containers) goes through MLflow's ``predict`` unchanged.

A model with the ``pytorch`` flavor runs on its runner's device (``auto`` by default: a GPU
when one is visible), natively (``flavor="native"``/``"pytorch"``: the module itself, every
declared method, :mod:`~tiffin.frameworks.pytorch_runnable`) or as pyfunc (MLflow's
``predict`` with the device as its ``model_config``): :mod:`~tiffin.frameworks.mlflow.pytorch`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tiffin.device_settings import CPU, GPU_RESOURCE
from tiffin.exceptions import InvalidArgument
from tiffin.frameworks.mlflow.inputs import FALLBACK, InputSchema, unsigned
from tiffin.frameworks.mlflow.loading import load_model, load_native
from tiffin.frameworks.mlflow.pytorch import (
    TORCH_FLAVOR,
    is_torch_model,
    load_native_torch,
    load_pyfunc_torch,
    signature_example,
)
from tiffin.frameworks.pytorch_runnable import torch_runnable
from tiffin.runner.runnable import Runnable, model_runnable

if TYPE_CHECKING:
    from tiffin.store.models import Model

__all__ = ["as_model_input", "get_runnable"]


def as_model_input(data: Any, schema: InputSchema | None) -> Any:
    """``data`` as the model's input, or :data:`FALLBACK` where MLflow must read it."""
    if schema is None:
        if isinstance(data, list | dict):
            return unsigned(data)
        return FALLBACK
    if schema.needs_mlflow:
        return FALLBACK
    return schema.convert(data)


def _checked_once(pyfunc_model: Any) -> Callable[[Any], Any] | None:
    """The model's own predict function, for inputs tiffin has already made what the
    signature declares (MLflow would only check them again); None where MLflow must check
    something itself (a parameter schema, a signature from type hints) or where this MLflow
    has no such function."""
    predict = getattr(pyfunc_model, "_predict_fn", None)
    metadata = getattr(pyfunc_model, "metadata", None)
    if predict is None or metadata is None or metadata.get_params_schema() is not None:
        return None
    if getattr(metadata, "_is_signature_from_type_hint", bool)():
        return None
    return predict


def get_runnable(model: Model) -> type[Runnable]:
    native = model.info.options.get("native_flavor")
    if native == TORCH_FLAVOR:
        return torch_runnable(
            model,
            lambda device: load_native_torch(model, device),
            "mlflow_pytorch",
            example=lambda: signature_example(model),
        )
    if native:
        return model_runnable(model, load_native, "mlflow")
    on_gpu = is_torch_model(model)

    class MlflowPyfuncRunnable(Runnable):
        SUPPORTED_RESOURCES = (GPU_RESOURCE, CPU) if on_gpu else (CPU,)
        SUPPORTS_CPU_MULTI_THREADING = True

        def __init__(self, device: str = CPU) -> None:
            self.device = device
            self.model = load_pyfunc_torch(model, device) if on_gpu else load_model(model)
            self.schema = InputSchema.from_model(model)
            self.accepts_params = "params" in inspect.signature(self.model.predict).parameters
            self.direct = _checked_once(self.model) if self.schema is not None else None

        def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
            converted = as_model_input(data, self.schema)
            if converted is not FALLBACK:
                if self.direct is not None and not params:
                    return self.direct(converted)
                data = converted
            if self.accepts_params:
                return self.model.predict(data, params=params)
            if params:
                raise InvalidArgument(
                    f"model '{model.tag}' does not accept params (its predict has no params)"
                )
            return self.model.predict(data)

    signature = model.info.signatures.get("predict", {"batchable": False, "batch_dim": 0})
    unknown = set(model.info.signatures) - {"predict"}
    if unknown:
        raise InvalidArgument(
            f"model '{model.tag}' runs as python_function, which has only predict; "
            f"signatures {sorted(unknown)} need flavor='native'"
        )
    MlflowPyfuncRunnable.add_method(
        "predict",
        MlflowPyfuncRunnable.predict,
        batchable=signature["batchable"],
        batch_dim=signature["batch_dim"],
    )
    return MlflowPyfuncRunnable
