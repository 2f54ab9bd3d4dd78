"""Moving a model between machines: one ``.tiffinmodel`` archive (gzip'd tar) per model.

Import refuses, before writing anything, absolute paths, ``..``, links leading outside the
archive and device files, and reads a compressed stream to its end so that a truncated or
corrupted file fails its length and CRC checks; the model then enters the store like any save
(staged, renamed into place under a lock).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
import zlib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from tiffin.exceptions import CorruptEntry, ExportFailed, InvalidArchive, NotFound
from tiffin.store.model_info import MODEL_FILE, ModelInfo
from tiffin.store.models import Model, default_store, get
from tiffin.store.versioned import Store
from tiffin.tag import Tag

if TYPE_CHECKING:
    import tarfile

__all__ = ["ARCHIVE_SUFFIX", "export_model", "import_model"]

ARCHIVE_SUFFIX = ".tiffinmodel"


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
        raise ExportFailed(f"cannot write {target}: {exc.strerror or exc}") from exc
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
