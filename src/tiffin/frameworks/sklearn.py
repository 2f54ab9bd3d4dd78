"""``tiffin.sklearn``: scikit-learn estimators and pipelines, saved natively.

Format: ``model.pkl``, a cloudpickle (protocol 5) of the estimator, its SHA-256 in
``model.yaml`` (``options.sha256``) and checked before loading; the scikit-learn version that
saved it in ``context.framework_versions``.

Methods: any of :data:`INFERENCE_METHODS` the estimator has may be declared, each a runner
method, a ``serve-model`` route and a ``tiffin.Client`` method; ``signatures="all"`` declares
every one of them the estimator has (``predict_proba`` only where the estimator offers it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import InvalidArgument, missing_dependency
from tiffin.frameworks.picklable_model import load_pickled, save_pickled
from tiffin.runner.runnable import model_runnable
from tiffin.store.models import get_saved_with

if TYPE_CHECKING:
    from tiffin.runner.runnable import Runnable
    from tiffin.store.models import Model
    from tiffin.store.versioned import Store
    from tiffin.tag import Tag

__all__ = [
    "INFERENCE_METHODS",
    "MODEL_FILE",
    "MODULE",
    "get",
    "get_runnable",
    "load_model",
    "save_model",
]

MODULE = "tiffin.sklearn"
MODEL_FILE = "model.pkl"
#: the methods scikit-learn estimators answer with (what ``signatures="all"`` looks for)
INFERENCE_METHODS = (
    "predict",
    "predict_proba",
    "predict_log_proba",
    "decision_function",
    "transform",
    "score_samples",
)


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
    signatures: Mapping[str, Mapping[str, Any]] | str | None = None,
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
    if signatures == "all":
        signatures = {m: {} for m in INFERENCE_METHODS if callable(getattr(model, m, None))}
    elif isinstance(signatures, str):
        raise InvalidArgument(
            f"signatures must be a mapping of method name to options, or 'all'; got {signatures!r}"
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
    return get_saved_with(tag, MODULE, store)


def load_model(tag_or_model: Tag | str | Model, *, store: Store | None = None) -> Any:
    """The estimator itself."""
    _sklearn_version()
    return load_pickled(get_saved_with(tag_or_model, MODULE, store))


def get_runnable(model: Model) -> type[Runnable]:
    """The Runnable behind ``model.to_runner()``: one runner method per declared signature."""
    return model_runnable(model, load_pickled, "sklearn")
