"""``tiffin.mlflow``: MLflow models, imported from any model URI MLflow understands.

Format: the MLflow model directory, unchanged, in the folder :data:`MLFLOW_MODEL_FOLDER`
(``mlflow_model/``: ``MLmodel``, ``requirements.txt``, ``conda.yaml``, data, artifacts).
``model.yaml`` records

* ``options.flavor``: how the model is run. ``None`` (default) loads the ``python_function``
  flavor, exact MLflow semantics; ``"native"`` the best native flavor tiffin supports;
  or a flavor name from :data:`NATIVE_FLAVORS`. ``options.native_flavor`` is the native flavor
  that ``"native"`` resolved to at import time (``None`` for pyfunc).
* ``context.mlflow``: what MLflow says about the model: the MLflow version that wrote it, its
  flavors, signature (input/output schema), run id, logged-model id, and the URI it came from.
* ``context.framework_versions.mlflow``: the MLflow version that imported it.

Use :func:`load_model` for the pyfunc (or, with ``flavor=``, the native object) and
:func:`load_native` for the native object of a model imported with a native flavor.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import logging
import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiffin import uris
from tiffin.exceptions import ImportFailed, InvalidArgument, TiffinError, missing_dependency
from tiffin.frameworks import check_methods, get_model
from tiffin.frameworks._mlflow_runner import get_runnable
from tiffin.models import create, validate_signatures

if TYPE_CHECKING:
    from types import ModuleType

    from tiffin.models import Model
    from tiffin.store import Store
    from tiffin.tag import Tag

logger = logging.getLogger(__name__)

MODULE = "tiffin.mlflow"
MLFLOW_MODEL_FOLDER = "mlflow_model"
PYFUNC = "python_function"

#: Flavors tiffin can run natively, best first, and the MLflow module that loads each.
#: (PyTorch native, with devices, comes with the GPU work.)
NATIVE_FLAVORS: dict[str, str] = {"sklearn": "mlflow.sklearn"}

#: The pip package behind an MLflow flavor, for the version check at load time.
FLAVOR_PACKAGES: dict[str, str] = {
    "sklearn": "scikit-learn",
    "pytorch": "torch",
    "tensorflow": "tensorflow",
    "keras": "keras",
    "xgboost": "xgboost",
    "lightgbm": "lightgbm",
    "catboost": "catboost",
    "onnx": "onnx",
    "transformers": "transformers",
    "sentence_transformers": "sentence-transformers",
    "statsmodels": "statsmodels",
    "spacy": "spacy",
    "prophet": "prophet",
    "pmdarima": "pmdarima",
    "h2o": "h2o",
    "paddle": "paddlepaddle",
    "spark": "pyspark",
}
_ALWAYS_CHECKED = ("mlflow", "numpy", "scikit-learn")
_PYFUNC_SPELLINGS = ("pyfunc", PYFUNC)


def _mlflow() -> ModuleType:
    try:
        import mlflow
    except ImportError as exc:
        raise missing_dependency("mlflow", "mlflow") from exc
    return mlflow


# -- flavors -----------------------------------------------------------------------------------


def _choose_flavor(flavor: str | None, signatures: Mapping[str, Any]) -> str | None:
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


def _resolve_native(flavor: str, flavors: Mapping[str, Any], uri: str) -> str:
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


def _read_mlmodel(model_dir: Path, uri: str) -> Any:
    from mlflow.models import Model as MLflowModel

    try:
        meta = MLflowModel.load(str(model_dir / uris.MLMODEL))
    except Exception as exc:
        raise InvalidArgument(
            f"cannot import MLflow model {uri!r}: its MLmodel file cannot be read: "
            f"{uris._one_line(str(exc))}"
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
        f"{', '.join(sorted(flavors))}, but no python_function flavor with a loader_module)"
        + hint
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


def _facts(meta: Any, fetched: uris.Fetched) -> dict[str, Any]:
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


# -- the tiffin.mlflow API ---------------------------------------------------------------------


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
    progress: uris.ProgressCallback | None = None,
) -> Model:
    """Copy the MLflow model at ``model_uri`` into the store as a new version of ``name``.

    ``model_uri`` is anything MLflow accepts: a local path or ``file://`` URI, ``runs:/``,
    ``models:/`` (version, stage, ``@alias``, ``latest``, ``m-<model id>``), ``s3://``,
    ``mlflow-artifacts:/`` and the other artifact stores, or a run-artifact URI naming a model
    logged in that run. ``flavor`` chooses how it will be run (see the module docstring);
    ``signatures`` naming methods other than ``predict`` imply ``flavor="native"``, and each
    method must exist on the native model. ``progress(done, total)`` sees the bytes fetched.
    """
    mlflow = _mlflow()
    sigs = validate_signatures(signatures)
    chosen = _choose_flavor(flavor, sigs)
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
        fetched = uris.fetch(uri, target, progress=progress)
        meta = _read_mlmodel(target, uri)
        native: str | None = None
        if chosen is None:
            _check_loadable(meta.flavors, uri)
        else:
            native = _resolve_native(chosen, meta.flavors, uri)
            obj = _load_flavor(native, target, repr(uri), ImportFailed)
            try:
                check_methods(obj, sigs, f"{native} model")
            except InvalidArgument as exc:
                raise InvalidArgument(f"cannot import MLflow model {uri!r}: {exc}") from exc
        draft.options.update({"flavor": chosen, "native_flavor": native})
        draft.context["framework_versions"]["mlflow"] = str(mlflow.__version__)
        draft.context["mlflow"] = _facts(meta, fetched)
    assert draft.model is not None
    return draft.model


def get(tag: Tag | str, *, store: Store | None = None) -> Model:
    """The stored model ``tag``, checked to be an imported MLflow model."""
    return get_model(tag, MODULE, store)


_EXTRAS = {"torch": "pytorch", "sklearn": "sklearn", "mlflow": "mlflow"}


def _load_flavor(
    flavor: str | None, model_dir: Path, what: str, error: type[TiffinError] = TiffinError
) -> Any:
    """Load ``model_dir`` as pyfunc (``None``) or with a native flavor's ``load_model``."""
    mlflow = _mlflow()
    try:
        if flavor is None:
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
            f"{uris._one_line(str(exc))}"
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
    model = get_model(tag_or_model, MODULE, store)
    model_dir = Path(model.path_of(MLFLOW_MODEL_FOLDER))
    what = f"'{model.tag}'"
    chosen = None if flavor in _PYFUNC_SPELLINGS else _choose_flavor(flavor, {})
    native = None
    if chosen is not None:
        from mlflow.models import Model as MLflowModel

        flavors = MLflowModel.load(str(model_dir / uris.MLMODEL)).flavors
        recorded = model.info.options.get("native_flavor")
        native = recorded if chosen == "native" and recorded in NATIVE_FLAVORS else None
        native = native or _resolve_native(chosen, flavors, what)
    warn_version_mismatch(model)
    return _load_flavor(native, model_dir, what)


def load_native(tag_or_model: Tag | str | Model, *, store: Store | None = None) -> Any:
    """The native object of a model imported with a native flavor (for runners)."""
    model = get_model(tag_or_model, MODULE, store)
    native = model.info.options.get("native_flavor")
    if not native:
        raise InvalidArgument(
            f"model '{model.tag}' was imported to run as python_function; "
            "load it with tiffin.mlflow.load_model, or re-import it with flavor='native'"
        )
    return load_model(model, flavor=str(native))


# -- version check -----------------------------------------------------------------------------

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _pinned_requirements(path: Path) -> dict[str, str]:
    """``{normalised package name: version}`` for every ``name==version`` line."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return pins
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        for spec in req.specifier:
            if spec.operator in ("==", "==="):
                pins[canonicalize_name(req.name)] = spec.version
    return pins


def _major_minor(version: str) -> tuple[int, ...] | None:
    from packaging.version import InvalidVersion, Version

    try:
        return Version(version.replace(".*", "")).release[:2]
    except InvalidVersion:
        return None


def version_mismatches(model: Model) -> list[str]:
    """``"pkg X.Y.Z (installed A.B.C)"`` for each package that matters and differs in
    major/minor from the model's ``requirements.txt``: mlflow, numpy, scikit-learn and the
    model's framework."""
    from packaging.utils import canonicalize_name

    model_dir = Path(model.path_of(MLFLOW_MODEL_FOLDER))
    pins = _pinned_requirements(model_dir / "requirements.txt")
    if not pins:
        return []
    flavors = model.info.context.get("mlflow", {}).get("flavors") or []
    loader = str(model.info.context.get("mlflow", {}).get("loader_module") or "")
    names = set(flavors) | {loader.removeprefix("mlflow.")}
    frameworks = [FLAVOR_PACKAGES[f] for f in sorted(names) if f in FLAVOR_PACKAGES]
    packages = [*_ALWAYS_CHECKED, *frameworks]
    out: list[str] = []
    for package in dict.fromkeys(canonicalize_name(p) for p in packages):
        wanted = pins.get(package)
        if wanted is None:
            continue
        try:
            installed = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{package} {wanted} (not installed)")
            continue
        if _major_minor(wanted) != _major_minor(installed):
            out.append(f"{package} {wanted} (installed {installed})")
    return out


def warn_version_mismatch(model: Model) -> None:
    """Log one warning line, once per model per process, if :func:`version_mismatches`."""
    key = model.path
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    mismatches = version_mismatches(model)
    if mismatches:
        logger.warning(
            "tiffin: model '%s' was saved with %s; results may differ "
            "(see %s/requirements.txt)",
            model.tag,
            ", ".join(mismatches),
            MLFLOW_MODEL_FOLDER,
        )


__all__ = [
    "MLFLOW_MODEL_FOLDER",
    "MODULE",
    "NATIVE_FLAVORS",
    "get",
    "get_runnable",
    "import_model",
    "load_model",
    "load_native",
    "version_mismatches",
]
