"""Whether an imported MLflow model's pinned requirements match what is installed.

Loading warns once per model per process, in one line, when mlflow, numpy, scikit-learn or
the model's own framework differ in major/minor version from the model's
``requirements.txt``: results may differ, and the user should know why.
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from tiffin.frameworks.mlflow.loading import MLFLOW_MODEL_FOLDER

if TYPE_CHECKING:
    from tiffin.store.models import Model

__all__ = ["FLAVOR_PACKAGES", "version_mismatches", "warn_version_mismatch"]

logger = logging.getLogger("tiffin.frameworks.mlflow")

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
            "tiffin: model '%s' was saved with %s; results may differ (see %s/requirements.txt)",
            model.tag,
            ", ".join(mismatches),
            MLFLOW_MODEL_FOLDER,
        )
