"""A scikit-learn model without a signature given a table of one numeric dtype as its array.

For a frame, scikit-learn checks each column's dtype and the frame's names against the ones
it was fitted on before it reads the frame as ``np.asarray(frame)``: ~0.6 ms per call for 32
columns (pandas' string column labels included), against ~0.1 ms for the same array. Where
tiffin can tell that the array is all scikit-learn would have read, the model gets the array:

* a model fitted on arrays (no ``feature_names_in_`` anywhere): any table's array -- the frame
  would only have made scikit-learn warn of its names;
* a single estimator fitted on a frame (LogisticRegression, HistGradientBoosting... no step,
  no fitted part of its own that knows names): a table whose column names are the fitted ones,
  in their order, goes to a shallow copy of the estimator without ``feature_names_in_`` (the
  same fitted arrays, shared), through the method MLflow's pyfunc calls (``predict``, or the
  ``pyfunc_predict_fn`` it was saved with). Other names get the frame, and scikit-learn's own
  error.

Only scikit-learn's own classes qualify, and no function or callable object among the
parameters (it might read columns). The array is column-major, as ``np.asarray`` reads the
frame pandas makes of columns: the model computes in the same order and rounds alike.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

__all__ = ["ArrayPredict", "array_predict", "one_dtype_array"]

#: (the function that takes the 2-D array, the column names the table must carry or None)
ArrayPredict = tuple[Callable[[Any], Any], tuple[str, ...] | None]


def _estimator_parts(pyfunc_model: Any) -> tuple[Any, list[Any]] | None:
    """(the raw estimator, it and its parameters deep) of an ``mlflow.sklearn`` model made
    only of scikit-learn's own classes and no callable; None for anything else."""
    metadata = getattr(pyfunc_model, "metadata", None)
    flavors = getattr(metadata, "flavors", None) or {}
    if flavors.get("python_function", {}).get("loader_module") != "mlflow.sklearn":
        return None
    try:
        estimator = pyfunc_model.get_raw_model()
        parts = [estimator, *estimator.get_params(deep=True).values()]
    except Exception:  # not an estimator as scikit-learn makes them: leave it the frame
        return None
    for part in parts:
        if callable(part) and not isinstance(part, type):
            return None  # a function, a ufunc, an object with __call__: it might read columns
        if hasattr(part, "fit") and not type(part).__module__.startswith("sklearn."):
            return None
    return estimator, parts


def _knows_names(value: Any) -> bool:
    """Whether ``value`` (or an item of it, if a list, tuple or dict) is fitted on names."""
    if isinstance(value, dict):
        value = list(value.values())
    items = value if isinstance(value, list | tuple) else [value]
    return any(hasattr(item, "feature_names_in_") for item in items)


def _pyfunc_method(pyfunc_model: Any, estimator: Any) -> str | None:
    """The name of the estimator's method MLflow's pyfunc calls (None: not one of its own)."""
    predict = getattr(pyfunc_model, "_predict_fn", None)
    owner, name = getattr(predict, "__self__", None), getattr(predict, "__name__", None)
    if owner is estimator:
        return name  # a pyfunc_predict_fn: predict_proba, ...
    wrapper = getattr(pyfunc_model, "_model_impl", None)
    is_wrapper = owner is not None and owner is wrapper
    if is_wrapper and name == "predict" and getattr(wrapper, "sklearn_model", None) is estimator:
        return "predict"
    return None


def array_predict(pyfunc_model: Any) -> ArrayPredict | None:
    """How this model without a signature may take a table of one numeric dtype as its array,
    or None: it gets the frame."""
    found = _estimator_parts(pyfunc_model)
    if found is None:
        return None
    estimator, parts = found
    if not any(hasattr(part, "feature_names_in_") for part in parts):
        return pyfunc_model.predict, None  # fitted on arrays (no step knows names either)
    if any(hasattr(part, "fit") for part in parts[1:]):
        return None  # a pipeline or a meta-estimator: its steps check names their own way
    names = getattr(estimator, "feature_names_in_", None)
    fitted = vars(estimator)
    if names is None or "feature_names_in_" not in fitted:
        return None
    if not all(type(name) is str for name in names):
        return None
    if any(_knows_names(v) for k, v in fitted.items() if k != "feature_names_in_"):
        return None  # a fitted part of its own reads columns by name (HistGradientBoosting's
        # preprocessor of categorical columns)
    method = _pyfunc_method(pyfunc_model, estimator)
    if method is None:
        return None
    stripped = copy.copy(estimator)
    del vars(stripped)["feature_names_in_"]
    return getattr(stripped, method), tuple(names)


def one_dtype_array(data: Any, names: tuple[str, ...] | None) -> Any:
    """A DataFrame of numeric columns all of one dtype (labelled ``names`` in order, unless
    None) as its ``to_numpy()`` (what scikit-learn would make of it); None for anything
    else."""
    import numpy as np
    import pandas as pd

    if type(data) is not pd.DataFrame or data.shape[1] == 0:
        return None
    if names is not None and tuple(data.columns) != names:
        return None
    dtypes = set(data.dtypes)
    if len(dtypes) != 1:
        return None
    dtype = dtypes.pop()
    if not isinstance(dtype, np.dtype) or dtype.kind not in "iuf":
        return None
    return data.to_numpy()
