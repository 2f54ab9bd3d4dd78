"""Moving store entries between machines as one file (gzip'd tar): a model
(``.tiffinmodel``) or a built tiffin (``.tiffin``, its models inside).

Import refuses, before writing anything: absolute paths and ``..``, every link (symbolic or
hard, inside the archive or not), device and other special files, sparse files, more than
``max_members`` members, and more than ``max_bytes`` in all once extracted (sizes come from
the members' headers, so a small archive that unpacks into a huge one is refused unopened).
It reads a compressed stream to its end, so that a truncated or corrupted file fails its
length and CRC checks; the entry then enters the store like any save (staged, renamed into
place under a lock). Export writes a temporary file beside the target and renames it.
"""

from __future__ import annotations

import contextlib
import os
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from tiffin.exceptions import CorruptEntry, ExportFailed, InvalidArchive, NotFound
from tiffin.store import tiffins
from tiffin.store.model_info import MODEL_FILE, ModelInfo
from tiffin.store.models import Model, default_store, get
from tiffin.store.versioned import Store
from tiffin.tag import Tag

if TYPE_CHECKING:
    import tarfile

__all__ = [
    "ARCHIVE_SUFFIX",
    "BUILT_SUFFIX",
    "MAX_BYTES",
    "MAX_MEMBERS",
    "Progress",
    "export_model",
    "export_tiffin",
    "import_model",
    "import_tiffin",
]

ARCHIVE_SUFFIX = ".tiffinmodel"
BUILT_SUFFIX = ".tiffin"
#: told (bytes done, bytes in all) as an archive is written or read
Progress = Callable[[int, int], None]
#: the most members an archive may hold
MAX_MEMBERS = 100_000
#: the most bytes an archive may unpack into (its members' sizes added up)
MAX_BYTES = 64 << 30


def export_model(
    tag: Tag | str, path: str | os.PathLike[str], *, store: Store | None = None,
    progress: Progress | None = None,
) -> str:
    """Write the model as one archive; ``path`` is a file, or a directory to put it in."""
    model = get(tag, store=store)
    return _export(Path(model.path), model.tag, path, ARCHIVE_SUFFIX, progress)


def export_tiffin(
    tag: Tag | str, path: str | os.PathLike[str], *, store: Store | None = None,
    progress: Progress | None = None,
) -> str:
    """Write a built tiffin (its models included) as one archive; ``path`` is a file, or a
    directory to put ``NAME-VERSION.tiffin`` in."""
    built = tiffins.get(tag, store=store)
    return _export(built.path, built.tag, path, BUILT_SUFFIX, progress)


def _export(
    source: Path, tag: Tag, path: str | os.PathLike[str], suffix: str, progress: Progress | None
) -> str:
    target = Path(path).expanduser()
    if target.is_dir():
        target = target / f"{tag.name}-{tag.version}{suffix}"
    if not target.parent.is_dir():
        raise NotFound(f"cannot export to {target}: directory {target.parent} does not exist")
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    import tarfile  # here, not at the top: `tiffin models list` never needs it

    # files and directories only (a store entry holds nothing else; import refuses the rest)
    paths = sorted(p for p in source.rglob("*") if not p.is_symlink())
    total = sum(p.stat().st_size for p in paths if p.is_file())
    done = 0
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
            for item in paths:
                tar.add(item, arcname=item.relative_to(source).as_posix(), recursive=False)
                if item.is_file():
                    done += item.stat().st_size
                    if progress is not None:
                        progress(done, total)
        os.replace(tmp, target)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise ExportFailed(f"cannot write {target}: {exc.strerror or exc}") from exc
    return str(target)


def _check_member(member: tarfile.TarInfo, archive: str) -> None:
    """Refuse absolute paths, '..', links, devices, sparse and other special files."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or ".." in PurePosixPath(name).parts:
        raise InvalidArchive(f"{archive}: unsafe member path {member.name!r}; nothing was imported")
    if member.issym() or member.islnk():
        raise InvalidArchive(
            f"{archive}: member {member.name!r} is a link ({member.linkname!r}); model archives "
            "hold files and directories only; nothing was imported"
        )
    if member.issparse():
        raise InvalidArchive(
            f"{archive}: member {member.name!r} is a sparse file; nothing was imported"
        )
    if not (member.isfile() or member.isdir()):
        raise InvalidArchive(
            f"{archive}: member {member.name!r} is a device or special file; nothing was imported"
        )


def _check_totals(
    members: list[tarfile.TarInfo], archive: str, max_members: int, max_bytes: int
) -> None:
    if len(members) > max_members:
        raise InvalidArchive(
            f"{archive} holds more than {max_members} members; nothing was imported"
        )
    total = sum(member.size for member in members)
    if total > max_bytes:
        raise InvalidArchive(
            f"{archive} would unpack into {total} bytes, over the {max_bytes}-byte limit; "
            "nothing was imported"
        )


def _extract(
    source: Path, staged: Path, what: str, max_members: int, max_bytes: int,
    progress: Progress | None,
) -> None:
    """Unpack ``source`` into ``staged`` after every check in the module docstring."""
    import tarfile

    try:
        with tarfile.open(source, "r:*") as tar:
            members = []
            for member in tar:  # one header at a time: stop at the limit, not after it
                _check_member(member, str(source))
                members.append(member)
                if len(members) > max_members:
                    break
            _check_totals(members, str(source), max_members, max_bytes)
            # tarfile stops at the end-of-archive blocks, before the gzip trailer: read on to
            # the end so a stream cut short or corrupted fails its length and CRC check
            assert tar.fileobj is not None
            while tar.fileobj.read(1 << 20):
                pass
            tar.extractall(staged, members=_reporting(members, progress), filter="data")
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise InvalidArchive(
            f"{source} is not a readable {what} archive ({exc}); nothing was imported"
        ) from exc


def _reporting(
    members: list[tarfile.TarInfo], progress: Progress | None
) -> Iterator[tarfile.TarInfo]:
    """The members in order, telling ``progress`` the bytes of those already extracted."""
    total, done = sum(m.size for m in members), 0
    for member in members:
        yield member
        done += member.size
        if progress is not None and member.size:
            progress(done, total)


def _source(path: str | os.PathLike[str]) -> Path:
    source = Path(path).expanduser()
    if not source.is_file():
        raise NotFound(f"archive {source} does not exist")
    return source


def import_model(
    path: str | os.PathLike[str],
    *,
    store: Store | None = None,
    max_members: int = MAX_MEMBERS,
    max_bytes: int = MAX_BYTES,
    progress: Progress | None = None,
) -> Model:
    """Add a model from an archive written by :func:`export_model` (see the module docstring
    for what is refused)."""
    store = store or default_store()
    source = _source(path)
    with store.staging() as staged:
        _extract(source, staged, "tiffin model", max_members, max_bytes, progress)
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


def import_tiffin(
    path: str | os.PathLike[str],
    *,
    store: Store | None = None,
    max_members: int = MAX_MEMBERS,
    max_bytes: int = MAX_BYTES,
    progress: Progress | None = None,
) -> tiffins.BuiltTiffin:
    """Add a built tiffin from an archive written by :func:`export_tiffin`: the same refusals
    and caps as a model archive, and every model inside must be readable."""
    store = store or tiffins.default_store()
    source = _source(path)
    name = tiffins.INFO_FILE
    with store.staging() as staged:
        _extract(source, staged, "built tiffin", max_members, max_bytes, progress)
        if not (staged / name).is_file():
            raise InvalidArchive(
                f"{source} holds no {name}: it is not a built tiffin; nothing was imported"
            )
        try:
            built = tiffins.BuiltTiffin.from_path(staged, check_place=False)
            for model_file in sorted((staged / tiffins.MODELS_DIR).glob(f"*/*/{MODEL_FILE}")):
                ModelInfo.load(model_file)
        except CorruptEntry as exc:
            raise InvalidArchive(
                f"{source} holds a file tiffin cannot read ({exc}); nothing was imported"
            ) from exc
        entry = store.commit(staged, built.tag)
    return tiffins.BuiltTiffin(built.info, entry.path)
