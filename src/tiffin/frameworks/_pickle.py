"""Saving and loading objects as a checksummed cloudpickle file (sklearn, picklable_model).

Loading a pickle runs code named inside it, so a store must be trusted. tiffin limits the
exposure: the file's SHA-256 is recorded in ``model.yaml`` at save time and checked before
unpickling, so a file swapped or corrupted after saving is refused rather than run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import CorruptEntry, InvalidArgument
from tiffin.frameworks import check_methods
from tiffin.models import create, file_sha256, validate_signatures

if TYPE_CHECKING:
    from tiffin.models import Model
    from tiffin.store import Store

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
    expected = model.info.options.get("sha256")
    if not path.is_file():
        raise CorruptEntry(f"model '{model.tag}' is missing its file {path}")
    if expected != file_sha256(path):
        raise CorruptEntry(
            f"{path} does not match the SHA-256 recorded in model.yaml; refusing to unpickle it "
            "(the file changed after it was saved)"
        )
    with path.open("rb") as fh:
        return cloudpickle.load(fh)
