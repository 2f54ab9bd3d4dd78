"""Built tiffins in the store: ``$TIFFIN_HOME/tiffins/NAME/VERSION/``, what ``tiffin build``
writes (:mod:`tiffin.building`) and ``tiffin serve NAME:VERSION`` serves.

A built tiffin is one directory that moves as a unit::

    tiffin.yaml          what was built: service, APIs, models, runners, versions, options
    README.md            how to serve it and build its image
    src/                 the build context's included files (the service's code)
    models/NAME/VERSION/ copies of the models it serves (a model store of its own)
    apis/openapi.yaml    the OpenAPI document its server serves
    env/python/          requirements.txt, python_version.txt, wheels/
    env/conda/           environment.yml (when asked for)
    env/docker/          Dockerfile (and the setup script, when given)

Entries obey the model store's rules (:mod:`tiffin.store.versioned`): written whole into a
staging directory and renamed into place under a lock, versions that sort by time, ``latest``.
``tiffin.yaml`` is read back through :class:`TiffinInfo`; anything off is a
:class:`~tiffin.exceptions.CorruptEntry` naming the file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from tiffin.exceptions import CorruptEntry
from tiffin.store.versioned import BrokenEntry, Store, home, load_yaml_file
from tiffin.tag import RULE, Tag, is_valid_part

__all__ = [
    "DOCKERFILE",
    "INFO_FILE",
    "MODELS_DIR",
    "SRC_DIR",
    "BuiltTiffin",
    "TiffinInfo",
    "default_store",
    "delete",
    "get",
    "scan",
]

INFO_FILE = "tiffin.yaml"
SRC_DIR = "src"
MODELS_DIR = "models"
DOCKERFILE = "env/docker/Dockerfile"


class TiffinInfo(BaseModel):
    """Everything ``tiffin.yaml`` records about one built tiffin (unknown keys are kept)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    version: str
    #: the service target inside ``src/``: ``module:attr`` or ``path.py:attr``
    service: str
    creation_time: dt.datetime
    tiffin_version: str = ""
    python_version: str = ""
    description: str = ""
    labels: dict[str, str] = {}
    apis: list[dict[str, Any]] = []
    models: list[dict[str, Any]] = []
    runners: list[dict[str, Any]] = []
    python: dict[str, Any] = {}
    conda: dict[str, Any] | None = None
    docker: dict[str, Any] = {}

    @field_validator("name", "version")
    @classmethod
    def _tag_part(cls, value: str) -> str:
        if not is_valid_part(value):
            raise ValueError(f"{value!r} is not {RULE}")
        return value

    @field_validator("creation_time")
    @classmethod
    def _aware(cls, value: dt.datetime) -> dt.datetime:
        return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)

    @property
    def tag(self) -> Tag:
        return Tag(self.name, self.version)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def dump(self, path: Path) -> None:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        path.write_text(text, encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> TiffinInfo:
        data = load_yaml_file(path)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'file'}: {error['msg']}"
                for error in exc.errors()
            )
            raise CorruptEntry(f"{path} is not a valid {INFO_FILE}: {problems}") from None


@dataclass(frozen=True)
class BuiltTiffin:
    """A built tiffin in the store (or anywhere on disk): its directory and ``tiffin.yaml``."""

    info: TiffinInfo
    path: Path

    @classmethod
    def from_path(cls, path: Path | str, *, check_place: bool = True) -> BuiltTiffin:
        path = Path(path)
        info = TiffinInfo.load(path / INFO_FILE)
        if check_place and (info.name, info.version) != (path.parent.name, path.name):
            raise CorruptEntry(
                f"{path / INFO_FILE} names {info.tag} but lives at {path.parent.name}:{path.name}"
            )
        return cls(info, path)

    @property
    def tag(self) -> Tag:
        return self.info.tag

    @property
    def src_dir(self) -> Path:
        return self.path / SRC_DIR

    @property
    def models_dir(self) -> Path:
        return self.path / MODELS_DIR

    @property
    def dockerfile(self) -> Path:
        return self.path / DOCKERFILE

    @property
    def creation_time(self) -> dt.datetime:
        return self.info.creation_time

    def size_bytes(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self.path):
            for name in files:
                with contextlib.suppress(OSError):
                    total += os.lstat(os.path.join(root, name)).st_size
        return total


def default_store() -> Store:
    """The store of built tiffins under ``$TIFFIN_HOME/tiffins`` (read at call time)."""
    return Store(
        home() / "tiffins", "tiffin", INFO_FILE, hint="run `tiffin list` to see what is there"
    )


def get(tag: Tag | str, *, store: Store | None = None) -> BuiltTiffin:
    """The built tiffin ``tag`` names (``name``, ``name:latest`` or ``name:version``)."""
    entry = (store or default_store()).get(tag)
    return BuiltTiffin.from_path(entry.path)


def scan(
    name: str | None = None, *, store: Store | None = None
) -> tuple[list[BuiltTiffin], list[BrokenEntry]]:
    """Every readable built tiffin (newest first) and every broken entry."""
    store = store or default_store()
    found, broken = store.scan(None if name is None else Tag(name).name, BuiltTiffin.from_path)
    found.sort(key=lambda t: (t.creation_time, t.tag.version or ""), reverse=True)
    return found, broken


def delete(tag: Tag | str, *, store: Store | None = None) -> Tag:
    """Delete one version; ``latest`` then names the newest remaining one."""
    return (store or default_store()).delete(tag)
