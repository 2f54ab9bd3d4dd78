"""An imported MLflow model's parameter schema, checked per call apart from its input schema.

MLflow's ``PyFuncModel.predict`` enforces the input schema on the data and then the
``ParamSchema`` on the call's ``params`` before it calls the model's own predict function. The
pyfunc runnable converts the data to what the signature declares itself
(:mod:`~tiffin.frameworks.mlflow.inputs`), so for a model with a parameter schema it checks
only the params, with the function :func:`params_checker` gives, and then calls the predict
function directly. The rules are MLflow's (``mlflow.models.utils._enforce_params_schema``):

* no params (``None``, ``{}``): every declared param at its default;
* a declared param that is not sent: its default; one sent as ``null`` stays ``None``;
* a declared param is converted to its declared type (an integer for a ``double`` param
  becomes a float, a string for a ``datetime`` a datetime, each item of a ``(-1,)`` list);
* a name the schema does not declare is dropped, with a warning in the log;
* params that are not a dict, or a value its declared type cannot take (a string for a
  ``double``, a scalar for a list): ``MlflowException`` ``INVALID_PARAMETER_VALUE`` (400), in
  MLflow's words, naming every bad param.

The common call costs a dict copy: when every param sent is declared as a scalar
``boolean``, ``integer``, ``long``, ``float``, ``double`` or ``string`` and has exactly that
type's Python type (what a JSON body gives), MLflow's conversion returns each value unchanged,
so the checker keeps them and adds the defaults of the others. Anything else (another type,
lists, datetimes, objects, unknown or non-string names, params that are not a dict) goes to
MLflow's own ``_enforce_params_schema``, so its conversions, warnings and errors are MLflow's
word for word. Where this MLflow has no such function, :func:`params_checker` gives None and
the runnable calls MLflow's ``predict`` as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ParamsChecker", "params_checker"]

#: the Python type of each scalar MLflow data type whose values MLflow passes unchanged
_PLAIN = {
    "boolean": bool,
    "integer": int,
    "long": int,
    "float": float,
    "double": float,
    "string": str,
}

#: ``params`` as the model's predict function takes them (declared names, defaults filled)
ParamsChecker = Callable[[Any], dict[str, Any]]


def _plain_type(spec: Any) -> type | None:
    """The Python type whose values of ``spec`` MLflow passes unchanged, or None."""
    from mlflow.types import DataType

    if spec.shape is not None or not isinstance(spec.dtype, DataType):
        return None
    return _PLAIN.get(spec.dtype.name)


def params_checker(metadata: Any) -> ParamsChecker | None:
    """The check of a call's params for the model whose MLflow metadata (``MLmodel``) is
    ``metadata``; None when it declares no parameter schema or this MLflow cannot check one
    apart from its inputs."""
    get_schema = getattr(metadata, "get_params_schema", None)
    schema = get_schema() if get_schema is not None else None
    if schema is None:
        return None
    try:
        from mlflow.models.utils import _enforce_params_schema
    except ImportError:  # an MLflow that moved it: its predict checks the params
        return None
    specs = list(schema.params)
    defaults = {spec.name: spec.default for spec in specs}
    plain = {spec.name: kind for spec in specs if (kind := _plain_type(spec)) is not None}

    def check(params: Any) -> dict[str, Any]:
        if params is None:
            return dict(defaults)
        if type(params) is dict and all(
            plain.get(name) is type(value) for name, value in params.items()
        ):
            checked = dict(params)
            for name, default in defaults.items():
                if name not in checked:
                    checked[name] = default
            return checked
        return _enforce_params_schema(params, schema)

    return check
