"""``tiffin.picklable_model``: any object cloudpickle can serialise; also the format
``tiffin.sklearn`` saves in.

Format: ``model.pkl``, a cloudpickle (protocol 5) file, its SHA-256 in ``model.yaml``
(``options.sha256``). Loading a pickle runs code named inside it, so a store must be trusted;
tiffin limits the exposure by checking the recorded SHA-256 before unpickling, so a file
swapped or corrupted after saving is refused rather than run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import CorruptEntry, InvalidArgument
from tiffin.runner.runnable import check_methods, model_runnable
from tiffin.store.models import (
    create,
    file_sha256,
    get_saved_with,
    read_verified,
    validate_signatures,
)

if TYPE_CHECKING:
    from tiffin.runner.runnable import Runnable
    from tiffin.store.models import Model
    from tiffin.store.versioned import Store
    from tiffin.tag import Tag

__all__ = ["MODEL_FILE", "MODULE", "get", "get_runnable", "load_model", "save_model"]

MODULE = "tiffin.picklable_model"
MODEL_FILE = "model.pkl"
PICKLE_FORMAT = "cloudpickle"


def save_pickled(
    name: str,
    obj: Any,
    *,
    module: str,
    filename: str,
    signatures: Mapping[str, Mapping[str, Any]] | None,
    labels: Mapping[str, str] | None,
    metadata: Mapping[str, Any] | None,
    custom_objects: Mapping[str, Any] | None,
    framework_versions: Mapping[str, str],
    store: Store | None,
) -> Model:
    import cloudpickle

    sigs = validate_signatures(signatures)
    check_methods(obj, sigs, "object")
    with create(
        name,
        module=module,
        signatures=sigs,
        labels=labels,
        metadata=metadata,
        custom_objects=custom_objects,
        store=store,
    ) as draft:
        target = draft.path / filename
        try:
            with target.open("wb") as fh:
                cloudpickle.dump(obj, fh, protocol=5)
        except (TypeError, AttributeError, cloudpickle.pickle.PicklingError) as exc:
            raise InvalidArgument(f"cannot pickle {type(obj).__name__}: {exc}") from exc
        draft.options.update(
            {"serialization": PICKLE_FORMAT, "file": filename, "sha256": file_sha256(target)}
        )
        draft.context["framework_versions"].update(framework_versions)
    assert draft.model is not None
    return draft.model


def load_pickled(model: Model) -> Any:
    import cloudpickle

    filename = model.info.options.get("file", "")
    if not filename or "/" in filename or filename.startswith("."):
        raise CorruptEntry(f"{model.path_of('model.yaml')}: options.file is missing or unsafe")
    path = Path(model.path_of(filename))
    if not path.is_file():
        raise CorruptEntry(f"model '{model.tag}' is missing its file {path}")
    return cloudpickle.loads(read_verified(path, model.info.options.get("sha256")))


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
    return get_saved_with(tag, MODULE, store)


def load_model(tag_or_model: Tag | str | Model, *, store: Store | None = None) -> Any:
    return load_pickled(get_saved_with(tag_or_model, MODULE, store))


def get_runnable(model: Model) -> type[Runnable]:
    """The Runnable behind ``model.to_runner()``: one runner method per declared signature."""
    return model_runnable(model, load_pickled, "picklable_model")
