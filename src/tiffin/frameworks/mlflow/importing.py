"""``tiffin.mlflow.import_model``: an MLflow model from any URI, copied into the store.

Format: the MLflow model directory, unchanged, in the folder ``mlflow_model/`` (``MLmodel``,
``requirements.txt``, ``conda.yaml``, data, artifacts). ``model.yaml`` records

* ``options.flavor`` / ``options.native_flavor``: how the model is run (see
  :mod:`tiffin.frameworks.mlflow.loading`);
* ``context.mlflow``: what MLflow says about the model: the MLflow version that wrote it, its
  flavors, signature (input/output schema), run id, logged-model id, and the URI it came from;
* ``context.framework_versions.mlflow``: the MLflow version that imported it.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import ImportFailed, InvalidArgument
from tiffin.frameworks.mlflow.loading import (
    MLFLOW_MODEL_FOLDER,
    MODULE,
    NATIVE_FLAVORS,
    PYFUNC,
    choose_flavor,
    load_flavor,
    mlflow_module,
    resolve_native,
)
from tiffin.frameworks.mlflow.pytorch import TORCH_FLAVOR
from tiffin.frameworks.pytorch_runnable import check_torch_methods
from tiffin.runner.runnable import check_methods
from tiffin.store import fetch, uris
from tiffin.store.models import create, validate_signatures

if TYPE_CHECKING:
    from tiffin.store.models import Model
    from tiffin.store.versioned import Store
    from tiffin.tag import Tag

__all__ = ["import_model"]


def _read_mlmodel(model_dir: Path, uri: str) -> Any:
    from mlflow.models import Model as MLflowModel

    try:
        meta = MLflowModel.load(str(model_dir / uris.MLMODEL))
    except Exception as exc:
        raise InvalidArgument(
            f"cannot import MLflow model {uri!r}: its MLmodel file cannot be read: "
            f"{uris.one_line(str(exc))}"
        ) from exc
    if not isinstance(meta.flavors, Mapping) or not meta.flavors:
        raise InvalidArgument(f"cannot import MLflow model {uri!r}: its MLmodel lists no flavors")
    return meta


def _check_loadable(flavors: Mapping[str, Any], uri: str) -> None:
    conf = flavors.get(PYFUNC)
    if isinstance(conf, Mapping) and conf.get("loader_module"):
        return
    native = [name for name in NATIVE_FLAVORS if name in flavors]
    hint = (
        f"; it has the {native[0]!r} flavor, so import it with flavor='native'"
        if native
        else f"; tiffin loads python_function models, and natively: {', '.join(NATIVE_FLAVORS)}"
    )
    raise InvalidArgument(
        f"cannot import MLflow model {uri!r}: no flavor tiffin can load (it has "
        f"{', '.join(sorted(flavors))}, but no python_function flavor with a loader_module)" + hint
    )


def _signature_of(meta: Any) -> dict[str, Any] | None:
    signature = getattr(meta, "signature", None)
    if signature is None:
        return None
    out: dict[str, Any] = {}
    for key, value in signature.to_dict().items():
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        out[key] = value
    return out


def _facts(meta: Any, fetched: fetch.Fetched) -> dict[str, Any]:
    """What ``context.mlflow`` records about the imported model."""
    created = getattr(meta, "utc_time_created", None)
    return {
        "mlflow_version": getattr(meta, "mlflow_version", None),
        "flavors": sorted(meta.flavors),
        "loader_module": (meta.flavors.get(PYFUNC) or {}).get("loader_module"),
        "signature": _signature_of(meta),
        "run_id": getattr(meta, "run_id", None) or fetched.run_id,
        "model_id": getattr(meta, "model_id", None),
        "model_uuid": getattr(meta, "model_uuid", None),
        "utc_time_created": str(created) if created is not None else None,
        "source_uri": fetched.uri,
        "resolved_uri": fetched.resolved_uri,
    }


def import_model(
    name: Tag | str,
    model_uri: str | os.PathLike[str],
    *,
    signatures: Mapping[str, Mapping[str, Any]] | None = None,
    labels: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    custom_objects: Mapping[str, Any] | None = None,
    flavor: str | None = None,
    store: Store | None = None,
    progress: fetch.ProgressCallback | None = None,
) -> Model:
    """Copy the MLflow model at ``model_uri`` into the store as a new version of ``name``.

    ``model_uri`` is anything MLflow accepts: a local path or ``file://`` URI, ``runs:/``,
    ``models:/`` (version, stage, ``@alias``, ``latest``, ``m-<model id>``), ``s3://``,
    ``mlflow-artifacts:/`` and the other artifact stores, or a run-artifact URI naming a model
    logged in that run. ``flavor`` chooses how it will be run (see the module docstring);
    ``signatures`` naming methods other than ``predict`` imply ``flavor="native"``, and each
    method must exist on the native model. ``progress(done, total)`` sees the bytes fetched.
    """
    mlflow = mlflow_module()
    sigs = validate_signatures(signatures)
    chosen = choose_flavor(flavor, sigs)
    if isinstance(model_uri, os.PathLike):
        model_uri = os.fspath(model_uri)
    if not isinstance(model_uri, str) or not model_uri.strip():
        raise InvalidArgument(f"model_uri must be a non-empty string or path, got {model_uri!r}")
    uri = model_uri.strip()
    with create(
        name,
        module=MODULE,
        signatures=sigs,
        labels=labels,
        metadata=metadata,
        custom_objects=custom_objects,
        store=store,
    ) as draft:
        target = draft.path / MLFLOW_MODEL_FOLDER
        fetched = fetch.fetch(uri, target, progress=progress)
        meta = _read_mlmodel(target, uri)
        native: str | None = None
        if chosen is None:
            _check_loadable(meta.flavors, uri)
        else:
            native = resolve_native(chosen, meta.flavors, uri)
            obj = load_flavor(native, target, repr(uri), ImportFailed)
            try:
                if native == TORCH_FLAVOR:  # forward, and predict without one: the module
                    check_torch_methods(obj, sigs, f"{native} model")
                else:
                    check_methods(obj, sigs, f"{native} model")
            except InvalidArgument as exc:
                raise InvalidArgument(f"cannot import MLflow model {uri!r}: {exc}") from exc
        draft.options.update({"flavor": chosen, "native_flavor": native})
        draft.context["framework_versions"]["mlflow"] = str(mlflow.__version__)
        draft.context["mlflow"] = _facts(meta, fetched)
    assert draft.model is not None
    return draft.model
