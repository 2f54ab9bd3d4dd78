"""Runnables for imported MLflow models: pyfunc (exact MLflow semantics) and native flavors.

The pyfunc runnable meets callers half-way on container types: when the model's signature
names columns, an ndarray, a list of rows or a dict of columns becomes a DataFrame with those
column names, so ``runner.predict.run(np_array)`` works on a model logged from a DataFrame.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import InvalidArgument
from tiffin.frameworks.mlflow.loading import load_model, load_native
from tiffin.runner.runnable import Runnable, model_runnable

if TYPE_CHECKING:
    from tiffin.store.models import Model

__all__ = ["coerce_input", "get_runnable"]


def _column_names(pyfunc_model: Any) -> list[str] | None:
    """Input column names when the model's signature is column-based (not a tensor spec)."""
    schema = pyfunc_model.metadata.get_input_schema()
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    return list(schema.input_names())


def coerce_input(data: Any, columns: list[str] | None) -> Any:
    """The container the model expects, from what the caller sent."""
    if columns is None:
        return data
    import numpy as np
    import pandas as pd

    if isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
        return pd.DataFrame.from_records(data)
    if (
        isinstance(data, dict)
        and all(isinstance(k, str) for k in data)
        and set(data) <= set(columns)
    ):
        try:
            return pd.DataFrame({k: np.asarray(v) for k, v in data.items()})
        except ValueError:
            return data
    if isinstance(data, list):
        data = np.asarray(data)
    if isinstance(data, np.ndarray):
        if data.ndim == 1 and len(columns) == 1:
            return pd.DataFrame({columns[0]: data})
        if data.ndim == 2:
            if data.shape[1] != len(columns):
                raise InvalidArgument(
                    f"input has {data.shape[1]} columns, but the model's signature expects "
                    f"{len(columns)}: {columns}"
                )
            return pd.DataFrame(data, columns=columns)
    return data


def get_runnable(model: Model) -> type[Runnable]:
    if model.info.options.get("native_flavor"):
        return model_runnable(model, load_native, "mlflow")

    class MlflowPyfuncRunnable(Runnable):
        SUPPORTED_RESOURCES = ("cpu",)
        SUPPORTS_CPU_MULTI_THREADING = True

        def __init__(self) -> None:
            self.model = load_model(model)
            self.columns = _column_names(self.model)
            self.accepts_params = "params" in inspect.signature(self.model.predict).parameters

        def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
            data = coerce_input(data, self.columns)
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
