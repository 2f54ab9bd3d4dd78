"""Loading an imported MLflow model: as MLflow's ``python_function`` or as a native flavor.

``options.flavor`` in ``model.yaml`` says how a model is run: ``None`` (default) loads the
``python_function`` flavor, exact MLflow semantics; ``"native"`` the best native flavor tiffin
supports; or a flavor name from :data:`NATIVE_FLAVORS`. ``options.native_flavor`` is the
native flavor ``"native"`` resolved to at import time (``None`` for pyfunc).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import InvalidArgument, LoadFailed, TiffinError, missing_dependency
from tiffin.store import uris
from tiffin.store.models import get_saved_with

if TYPE_CHECKING:
    from types import ModuleType

    from tiffin.store.models import Model
    from tiffin.store.versioned import Store
    from tiffin.tag import Tag

__all__ = [
    "MLFLOW_MODEL_FOLDER",
    "MODULE",
    "NATIVE_FLAVORS",
    "PYFUNC",
    "choose_flavor",
    "get",
    "load_flavor",
    "load_model",
    "load_native",
    "mlflow_module",
    "resolve_native",
]

MODULE = "tiffin.mlflow"
MLFLOW_MODEL_FOLDER = "mlflow_model"
PYFUNC = "python_function"

#: Flavors tiffin can run natively, best first, and the MLflow module that loads each
#: (a native PyTorch model runs on its runner's device: tiffin.frameworks.mlflow.pytorch).
NATIVE_FLAVORS: dict[str, str] = {"sklearn": "mlflow.sklearn", "pytorch": "mlflow.pytorch"}

_PYFUNC_SPELLINGS = ("pyfunc", PYFUNC)


def mlflow_module() -> ModuleType:
    try:
        import mlflow
    except ImportError as exc:
        raise missing_dependency("mlflow", "mlflow") from exc
    return mlflow


# -- flavors -----------------------------------------------------------------------------------


def choose_flavor(flavor: str | None, signatures: Mapping[str, Any]) -> str | None:
    """Validate ``flavor`` against the signatures; ``None`` means pyfunc."""
    if flavor is not None and not isinstance(flavor, str):
        raise InvalidArgument(f"flavor must be a string or None, got {type(flavor).__name__}")
    others = sorted(set(signatures) - {"predict"})
    if flavor in _PYFUNC_SPELLINGS:
        if others:
            raise InvalidArgument(
                f"signatures name {others}, but the python_function flavor has only 'predict'; "
                "use flavor='native' to call the native model's methods"
            )
        return None
    if flavor is None:
        return "native" if others else None
    if flavor != "native" and flavor not in NATIVE_FLAVORS:
        raise InvalidArgument(
            f"unknown flavor {flavor!r}; choose None (python_function), 'native', or one of "
            f"{sorted(NATIVE_FLAVORS)}"
        )
    return flavor


def resolve_native(flavor: str, flavors: Mapping[str, Any], uri: str) -> str:
    """The native flavor to load for ``flavor`` (``"native"`` or a name) given the MLmodel."""
    if flavor == "native":
        for name in NATIVE_FLAVORS:
            if name in flavors:
                return name
        raise InvalidArgument(
            f"MLflow model {uri!r} has no flavor tiffin runs natively (it has "
            f"{', '.join(sorted(flavors)) or 'none'}; tiffin runs natively: "
            f"{', '.join(NATIVE_FLAVORS)}); import it without flavor= to run it as python_function"
        )
    if flavor not in flavors:
        raise InvalidArgument(
            f"MLflow model {uri!r} has no {flavor!r} flavor (it has "
            f"{', '.join(sorted(flavors)) or 'none'})"
        )
    return flavor


def get(tag: Tag | str, *, store: Store | None = None) -> Model:
    """The stored model ``tag``, checked to be an imported MLflow model."""
    return get_saved_with(tag, MODULE, store)


_EXTRAS = {"torch": "pytorch", "sklearn": "sklearn", "mlflow": "mlflow"}


def load_flavor(
    flavor: str | None,
    model_dir: Path,
    what: str,
    error: type[TiffinError] = LoadFailed,
    model_config: Mapping[str, Any] | None = None,
) -> Any:
    """Load ``model_dir`` as pyfunc (``None``, with MLflow's ``model_config`` when given) or
    with a native flavor's ``load_model``."""
    mlflow = mlflow_module()
    try:
        if flavor is None:
            if model_config is not None:
                return mlflow.pyfunc.load_model(
                    str(model_dir), suppress_warnings=True, model_config=dict(model_config)
                )
            return mlflow.pyfunc.load_model(str(model_dir), suppress_warnings=True)
        return importlib.import_module(NATIVE_FLAVORS[flavor]).load_model(str(model_dir))
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        if not top:
            raise
        raise missing_dependency(top, _EXTRAS.get(top, "all")) from exc
    except Exception as exc:
        raise error(
            f"cannot load MLflow model {what} with the {flavor or PYFUNC} flavor: "
            f"{uris.one_line(str(exc))}"
        ) from exc


def load_model(
    tag_or_model: Tag | str | Model,
    *,
    flavor: str | None = None,
    store: Store | None = None,
) -> Any:
    """The model as an ``mlflow.pyfunc.PyFuncModel`` (default), or as its native object.

    ``flavor="native"`` loads the best native flavor tiffin supports; ``flavor="sklearn"``
    that flavor. Warns once per model when installed versions differ from the model's.
    """
    model = get_saved_with(tag_or_model, MODULE, store)
    model_dir = Path(model.path_of(MLFLOW_MODEL_FOLDER))
    what = f"'{model.tag}'"
    chosen = None if flavor in _PYFUNC_SPELLINGS else choose_flavor(flavor, {})
    native = None
    if chosen is not None:
        from mlflow.models import Model as MLflowModel

        flavors = MLflowModel.load(str(model_dir / uris.MLMODEL)).flavors
        recorded = model.info.options.get("native_flavor")
        native = recorded if chosen == "native" and recorded in NATIVE_FLAVORS else None
        native = native or resolve_native(chosen, flavors, what)
    from tiffin.frameworks.mlflow.requirements import warn_version_mismatch

    warn_version_mismatch(model)
    return load_flavor(native, model_dir, what)


def load_native(tag_or_model: Tag | str | Model, *, store: Store | None = None) -> Any:
    """The native object of a model imported with a native flavor (for runners)."""
    model = get_saved_with(tag_or_model, MODULE, store)
    native = model.info.options.get("native_flavor")
    if not native:
        raise InvalidArgument(
            f"model '{model.tag}' was imported to run as python_function; "
            "load it with tiffin.mlflow.load_model, or re-import it with flavor='native'"
        )
    return load_model(model, flavor=str(native))
