"""``model.yaml``: what the store records about one model (:class:`ModelInfo`), and the
checks every user-supplied field passes before it is written.

``signatures`` is BentoML's name for a model's per-method batch settings,
``{method: {batchable, batch_dim}}`` (see :mod:`tiffin.batch_settings`); it is not an
MLflow signature, which tiffin records under ``context.mlflow.signature``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tiffin.batch_settings import check_batch_dim
from tiffin.exceptions import CorruptEntry, InvalidArgument, TiffinError
from tiffin.store.versioned import load_yaml_file
from tiffin.tag import Tag

__all__ = [
    "API_VERSION",
    "MODEL_FILE",
    "ModelInfo",
    "validate_labels",
    "validate_metadata",
    "validate_signatures",
]

MODEL_FILE = "model.yaml"
API_VERSION = "v1"
_SIGNATURE_KEYS = {"batchable", "batch_dim"}


# -- validation of user-supplied fields -----------------------------------------------------


def validate_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    if labels is None:
        return {}
    if not isinstance(labels, Mapping):
        raise InvalidArgument(
            f"labels must be a mapping of str to str, got {type(labels).__name__}"
        )
    for key, value in labels.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise InvalidArgument(
                f"labels must map str to str; label {key!r} has a {type(value).__name__} value"
            )
    return {str(k): str(v) for k, v in labels.items()}


def _jsonable(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool):
        return value if value is None else bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidArgument(f"metadata keys must be strings; {where} has key {key!r}")
            out[str(key)] = _jsonable(item, f"{where}.{key}")
        return out
    if isinstance(value, list | tuple):
        return [_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return _jsonable(value.item(), where)  # numpy scalar
    raise InvalidArgument(
        f"metadata must hold JSON-able values; {where} is a {type(value).__name__}"
    )


def validate_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidArgument(f"metadata must be a mapping, got {type(metadata).__name__}")
    return _jsonable(metadata, "metadata")


def validate_signatures(
    signatures: Mapping[str, Mapping[str, Any]] | None,
    default: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Normalise ``{method: {batchable, batch_dim}}``; unknown keys are errors."""
    if signatures is None:
        signatures = default or {"predict": {"batchable": False}}
    if not isinstance(signatures, Mapping) or not signatures:
        raise InvalidArgument("signatures must be a non-empty mapping of method name to options")
    out: dict[str, dict[str, Any]] = {}
    for method, options in signatures.items():
        if not isinstance(method, str) or not method.isidentifier() or method.startswith("_"):
            raise InvalidArgument(f"signature method {method!r} is not a public method name")
        options = options or {}
        if not isinstance(options, Mapping):
            raise InvalidArgument(
                f"signature of {method!r} must be a mapping, e.g. {{'batchable': True}}"
            )
        unknown = set(options) - _SIGNATURE_KEYS
        if unknown:
            raise InvalidArgument(
                f"unknown key(s) {sorted(unknown)} in signature of {method!r}; "
                f"allowed: {sorted(_SIGNATURE_KEYS)}"
            )
        batchable = options.get("batchable", False)
        if not isinstance(batchable, bool):
            raise InvalidArgument(f"signature of {method!r}: batchable must be true or false")
        try:
            dim = check_batch_dim(options.get("batch_dim", 0))
        except InvalidArgument as exc:
            raise InvalidArgument(f"signature of {method!r}: {exc}") from None
        batch_dim = list(dim) if isinstance(dim, tuple) else dim  # YAML keeps a pair as a list
        out[method] = {"batchable": batchable, "batch_dim": batch_dim}
    return out


# -- model.yaml ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """Everything ``model.yaml`` records about one stored model."""

    name: str
    version: str
    module: str
    creation_time: dt.datetime
    api_version: str = API_VERSION
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    signatures: dict[str, dict[str, Any]] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)

    @property
    def tag(self) -> Tag:
        return Tag(self.name, self.version)

    @property
    def framework(self) -> str:
        """The framework name, ``mlflow`` for ``module: tiffin.mlflow``."""
        return self.module.removeprefix("tiffin.")

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "module": self.module,
            "api_version": self.api_version,
            "creation_time": self.creation_time.isoformat(),
            "labels": dict(self.labels),
            "metadata": dict(self.metadata),
            "options": dict(self.options),
            "signatures": {k: dict(v) for k, v in self.signatures.items()},
            "context": dict(self.context),
        }

    def dump(self, path: Path) -> None:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        path.write_text(text, encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> ModelInfo:
        """Build from parsed YAML; anything off is a :class:`CorruptEntry` naming ``source``."""
        try:
            missing = {"name", "version", "module", "creation_time"} - set(data)
            if missing:
                raise ValueError(f"missing key(s) {sorted(missing)}")
            for key in ("name", "version", "module", "api_version"):
                if key in data and not isinstance(data[key], str):
                    raise ValueError(f"{key} must be a string, found {type(data[key]).__name__}")
            created = data["creation_time"]
            if isinstance(created, str):
                created = dt.datetime.fromisoformat(created)
            if not isinstance(created, dt.datetime):
                raise ValueError("creation_time is not an ISO 8601 timestamp")
            if created.tzinfo is None:
                created = created.replace(tzinfo=dt.UTC)
            module = data["module"]
            if not isinstance(module, str) or not module.startswith("tiffin."):
                raise ValueError(f"module {module!r} is not a tiffin framework module")
            tag = Tag(data["name"], data["version"])
            for key in ("labels", "metadata", "options", "signatures", "context"):
                if not isinstance(data.get(key) or {}, dict):
                    raise ValueError(f"{key} must be a mapping")
            return cls(
                name=tag.name,
                version=str(tag.version),
                module=module,
                creation_time=created,
                api_version=str(data.get("api_version", API_VERSION)),
                labels=validate_labels(data.get("labels")),
                metadata=dict(data.get("metadata") or {}),
                options=dict(data.get("options") or {}),
                signatures=validate_signatures(data.get("signatures")),
                context=dict(data.get("context") or {}),
            )
        except (ValueError, TypeError, TiffinError) as exc:
            raise CorruptEntry(f"{source} is not a valid model.yaml: {exc}") from exc

    @classmethod
    def load(cls, path: Path) -> ModelInfo:
        return cls.from_dict(load_yaml_file(path), str(path))
