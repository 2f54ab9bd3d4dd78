"""An imported MLflow model's input schema (its MLflow signature), as the server checks it.

``input_schema`` is the model's ``mlflow.types.Schema`` (column or tensor specs);
``frame_validator`` checks one caller's DataFrame against a column schema before it joins a
batch, as MLflow's ``predict`` would; ``serving_input_example`` is the request MLflow saved
with the model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from tiffin.frameworks.mlflow.loading import MLFLOW_MODEL_FOLDER, MODULE

if TYPE_CHECKING:
    from tiffin.store.models import Model

__all__ = ["frame_validator", "input_schema", "serving_input_example"]


def input_schema(model: Model) -> Any:
    """The model's MLflow input schema (``mlflow.types.Schema``), or None."""
    from mlflow.models import Model as MlflowModel

    path = Path(model.path_of(MLFLOW_MODEL_FOLDER)) / "MLmodel"
    return MlflowModel.load(str(path)).get_input_schema()


def frame_validator(model: Model) -> Callable[[Any], Any] | None:
    """A function that checks (and casts) one caller's DataFrame against the model's
    column signature, as MLflow's ``predict`` would; None when the model has none.

    DataFrames of the same columns batch together whatever their dtypes, so a frame the
    signature rejects must be turned away before it joins a batch, not fail the batch.
    """
    if model.info.module != MODULE:
        return None
    schema = input_schema(model)
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        return None
    import pandas as pd
    from mlflow.exceptions import MlflowException
    from mlflow.models.utils import _enforce_schema

    def validate(data: Any) -> Any:
        if not isinstance(data, pd.DataFrame):
            return data
        try:
            return _enforce_schema(data, schema)
        except Exception as exc:  # worded as PyFuncModel.predict words it (a 400)
            raise MlflowException.invalid_parameter_value(
                f"Failed to enforce schema of data '{data}' with schema '{schema}'. Error: {exc}"
            ) from exc

    return validate


def serving_input_example(model: Model) -> Any:
    """The request MLflow saved with the model (``serving_input_example.json``), if any."""
    path = Path(model.path_of(MLFLOW_MODEL_FOLDER)) / "serving_input_example.json"
    try:
        return orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
