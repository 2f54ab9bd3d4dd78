"""A generic versioned store on disk: ``<root>/<name>/<version>/`` plus ``<name>/latest``.

Entries appear whole or not at all: a new entry is written into ``<root>/.tmp/`` (the same
filesystem) and renamed into place under a per-name file lock. ``latest`` is a small text file
naming the newest version by creation time; it is rewritten atomically and recomputed when it
is stale or when the version it names is deleted.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml
from filelock import FileLock

from tiffin.exceptions import (
    AlreadyExists,
    CorruptEntry,
    InvalidArgument,
    NotFound,
    StoreError,
    TiffinError,
)
from tiffin.tag import LATEST, RULE, Tag, is_valid_part

__all__ = [
    "BrokenEntry",
    "Entry",
    "Store",
    "home",
    "load_yaml_file",
]

T = TypeVar("T")

_TMP = ".tmp"
_LOCKS = ".locks"
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def home() -> Path:
    """The tiffin home directory: ``$TIFFIN_HOME``, default ``~/tiffin``."""
    return Path(os.environ.get("TIFFIN_HOME") or Path.home() / "tiffin").expanduser()


def load_yaml_file(path: Path) -> dict:
    """Read a store metadata file; any failure is a :class:`CorruptEntry` naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CorruptEntry(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CorruptEntry(f"cannot read {path}: {exc}") from exc
    try:
        data = yaml.load(text, Loader=_YAML_LOADER)
    except yaml.YAMLError as exc:
        raise CorruptEntry(f"{path} is not valid YAML: {exc}".replace("\n", " ")) from exc
    if not isinstance(data, dict):
        raise CorruptEntry(f"{path} must hold a mapping, found {type(data).__name__}")
    return data


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class Entry:
    """One version directory in a store."""

    tag: Tag
    path: Path


@dataclass(frozen=True)
class BrokenEntry:
    """A store entry that could not be read, and why."""

    tag: str
    path: str
    error: str


class Store:
    """Versioned entries of one kind (models, tiffins) under ``root``."""

    def __init__(
        self, root: Path | str, kind: str, info_file: str, *, hint: str | None = None
    ) -> None:
        self.root = Path(root)
        self.kind = kind
        self.info_file = info_file
        #: what a "not found" error suggests doing
        self.hint = hint or f"run `tiffin {kind}s list` to see what is there"

    def __repr__(self) -> str:
        return f"Store({str(self.root)!r})"

    # -- paths and locks ------------------------------------------------------------------

    def _not_a_directory(self, path: Path) -> StoreError:
        return StoreError(
            f"{self.kind} store {self.root} cannot be used: {path} is not a directory; "
            "point TIFFIN_HOME at a directory"
        )

    def _root_exists(self) -> bool:
        """Whether the store directory exists; a file in its place (or above it) is an error.

        ``Path.exists()`` says False for ``file/models`` when ``file`` is a regular file, which
        would make a misconfigured ``TIFFIN_HOME`` look like an empty store.
        """
        if self.root.is_dir():
            return True
        for path in (self.root, *self.root.parents):
            if path.exists():
                if not path.is_dir():
                    raise self._not_a_directory(path)
                return False
        return False

    def _ensure_root(self) -> None:
        self._root_exists()
        try:
            (self.root / _TMP).mkdir(parents=True, exist_ok=True)
            (self.root / _LOCKS).mkdir(exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot write to {self.kind} store {self.root}: {exc.strerror}; "
                "check TIFFIN_HOME and its permissions"
            ) from exc

    def lock(self, name: str) -> FileLock:
        return FileLock(str(self.root / _LOCKS / f"{name}.lock"))

    def _sweep_tmp(self) -> None:
        """Remove leftovers of saves whose process died (killed mid-save)."""
        with contextlib.suppress(OSError):
            for child in (self.root / _TMP).iterdir():
                pid_text = child.name.split("-", 1)[0]
                if pid_text.isdigit() and not _pid_alive(int(pid_text)):
                    shutil.rmtree(child, ignore_errors=True)

    def _creation_time(self, path: Path) -> str:
        try:
            return str(load_yaml_file(path / self.info_file).get("creation_time", ""))
        except CorruptEntry:
            return ""

    # -- reading --------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Names of the directories under the root, as found on disk (not validated)."""
        if not self._root_exists():
            return []
        try:
            return sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name[0] != ".")
        except OSError as exc:
            raise StoreError(f"cannot read {self.kind} store {self.root}: {exc}") from exc

    def scan(
        self, name: str | None, load: Callable[[Path], T]
    ) -> tuple[list[T], list[BrokenEntry]]:
        """Every entry (of ``name``, or all) read with ``load``, and every one that is not a
        valid tag or that ``load`` refuses (a TiffinError), with why."""
        found: list[T] = []
        broken: list[BrokenEntry] = []
        for entry_name, version, path in self.version_dirs(name):
            tag = f"{entry_name}:{version}"
            if not (is_valid_part(entry_name) and is_valid_part(version)):
                error = f"directory {path} is not a valid tag: a name or version is {RULE}"
                broken.append(BrokenEntry(tag, str(path), error))
                continue
            try:
                found.append(load(path))
            except TiffinError as exc:
                broken.append(BrokenEntry(tag, str(path), str(exc)))
        return found, broken

    def version_dirs(self, name: str | None = None) -> Iterator[tuple[str, str, Path]]:
        """Every ``(name, version, path)`` directory as found on disk, valid tag or not."""
        for entry_name in [name] if name else self.names():
            base = self.root / entry_name
            if not base.is_dir():
                continue
            try:
                children = sorted(base.iterdir())
            except OSError as exc:
                raise StoreError(f"cannot read {base}: {exc}") from exc
            for child in children:
                if child.name[0] != "." and child.is_dir():
                    yield entry_name, child.name, child

    def entries(self, name: str | None = None) -> Iterator[Entry]:
        """Every version directory whose name and version obey the tag rule (not sorted).

        Directories made by hand with other names (``Iris``, ``my model``) are left out rather
        than lower-cased into a tag that does not match their path; see :meth:`version_dirs`.
        """
        for entry_name, version, path in self.version_dirs(name):
            if is_valid_part(entry_name) and is_valid_part(version):
                yield Entry(Tag(entry_name, version), path)

    def _recompute_latest(self, name: str) -> str | None:
        newest = max(
            self.entries(name),
            key=lambda e: (self._creation_time(e.path), e.tag.version),
            default=None,
        )
        latest_file = self.root / name / LATEST
        if newest is None:
            with contextlib.suppress(OSError):
                latest_file.unlink()
            return None
        self._write_latest(name, str(newest.tag.version))
        return newest.tag.version

    def _write_latest(self, name: str, version: str) -> None:
        target = self.root / name / LATEST
        tmp = target.with_name(f".{LATEST}.{uuid.uuid4().hex}")
        tmp.write_text(version + "\n", encoding="utf-8")
        os.replace(tmp, target)

    def resolve(self, tag: Tag | str) -> Tag:
        """Turn ``name`` or ``name:latest`` into the concrete newest version."""
        tag = Tag.from_taglike(tag)
        if not tag.is_latest:
            return tag
        self._root_exists()
        latest_file = self.root / tag.name / LATEST
        version: str | None
        with contextlib.suppress(OSError):
            version = latest_file.read_text(encoding="utf-8").strip()
            if is_valid_part(version) and (self.root / tag.name / version).is_dir():
                return Tag(tag.name, version)
        if not (self.root / tag.name).is_dir():
            raise self._not_found(tag)
        try:
            with self.lock(tag.name):
                version = self._recompute_latest(tag.name)
        except OSError:  # read-only store: compute without writing
            version = max(
                ((self._creation_time(e.path), e.tag.version) for e in self.entries(tag.name)),
                default=(None, None),
            )[1]
        if version is None:
            raise self._not_found(tag)
        return Tag(tag.name, version)

    def get(self, tag: Tag | str) -> Entry:
        resolved = self.resolve(tag)
        self._root_exists()
        path = self.root / resolved.name / str(resolved.version)
        if not path.is_dir():
            raise self._not_found(resolved)
        return Entry(resolved, path)

    def _not_found(self, tag: Tag) -> NotFound:
        return NotFound(f"{self.kind} '{tag}' not found in store {self.root}; {self.hint}")

    # -- writing --------------------------------------------------------------------------

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A fresh temporary directory on the store's filesystem; removed unless committed."""
        self._ensure_root()
        self._sweep_tmp()
        tmp = self.root / _TMP / f"{os.getpid()}-{uuid.uuid4().hex}"
        try:
            tmp.mkdir()
        except OSError as exc:
            raise StoreError(f"cannot write to {self.kind} store {self.root}: {exc}") from exc
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def commit(self, staged: Path, tag: Tag) -> Entry:
        """Move a complete staged directory into place as ``tag`` and update ``latest``."""
        if tag.version is None or tag.is_latest:
            raise InvalidArgument(f"cannot save {self.kind} '{tag}': it needs a concrete version")
        final = self.root / tag.name / tag.version
        try:
            with self.lock(tag.name):
                # inside the lock: a delete of the last version removes the empty name directory
                (self.root / tag.name).mkdir(exist_ok=True)
                if final.exists():
                    raise AlreadyExists(
                        f"{self.kind} '{tag}' already exists in store {self.root}; "
                        "omit the version to get a new one, or delete the old one first"
                    )
                os.rename(staged, final)
                latest_file = self.root / tag.name / LATEST
                current = latest_file.read_text().strip() if latest_file.is_file() else ""
                if not current or not (self.root / tag.name / current).is_dir():
                    self._recompute_latest(tag.name)
                elif (self._creation_time(final), tag.version) >= (
                    self._creation_time(self.root / tag.name / current),
                    current,
                ):
                    self._write_latest(tag.name, tag.version)
        except OSError as exc:
            raise StoreError(f"cannot write to {self.kind} store {self.root}: {exc}") from exc
        return Entry(tag, final)

    def delete(self, tag: Tag | str) -> Tag:
        entry = self.get(tag)
        name = entry.tag.name
        self._ensure_root()
        try:
            with self.lock(name):
                if not entry.path.is_dir():  # deleted by another process since get()
                    raise self._not_found(entry.tag)
                trash = self.root / _TMP / f"{os.getpid()}-del-{uuid.uuid4().hex}"
                os.rename(entry.path, trash)
                shutil.rmtree(trash, ignore_errors=True)
                if self._recompute_latest(name) is None:
                    with contextlib.suppress(OSError):
                        (self.root / name).rmdir()
        except OSError as exc:
            raise StoreError(f"cannot delete {entry.path}: {exc}") from exc
        return entry.tag
