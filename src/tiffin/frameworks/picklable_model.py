"""``tiffin.picklable_model``: any object cloudpickle can serialise.

Format: ``model.pkl`` (cloudpickle, protocol 5), SHA-256 checked before loading.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tiffin.frameworks import get_model, model_runnable
from tiffin.frameworks._pickle import load_pickled, save_pickled

if TYPE_CHECKING:
    from tiffin.models import Model
    from tiffin.runner import Runnable
    from tiffin.store import Store
    from tiffin.tag import Tag

MODULE = "tiffin.picklable_model"
MODEL_FILE = "model.pkl"


def save_model(
    name: str,
    obj: Any,
    *,
    signatures: Mapping[str, Mapping[str, Any]] | None = None,
    labels: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    custom_objects: Mapping[str, Any] | None = None,
    store: Store | None = None,
) -> Model:
    """Save any picklable object whose declared methods (default ``predict``) exist."""
    return save_pickled(
        name,
        obj,
        module=MODULE,
        filename=MODEL_FILE,
        signatures=signatures,
        labels=labels,
        metadata=metadata,
        custom_objects=custom_objects,
        framework_versions={},
        store=store,
    )


def get(tag: Tag | str, *, store: Store | None = None) -> Model:
    return get_model(tag, MODULE, store)


def load_model(tag_or_model: Tag | str | Model, *, store: Store | None = None) -> Any:
    return load_pickled(get_model(tag_or_model, MODULE, store))


def get_runnable(model: Model) -> type[Runnable]:
    """The Runnable behind ``model.to_runner()``: one runner method per declared signature."""
    return model_runnable(model, load_pickled, "picklable_model")
