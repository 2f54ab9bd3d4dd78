"""Models in the store: ``model.yaml``, :class:`Model`, and the ``tiffin.models`` API.

Framework modules save through :func:`create`; users find models with :func:`get` and
:func:`list`, and move them between machines with :func:`export_model`/:func:`import_model`.
"""

from __future__ import annotations

import builtins
import contextlib
import datetime as dt
import hashlib
import os
import platform
import posixpath
import uuid
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml

from tiffin import frameworks
from tiffin._version import __version__
from tiffin.exceptions import (
    CorruptEntry,
    InvalidArchive,
    InvalidArgument,
    NotFound,
    TiffinError,
)
from tiffin.store import Store, home, load_yaml_file
from tiffin.tag import RULE, Tag, is_valid_part

if TYPE_CHECKING:
    import tarfile

    from tiffin.runner import Runner

MODEL_FILE = "model.yaml"
CUSTOM_OBJECTS_FILE = "custom_objects.pkl"
CUSTOM_OBJECTS_SHA256 = "custom_objects_sha256"  # key in options
API_VERSION = "v1"
ARCHIVE_SUFFIX = ".tiffinmodel"
_SIGNATURE_KEYS = {"batchable", "batch_dim"}


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, hex; recorded at save time for every pickle tiffin will load."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_store() -> Store:
    """The model store under ``$TIFFIN_HOME/models`` (read at call time)."""
    return Store(home() / "models", "model", MODEL_FILE)


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
    if isinstance(value, builtins.list | tuple):
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
        batch_dim = options.get("batch_dim", 0)
        if isinstance(batch_dim, builtins.list | tuple):
            if len(batch_dim) != 2 or not all(isinstance(d, int) for d in batch_dim):
                raise InvalidArgument(
                    f"signature of {method!r}: batch_dim must be an int or (input_dim, output_dim)"
                )
            batch_dim = [int(d) for d in batch_dim]
        elif not isinstance(batch_dim, int) or isinstance(batch_dim, bool):
            raise InvalidArgument(f"signature of {method!r}: batch_dim must be an int")
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


# -- Model -----------------------------------------------------------------------------------


class Model:
    """A model in the store: its tag, directory and ``model.yaml``."""

    def __init__(self, info: ModelInfo, path: Path | str) -> None:
        self.info = info
        self._path = Path(path)
        self._custom_objects: dict[str, Any] | None = None

    @classmethod
    def from_path(cls, path: Path | str) -> Model:
        path = Path(path)
        info = ModelInfo.load(path / MODEL_FILE)
        if (info.name, info.version) != (path.parent.name, path.name):
            raise CorruptEntry(
                f"{path / MODEL_FILE} names {info.tag} but lives at {path.parent.name}:{path.name}"
            )
        return cls(info, path)

    @property
    def tag(self) -> Tag:
        return self.info.tag

    @property
    def path(self) -> str:
        return str(self._path)

    def path_of(self, relative: str) -> str:
        return str(self._path / relative)

    @property
    def creation_time(self) -> dt.datetime:
        return self.info.creation_time

    @property
    def custom_objects(self) -> dict[str, Any]:
        if self._custom_objects is None:
            file = self._path / CUSTOM_OBJECTS_FILE
            if file.exists():
                import cloudpickle

                # unpickling runs code: load only the exact bytes that were saved
                if self.info.options.get(CUSTOM_OBJECTS_SHA256) != file_sha256(file):
                    raise CorruptEntry(
                        f"{file} does not match the SHA-256 recorded in model.yaml; refusing to "
                        "unpickle it (the file changed after it was saved)"
                    )
                with file.open("rb") as fh:
                    self._custom_objects = cloudpickle.load(fh)
            else:
                self._custom_objects = {}
        return self._custom_objects

    def size_bytes(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self._path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        return total

    def to_runner(
        self,
        *,
        name: str | None = None,
        max_batch_size: int | None = None,
        max_latency_ms: float | None = None,
        method_configs: Mapping[str, Mapping[str, Any]] | None = None,
        embedded: bool = False,
    ) -> Runner:
        """A :class:`tiffin.Runner` for this model; its methods are the model's signatures.

        ``embedded=True``: under ``--workers N`` the runner loads in every API worker instead
        of in runner processes the workers share (see :class:`tiffin.Runner`).
        """
        from tiffin.runner import Runner

        runnable = frameworks.load(self.info.module).get_runnable(self)
        return Runner(
            runnable,
            name=name or self.tag.name,
            models=[self],
            max_batch_size=max_batch_size,
            max_latency_ms=max_latency_ms,
            method_configs=method_configs,
            embedded=embedded,
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Model) and (self.tag, self.path) == (other.tag, other.path)

    def __hash__(self) -> int:
        return hash((self.tag, self.path))

    def __repr__(self) -> str:
        return f"Model(tag={str(self.tag)!r}, path={self.path!r})"


# -- creating --------------------------------------------------------------------------------


@dataclass
class ModelDraft:
    """What :func:`create` yields: write files into ``path``; fill ``options``/``context``."""

    tag: Tag
    path: Path
    options: dict[str, Any]
    context: dict[str, Any]
    model: Model | None = None


def base_context(framework_versions: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {
        "python_version": platform.python_version(),
        "tiffin_version": __version__,
        "framework_versions": dict(framework_versions or {}),
    }


@contextlib.contextmanager
def create(
    name: Tag | str,
    *,
    module: str,
    signatures: Mapping[str, Mapping[str, Any]] | None = None,
    labels: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
    custom_objects: Mapping[str, Any] | None = None,
    context: Mapping[str, Any] | None = None,
    store: Store | None = None,
) -> Iterator[ModelDraft]:
    """Save a new model version; it appears in the store only if the block succeeds.

    ``name`` may carry an explicit version (``"iris:v1"``); otherwise one is generated.
    """
    store = store or default_store()
    tag = Tag.from_taglike(name)
    if tag.version is None:
        tag = tag.with_new_version()
    elif tag.is_latest:
        raise InvalidArgument("'latest' is not a version you can save under; omit the version")
    frameworks.load(module)  # validates the module name against the registry
    created = dt.datetime.now(dt.UTC)
    checked_signatures = validate_signatures(signatures)
    checked_labels = validate_labels(labels)
    checked_metadata = validate_metadata(metadata)
    if custom_objects is not None and not isinstance(custom_objects, Mapping):
        raise InvalidArgument("custom_objects must be a mapping of name to object")
    with store.staging() as staged:
        draft = ModelDraft(tag, staged, dict(options or {}), base_context())
        draft.context.update(context or {})
        yield draft
        if custom_objects:
            import cloudpickle

            objects_file = staged / CUSTOM_OBJECTS_FILE
            with objects_file.open("wb") as fh:
                cloudpickle.dump(dict(custom_objects), fh)
            draft.options[CUSTOM_OBJECTS_SHA256] = file_sha256(objects_file)
        info = ModelInfo(
            name=tag.name,
            version=str(tag.version),
            module=module,
            creation_time=created,
            labels=checked_labels,
            metadata=checked_metadata,
            options=draft.options,
            signatures=checked_signatures,
            context=draft.context,
        )
        info.dump(staged / MODEL_FILE)
        entry = store.commit(staged, tag)
        draft.model = Model(info, entry.path)


# -- the tiffin.models API -------------------------------------------------------------------


def get(tag: Tag | str, *, store: Store | None = None) -> Model:
    """The model named by ``tag`` (``name``, ``name:latest`` or ``name:version``)."""
    entry = (store or default_store()).get(tag)
    return Model.from_path(entry.path)


@dataclass(frozen=True)
class BrokenEntry:
    """A store entry that could not be read, and why."""

    tag: str
    path: str
    error: str


def scan(
    name: str | None = None, *, store: Store | None = None
) -> tuple[builtins.list[Model], builtins.list[BrokenEntry]]:
    """Every readable model (newest first) and every broken entry."""
    store = store or default_store()
    if name is not None:
        name = Tag(name).name
    found: builtins.list[Model] = []
    broken: builtins.list[BrokenEntry] = []
    for entry_name, version, path in store.version_dirs(name):
        tag = f"{entry_name}:{version}"
        if not (is_valid_part(entry_name) and is_valid_part(version)):
            error = f"directory {path} is not a valid tag: a name or version is {RULE}"
            broken.append(BrokenEntry(tag, str(path), error))
            continue
        try:
            found.append(Model.from_path(path))
        except TiffinError as exc:
            broken.append(BrokenEntry(tag, str(path), str(exc)))
    found.sort(key=lambda m: (m.creation_time, m.tag.version or ""), reverse=True)
    return found, broken


def list(  # the public name is tiffin.models.list
    name: str | None = None, *, store: Store | None = None
) -> builtins.list[Model]:
    """Models in the store, newest first; broken entries are skipped (see :func:`scan`)."""
    return scan(name, store=store)[0]


def delete(tag: Tag | str, *, store: Store | None = None) -> Tag:
    """Delete one version; ``latest`` then names the newest remaining one."""
    return (store or default_store()).delete(tag)


def export_model(
    tag: Tag | str, path: str | os.PathLike[str], *, store: Store | None = None
) -> str:
    """Write the model as one archive; ``path`` is a file, or a directory to put it in."""
    model = get(tag, store=store)
    target = Path(path).expanduser()
    if target.is_dir():
        target = target / f"{model.tag.name}-{model.tag.version}{ARCHIVE_SUFFIX}"
    if not target.parent.is_dir():
        raise NotFound(f"cannot export to {target}: directory {target.parent} does not exist")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    import tarfile  # here, not at the top: `tiffin models list` never needs it

    try:
        with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
            for child in sorted(Path(model.path).iterdir()):
                tar.add(child, arcname=child.name)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise TiffinError(f"cannot write {target}: {exc.strerror or exc}") from exc
    return str(target)


def _check_member(member: tarfile.TarInfo, archive: str) -> None:
    """Refuse absolute paths, '..', links leading outside, devices and other special files."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or ".." in PurePosixPath(name).parts:
        raise InvalidArchive(f"{archive}: unsafe member path {member.name!r}; nothing was imported")
    if member.issym() or member.islnk():
        base = posixpath.dirname(name) if member.issym() else ""
        target = posixpath.normpath(posixpath.join(base, member.linkname))
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise InvalidArchive(
                f"{archive}: member {member.name!r} links outside the archive "
                f"({member.linkname!r}); nothing was imported"
            )
    elif not (member.isfile() or member.isdir()):
        raise InvalidArchive(
            f"{archive}: member {member.name!r} is a device or special file; nothing was imported"
        )


def import_model(path: str | os.PathLike[str], *, store: Store | None = None) -> Model:
    """Add a model from an archive written by :func:`export_model`."""
    store = store or default_store()
    source = Path(path).expanduser()
    if not source.is_file():
        raise NotFound(f"archive {source} does not exist")
    import tarfile

    with store.staging() as staged:
        try:
            with tarfile.open(source, "r:*") as tar:
                members = tar.getmembers()
                for member in members:
                    _check_member(member, str(source))
                # tarfile stops at the end-of-archive blocks, before the gzip trailer: read on to
                # the end so a stream cut short or corrupted fails its length and CRC check
                assert tar.fileobj is not None
                while tar.fileobj.read(1 << 20):
                    pass
                tar.extractall(staged, members=members, filter="data")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise InvalidArchive(
                f"{source} is not a readable tiffin model archive ({exc}); nothing was imported"
            ) from exc
        if not (staged / MODEL_FILE).is_file():
            raise InvalidArchive(f"{source} holds no {MODEL_FILE}; nothing was imported")
        try:
            info = ModelInfo.load(staged / MODEL_FILE)
        except CorruptEntry as exc:
            raise InvalidArchive(
                f"{source} holds a {MODEL_FILE} tiffin cannot read ({exc}); nothing was imported"
            ) from exc
        if info.tag.is_latest:
            raise InvalidArchive(f"{source} names version 'latest'; nothing was imported")
        entry = store.commit(staged, info.tag)
    return Model(info, entry.path)


__all__ = [
    "BrokenEntry",
    "Model",
    "ModelDraft",
    "ModelInfo",
    "create",
    "default_store",
    "delete",
    "export_model",
    "get",
    "import_model",
    "list",
    "scan",
]
