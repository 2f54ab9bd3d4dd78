"""``tiffin.sklearn``: scikit-learn estimators and pipelines, saved natively.

Format: ``model.pkl``, a cloudpickle (protocol 5) of the estimator, its SHA-256 in
``model.yaml`` (``options.sha256``) and checked before loading; the scikit-learn version that
saved it in ``context.framework_versions``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import InvalidArgument, missing_dependency
from tiffin.frameworks import get_model, model_runnable
from tiffin.frameworks._pickle import load_pickled, save_pickled

if TYPE_CHECKING:
    from tiffin.models import Model
    from tiffin.runner import Runnable
    from tiffin.store import Store
    from tiffin.tag import Tag

MODULE = "tiffin.sklearn"
MODEL_FILE = "model.pkl"


def _sklearn_version() -> str:
    try:
        import sklearn
    except ImportError as exc:
        raise missing_dependency("scikit-learn", "sklearn") from exc
    return str(sklearn.__version__)


def save_model(
    name: str,
    model: Any,
    *,
    signatures: Mapping[str, Mapping[str, Any]] | None = None,
    labels: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    custom_objects: Mapping[str, Any] | None = None,
    store: Store | None = None,
) -> Model:
    """Save a scikit-learn estimator (anything with ``fit`` and ``get_params``)."""
    version = _sklearn_version()
    if not (hasattr(model, "fit") and hasattr(model, "get_params")):
        raise InvalidArgument(
            f"{type(model).__name__} is not a scikit-learn estimator; "
            "use tiffin.picklable_model.save_model for other objects"
        )
    return save_pickled(
        name,
        model,
        module=MODULE,
        filename=MODEL_FILE,
        signatures=signatures,
        labels=labels,
        metadata=metadata,
        custom_objects=custom_objects,
        framework_versions={"scikit-learn": version},
        store=store,
    )


def get(tag: Tag | str, *, store: Store | None = None) -> Model:
    return get_model(tag, MODULE, store)


def load_model(tag_or_model: Tag | str | Model, *, store: Store | None = None) -> Any:
    """The estimator itself."""
    _sklearn_version()
    return load_pickled(get_model(tag_or_model, MODULE, store))


def get_runnable(model: Model) -> type[Runnable]:
    """The Runnable behind ``model.to_runner()``: one runner method per declared signature."""
    return model_runnable(model, load_pickled, "sklearn")
