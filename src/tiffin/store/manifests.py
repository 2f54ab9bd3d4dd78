"""The manifest of a store entry in a remote: every file's path, size and SHA-256.

A manifest is JSON, ``{"format", "tag", "pushed_at", "size", "files": [{"path", "size",
"sha256"}]}``. Reading one refuses, before any file is fetched: another format or tag, a path
that is absolute, holds ``..`` or ``.``, a backslash or repeats, a missing size or digest, and
more files or bytes than a model archive may hold (:mod:`tiffin.store.archive`'s limits).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import CorruptEntry, StoreError

if TYPE_CHECKING:
    from tiffin.store.versioned import Entry
    from tiffin.tag import Tag

__all__ = [
    "FORMAT",
    "checked_manifest",
    "local_files",
    "new_manifest",
    "same_files",
    "sha256_file",
    "verify_local",
]

#: the layout's version, in every manifest and index
FORMAT = 1



def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def local_files(root: Path) -> list[dict[str, Any]]:
    """Every file of an entry directory: posix path, size, SHA-256 (links are refused)."""
    files = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise StoreError(f"{path} is a link; store entries hold files and directories only")
        if path.is_file():
            relative = path.relative_to(root).as_posix()
            files.append({"path": relative, "size": path.stat().st_size,
                          "sha256": sha256_file(path)})  # fmt: skip
    return files


def new_manifest(tag: Tag, files: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "format": FORMAT, "tag": str(tag), "pushed_at": dt.datetime.now(dt.UTC).isoformat(),
        "size": sum(f["size"] for f in files), "files": files,
    }  # fmt: skip


def same_files(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    def key(files: list[dict[str, Any]]) -> list[tuple[str, int, str]]:
        return sorted((f["path"], f["size"], f["sha256"]) for f in files)

    return key(a) == key(b)


def checked_manifest(data: bytes, tag: Tag, where: str) -> list[dict[str, Any]]:
    """The manifest's file list, refused unless every entry is safe and well formed."""
    from tiffin.store.archive import MAX_BYTES, MAX_MEMBERS

    def bad(why: str) -> CorruptEntry:
        return CorruptEntry(f"{where} {why}; nothing was pulled")

    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise bad(f"is not JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise bad(f"is not a tiffin manifest of format {FORMAT}")
    if manifest.get("tag") != str(tag):
        raise bad(f"names {manifest.get('tag')!r}, not {str(tag)!r}")
    files = manifest.get("files")
    if not isinstance(files, list) or len(files) > MAX_MEMBERS:
        raise bad("holds no file list, or more files than tiffin accepts")
    seen = set()
    for item in files:
        ok = isinstance(item, dict) and isinstance(item.get("path"), str)
        path = str(item.get("path")) if ok else ""
        parts = PurePosixPath(path).parts
        if (not ok or not path or path.startswith("/") or "\\" in path or ".." in parts
                or "." in parts or path in seen):  # fmt: skip
            raise bad(f"names an unsafe or repeated path {path!r}")
        size, digest = item.get("size"), item.get("sha256")
        if not (isinstance(size, int) and size >= 0 and isinstance(digest, str)
                and len(digest) == 64):  # fmt: skip
            raise bad(f"gives no size or SHA-256 for {path!r}")
        seen.add(path)
    if sum(item["size"] for item in files) > MAX_BYTES:
        raise bad(f"adds up to more than {MAX_BYTES} bytes")
    return files


def verify_local(entry: Entry, files: list[dict[str, Any]], url: str) -> None:
    if not same_files(local_files(entry.path), files):
        raise CorruptEntry(
            f"'{entry.tag}' in {entry.path} differs from the one at {url}; delete one of them "
            "(versions are immutable: the same tag must be the same files)"
        )
