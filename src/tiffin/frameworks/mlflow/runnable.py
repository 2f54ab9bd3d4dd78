"""Runnables for imported MLflow models: pyfunc (exact MLflow semantics) and native flavors.

The pyfunc runnable gives the model what its signature declares, whatever container the
caller used: :class:`~tiffin.frameworks.mlflow.inputs.InputSchema` converts lists, dicts of
columns, ndarrays and DataFrames exactly (``runner.predict.run(nested_list)`` on a float32
tensor signature, a dict of columns on a model logged from a DataFrame); without a signature a
dict of columns or records becomes a DataFrame and nested lists an ndarray. What tiffin
converted already meets the schema, so the model's own predict function is called without
MLflow checking it a second time; a model's parameter schema is then checked by
:mod:`~tiffin.frameworks.mlflow.params` (MLflow's rules: declared types, defaults filled,
unknown names dropped), while ``params`` for a model without one go through MLflow's
``predict``, which drops them with a warning. What tiffin leaves to MLflow (Array/Object/Map
columns, type-hint signatures, other containers) goes through MLflow's ``predict`` unchanged.

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
from tiffin.frameworks.mlflow.params import ParamsChecker, params_checker
from tiffin.frameworks.mlflow.pytorch import (
    TORCH_FLAVOR,
    is_torch_model,
    load_native_torch,
    load_pyfunc_torch,
    signature_example,
)
from tiffin.frameworks.mlflow.sklearn_arrays import array_predict, one_dtype_array
from tiffin.frameworks.mlflow.tables import column_index
from tiffin.frameworks.pytorch_runnable import torch_runnable
from tiffin.runner.containers import Table
from tiffin.runner.runnable import Runnable, model_runnable

if TYPE_CHECKING:
    from tiffin.store.models import Model

__all__ = ["as_model_input", "get_runnable"]


def as_model_input(data: Any, schema: InputSchema | None) -> Any:
    """``data`` as the model's input, or :data:`FALLBACK` where MLflow must read it."""
    if type(data) is Table:  # a server's table of one dtype: the frame of it
        import numpy as np
        import pandas as pd

        # column-major, so that the frame's block is laid out as one framed from the columns
        # (a model may then compute in another order, and round otherwise)
        data = pd.DataFrame(np.asfortranarray(data.values), columns=column_index(data.names))
        return data if schema is None else schema.convert(data)
    if schema is None:
        if isinstance(data, list | dict):
            return unsigned(data)
        return FALLBACK
    if schema.needs_mlflow:
        return FALLBACK
    return schema.convert(data)


def _checked_once(pyfunc_model: Any) -> tuple[Callable[..., Any] | None, ParamsChecker | None]:
    """The model's own predict function, for inputs tiffin has already made what the
    signature declares (MLflow would only check them again), and the check of its parameter
    schema (None: it has none); no function where MLflow must check something itself (a
    signature from type hints, a parameter schema this MLflow cannot check apart from the
    inputs, or one for a predict function without ``params``) or where this MLflow has no such
    function."""
    predict = getattr(pyfunc_model, "_predict_fn", None)
    metadata = getattr(pyfunc_model, "metadata", None)
    if predict is None or metadata is None:
        return None, None
    if getattr(metadata, "_is_signature_from_type_hint", bool)():
        return None, None
    if metadata.get_params_schema() is None:
        return predict, None
    takes = inspect.signature(predict).parameters.get("params")
    if takes is None or takes.kind == inspect.Parameter.VAR_KEYWORD:
        return None, None  # MLflow warns that it drops the params, then calls it without
    check = params_checker(metadata)
    return (predict, check) if check is not None else (None, None)


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
            self.direct, self.check_params = (
                _checked_once(self.model) if self.schema is not None else (None, None)
            )
            how = array_predict(self.model) if self.schema is None else None
            self.on_array: Callable[[Any], Any] | None = how[0] if how else None
            self.array_names: tuple[str, ...] | None = how[1] if how else None

        def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
            on_array = self.on_array if not params else None
            if (
                on_array is not None
                and type(data) is Table
                and (self.array_names is None or data.names == self.array_names)
            ):
                import numpy as np

                return on_array(np.asfortranarray(data.values))
            converted = as_model_input(data, self.schema)
            if on_array is not None:
                frame = data if converted is FALLBACK else converted
                plain = one_dtype_array(frame, self.array_names)
                if plain is not None:
                    return on_array(plain)
            if converted is not FALLBACK:
                if self.direct is not None:
                    if self.check_params is not None:  # MLflow's check of the params, alone
                        return self.direct(converted, params=self.check_params(params))
                    if not params:
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
