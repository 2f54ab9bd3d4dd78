"""Models in the store: :class:`Model`, :func:`create` (what framework modules save through),
and the functions behind ``tiffin.models``: :func:`get`, :func:`list_models` (public name
``list``), :func:`scan`, :func:`delete`.

A model is a version directory of the model store (``$TIFFIN_HOME/models/NAME/VERSION/``)
holding ``model.yaml`` (:mod:`tiffin.store.model_info`) and the framework's files. It appears
whole or not at all (:mod:`tiffin.store.versioned`).

A process that serves a built tiffin looks models up in that tiffin's own ``models/`` and
nowhere else (:func:`use_bundled_models`): what it serves is what was built, on any machine.
Saving still writes to ``$TIFFIN_HOME/models``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import platform
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiffin._version import __version__
from tiffin.exceptions import CorruptEntry, InvalidArgument, NotFound, UnknownFramework
from tiffin.store.model_info import (
    MODEL_FILE,
    ModelInfo,
    validate_labels,
    validate_metadata,
    validate_signatures,
)
from tiffin.store.versioned import BrokenEntry, Store, home
from tiffin.tag import Tag

if TYPE_CHECKING:
    from tiffin.runner.runner import Runner

__all__ = [
    "CUSTOM_OBJECTS_FILE",
    "MODEL_FILE",
    "BrokenEntry",
    "Model",
    "ModelDraft",
    "ModelInfo",
    "base_context",
    "create",
    "default_store",
    "delete",
    "file_sha256",
    "get",
    "get_saved_with",
    "list_models",
    "read_verified",
    "scan",
    "use_bundled_models",
]

CUSTOM_OBJECTS_FILE = "custom_objects.pkl"
CUSTOM_OBJECTS_SHA256 = "custom_objects_sha256"  # key in options
#: the frameworks a model may name in model.yaml as ``module: tiffin.<name>`` (their code
#: lives in tiffin.frameworks, whose registry maps each name to its module)
FRAMEWORKS = ("mlflow", "picklable_model", "pytorch", "sklearn")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, hex; recorded at save time for every pickle tiffin will load."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_verified(path: Path, expected: object) -> bytes:
    """The bytes of ``path``, checked against the SHA-256 recorded at save time.

    Whatever is unpickled must be these very bytes: reading the file once for the hash and
    again for pickle would let a file swapped in between be run unchecked.
    """
    data = path.read_bytes()
    if expected != hashlib.sha256(data).hexdigest():
        raise CorruptEntry(
            f"{path} does not match the SHA-256 recorded in model.yaml; refusing to unpickle it "
            "(the file changed after it was saved)"
        )
    return data


def default_store() -> Store:
    """The model store under ``$TIFFIN_HOME/models`` (read at call time)."""
    return Store(home() / "models", "model", MODEL_FILE)


#: the model store of the built tiffin this process serves (see use_bundled_models)
_bundled: Store | None = None


def use_bundled_models(root: Path | str | None, owner: str = "") -> None:
    """Look models up in ``root`` (a built tiffin's ``models/``, owned by tiffin ``owner``)
    instead of ``$TIFFIN_HOME/models`` from now on in this process; None: the home store again.

    Only lookups (:func:`get`, :func:`scan`, and what reads through them) change; a model the
    tiffin does not hold is not found, with a hint to add it to the build.
    """
    global _bundled
    _bundled = None if root is None else Store(
        root, "model", MODEL_FILE,
        hint=f"the built tiffin {owner or root} holds only the models it was built with: list "
        "this one under `models:` in tiffinfile.yaml (or use it in a runner) and build again",
    )


def _lookup_store() -> Store:
    return _bundled if _bundled is not None else default_store()


def check_module(module: str) -> str:
    """The framework name of ``tiffin.<name>`` (or a bare name) if tiffin knows it."""
    name = module.removeprefix("tiffin.")
    if name not in FRAMEWORKS:
        raise UnknownFramework(
            f"unknown framework module {module!r}; tiffin knows "
            + ", ".join(f"tiffin.{n}" for n in FRAMEWORKS)
        )
    return name


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
                data = read_verified(file, self.info.options.get(CUSTOM_OBJECTS_SHA256))
                self._custom_objects = cloudpickle.loads(data)
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
        device: str | None = None,
        precision: str | None = None,
    ) -> Runner:
        """A :class:`tiffin.Runner` for this model; its methods are the model's signatures.

        ``embedded=True``: under ``--workers N`` the runner loads in every API worker instead
        of in runner processes the workers share (see :class:`tiffin.Runner`). ``device``
        (``auto``, ``cpu``, ``cuda``, ``cuda:N``) and ``precision`` (``float16``,
        ``bfloat16``) place a model that can run on a GPU (PyTorch ones).
        """
        # the one import up the layers (a documented exception of the layers contract): the
        # store runs nothing itself; a model's runner is built by the framework that saved it
        from tiffin.frameworks import runner_for

        return runner_for(
            self,
            name=name,
            max_batch_size=max_batch_size,
            max_latency_ms=max_latency_ms,
            method_configs=method_configs,
            embedded=embedded,
            device=device,
            precision=precision,
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
    check_module(module)
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
    """The model named by ``tag`` (``name``, ``name:latest`` or ``name:version``).

    A model that is not in the default store is pulled from ``TIFFIN_REMOTE`` when it is set
    (checked before it enters the store: :mod:`tiffin.store.remote`); never while a built
    tiffin is served (its lookups see its own ``models/`` only).
    """
    try:
        entry = (store or _lookup_store()).get(tag)
    except NotFound:
        from tiffin.store.remote import REMOTE_ENV, pull_model

        if store is not None or _bundled is not None or not os.environ.get(REMOTE_ENV, "").strip():
            raise
        return pull_model(tag)
    return Model.from_path(entry.path)


def get_saved_with(
    tag_or_model: Tag | str | Model, module: str, store: Store | None = None
) -> Model:
    """The stored model ``tag_or_model``, checked to have been saved by framework ``module``."""
    model = tag_or_model if isinstance(tag_or_model, Model) else get(tag_or_model, store=store)
    if model.info.module != module:
        raise InvalidArgument(
            f"model '{model.tag}' was saved with {model.info.module}, not {module}; "
            f"load it with {model.info.module}.load_model"
        )
    return model


def scan(
    name: str | None = None, *, store: Store | None = None
) -> tuple[list[Model], list[BrokenEntry]]:
    """Every readable model (newest first) and every broken entry."""
    store = store or _lookup_store()
    found, broken = store.scan(None if name is None else Tag(name).name, Model.from_path)
    found.sort(key=lambda m: (m.creation_time, m.tag.version or ""), reverse=True)
    return found, broken


def list_models(name: str | None = None, *, store: Store | None = None) -> list[Model]:
    """Models in the store, newest first; broken entries are skipped (see :func:`scan`)."""
    return scan(name, store=store)[0]


def delete(tag: Tag | str, *, store: Store | None = None) -> Tag:
    """Delete one version; ``latest`` then names the newest remaining one."""
    return (store or default_store()).delete(tag)
