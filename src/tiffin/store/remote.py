"""Sharing store entries through S3: ``tiffin models push`` / ``pull``, ``tiffin push`` /
``pull`` (built tiffins) and ``TIFFIN_REMOTE``.

One key layout under a remote ``s3://BUCKET/PREFIX`` (``KIND`` is ``models`` or ``tiffins``,
the same rules for both)::

    KIND/index.json                          every NAME: its versions and the latest one
    KIND/NAME/VERSION/manifest.json          every file: path, size, SHA-256 (written last)
    KIND/NAME/VERSION/files/<path>           the entry's files, each with its SHA-256

Rules:

* A version exists remotely once its manifest does: push uploads every file first, then the
  manifest (only if absent, so two pushes of one version cannot both win), then updates the
  index (a conditional write, retried). A failed push deletes what it uploaded; a version
  without a manifest is invisible and a later push writes it again.
* Pull trusts nothing it has not checked: the manifest's paths obey the archive rules (no
  absolute paths, no ``..``, within the member and byte limits), each file is hashed as it
  arrives and must match the manifest's size and SHA-256, and the entry's own metadata must
  name the tag, all in a staging directory, before the entry is renamed into the store. A
  mismatch is :class:`~tiffin.exceptions.CorruptEntry` and nothing is written.
* Pulling a version that is already here is a verified no-op: the local files must match the
  manifest (else CorruptEntry). Two pulls at once leave one copy (the store's rename under a
  lock; the loser verifies the winner's copy).
* The checksums detect corruption and truncation, not tampering: whoever may write the bucket
  may write the manifest too. A shared bucket is a trust boundary (the README says so).
* ``TIFFIN_REMOTE=s3://...`` names the remote of this machine's store: ``tiffin models
  push/pull`` use it when no URL is given, and :func:`tiffin.store.models.get` pulls a model
  that is not here from it (runner replicas on a new node fetch what they serve).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import AlreadyExists, CorruptEntry, InvalidArgument, NotFound, StoreError
from tiffin.store.manifests import (
    FORMAT,
    checked_manifest,
    local_files,
    new_manifest,
    same_files,
    verify_local,
)
from tiffin.store.objects import Bucket, Progress
from tiffin.tag import Tag

if TYPE_CHECKING:
    from tiffin.store.models import Model
    from tiffin.store.tiffins import BuiltTiffin
    from tiffin.store.versioned import Entry, Store

__all__ = [
    "FORMAT",
    "REMOTE_ENV",
    "Kind",
    "Pulled",
    "Pushed",
    "Transfer",
    "model_kind",
    "pull_entry",
    "pull_model",
    "pull_tiffin",
    "push_entry",
    "push_model",
    "push_tiffin",
    "remote_url",
    "split_pull_target",
    "tiffin_kind",
]

logger = logging.getLogger("tiffin.remote")

REMOTE_ENV = "TIFFIN_REMOTE"
_INDEX_TRIES = 8

#: ``start(total_bytes)`` then ``advance(bytes)`` as files move
Transfer = tuple[Callable[[int], None], Progress]


@dataclass(frozen=True)
class Kind:
    """One kind of store entry in the layout: its directory and how a pulled one is checked."""

    directory: str
    store: Callable[[], Store]
    #: raises CorruptEntry unless the staged directory is a valid entry named ``tag``
    check: Callable[[Path, Tag], None]


def model_kind() -> Kind:
    from tiffin.store.model_info import MODEL_FILE, ModelInfo
    from tiffin.store.models import default_store

    def check(staged: Path, tag: Tag) -> None:
        info = ModelInfo.load(staged / MODEL_FILE)
        if info.tag != tag:
            raise CorruptEntry(f"its {MODEL_FILE} names {info.tag}, not {tag}")

    return Kind("models", default_store, check)


def tiffin_kind() -> Kind:
    from tiffin.store.tiffins import INFO_FILE, TiffinInfo, default_store

    def check(staged: Path, tag: Tag) -> None:
        info = TiffinInfo.load(staged / INFO_FILE)
        if info.tag != tag:
            raise CorruptEntry(f"its {INFO_FILE} names {info.tag}, not {tag}")

    return Kind("tiffins", default_store, check)


def remote_url(url: str | None) -> str:
    """``url``, else ``TIFFIN_REMOTE``; an error saying how to name one when neither is set."""
    url = url or os.environ.get(REMOTE_ENV, "").strip()
    if not url:
        raise InvalidArgument(f"no remote given: pass s3://BUCKET/PREFIX or set {REMOTE_ENV}")
    return url.rstrip("/")


def split_pull_target(target: str) -> tuple[str | None, str]:
    """``s3://b/p/NAME:VERSION`` -> ``("s3://b/p", "NAME:VERSION")``; a bare tag -> (None, tag)."""
    if "://" not in target:
        return None, target
    url, _, tag = target.rpartition("/")
    if "://" not in url or not url.split("://", 1)[1]:
        raise InvalidArgument(f"{target!r} names no entry: use s3://BUCKET/PREFIX/NAME:VERSION")
    return url, tag


# -- the index ---------------------------------------------------------------------------


def _update_index(bucket: Bucket, kind: Kind, tag: Tag, created: str, size: int) -> None:
    """Add ``tag`` to ``KIND/index.json`` with a conditional write, retried on a race."""
    relative = f"{kind.directory}/index.json"
    for _ in range(_INDEX_TRIES):
        stored = bucket.read_or_none(relative)
        index: dict[str, Any] = {"format": FORMAT, "entries": {}}
        if stored is not None:
            try:
                index = json.loads(stored.data)
            except ValueError:
                logger.warning("%s is not JSON; writing it anew", bucket.where(relative))
        entries = index.setdefault("entries", {})
        entry = entries.setdefault(tag.name, {"versions": {}})
        versions = entry.setdefault("versions", {})
        versions[str(tag.version)] = {"creation_time": created, "size": size}
        entry["latest"] = max(versions, key=lambda v: (versions[v]["creation_time"], v))
        data = json.dumps(index, indent=1, sort_keys=True).encode()
        try:
            if stored is None:
                bucket.write(relative, data, only_new=True)
            else:
                bucket.write(relative, data, if_etag=stored.etag)
            return
        except AlreadyExists:
            continue  # another push changed it since we read it: read it again
    raise StoreError(f"{bucket.where(relative)} kept changing; {tag} is pushed but not indexed")


def _latest(bucket: Bucket, kind: Kind, name: str) -> Tag:
    stored = bucket.read_or_none(f"{kind.directory}/index.json")
    entry = None
    if stored is not None:
        try:
            entry = json.loads(stored.data).get("entries", {}).get(name)
        except (ValueError, AttributeError):
            entry = None
    if not entry or not entry.get("latest"):
        raise NotFound(f"no {kind.directory[:-1]} named {name!r} at {bucket.url}")
    return Tag(name, str(entry["latest"]))


# -- push and pull -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pushed:
    tag: Tag
    url: str
    uploaded: bool  # False: the same version was there already


def push_entry(
    kind: Kind, tag: Tag | str, url: str | None = None, transfer: Transfer | None = None
) -> Pushed:
    """Upload one store entry (see the module docstring for the order and the checks)."""
    bucket = Bucket(remote_url(url))
    entry = kind.store().get(tag)
    files = local_files(entry.path)
    base = f"{kind.directory}/{entry.tag.name}/{entry.tag.version}"
    existing = bucket.read_or_none(f"{base}/manifest.json")
    if existing is not None:
        theirs = checked_manifest(existing.data, entry.tag, bucket.where(f"{base}/manifest.json"))
        if not same_files(theirs, files):
            raise AlreadyExists(
                f"'{entry.tag}' at {bucket.url} holds other files than the local one; "
                "versions are immutable: save a new version"
            )
        return Pushed(entry.tag, bucket.url, uploaded=False)
    if transfer is not None:
        transfer[0](sum(f["size"] for f in files))
    uploaded: list[str] = []
    try:
        for item in files:
            relative = f"{base}/files/{item['path']}"
            uploaded.append(relative)
            bucket.upload(relative, entry.path / item["path"], item["sha256"],
                          transfer[1] if transfer else None)  # fmt: skip
        manifest = new_manifest(entry.tag, files)
        bucket.write(f"{base}/manifest.json", json.dumps(manifest, indent=1).encode(),
                     only_new=True)  # fmt: skip
    except AlreadyExists:  # another push of this version finished first: the same files?
        stored = bucket.read(f"{base}/manifest.json")
        theirs = checked_manifest(stored.data, entry.tag, bucket.where(f"{base}/manifest.json"))
        if not same_files(theirs, files):
            raise
        return Pushed(entry.tag, bucket.url, uploaded=False)
    except BaseException:
        try:
            bucket.delete(uploaded)
        except Exception as cleanup:
            logger.warning("could not remove the partial upload of %s: %s", entry.tag, cleanup)
        raise
    created = _creation_time(entry, kind) or manifest["pushed_at"]
    _update_index(bucket, kind, entry.tag, created, manifest["size"])
    return Pushed(entry.tag, bucket.url, uploaded=True)


def _creation_time(entry: Entry, kind: Kind) -> str | None:
    from tiffin.store.versioned import load_yaml_file

    info_file = kind.store().info_file
    try:
        value = load_yaml_file(entry.path / info_file).get("creation_time")
    except CorruptEntry:
        return None
    return value.isoformat() if isinstance(value, dt.datetime) else (str(value) if value else None)


@dataclass(frozen=True)
class Pulled:
    entry: Entry
    url: str
    fetched: bool  # False: the same version was here already (checked)


def pull_entry(
    kind: Kind, tag: Tag | str, url: str | None = None, transfer: Transfer | None = None
) -> Pulled:
    """Download one entry into the local store, checked (see the module docstring)."""
    bucket = Bucket(remote_url(url))
    wanted = Tag.from_taglike(tag)
    if wanted.version is None or wanted.is_latest:
        wanted = _latest(bucket, kind, wanted.name)
    base = f"{kind.directory}/{wanted.name}/{wanted.version}"
    where = bucket.where(f"{base}/manifest.json")
    stored = bucket.read_or_none(f"{base}/manifest.json")
    if stored is None:
        raise NotFound(f"{kind.directory[:-1]} '{wanted}' is not at {bucket.url} (no {where})")
    files = checked_manifest(stored.data, wanted, where)
    store = kind.store()
    try:
        present = store.get(wanted)
    except NotFound:
        present = None
    if present is not None:
        verify_local(present, files, bucket.url)
        return Pulled(present, bucket.url, fetched=False)
    if transfer is not None:
        transfer[0](sum(f["size"] for f in files))
    with store.staging() as staged:
        for item in files:
            _download(bucket, f"{base}/files/{item['path']}", staged / item["path"], item,
                      transfer[1] if transfer else None)  # fmt: skip
        try:
            kind.check(staged, wanted)
        except CorruptEntry as exc:
            raise CorruptEntry(
                f"{bucket.url}: '{wanted}' is not valid ({exc}); nothing was pulled"
            ) from exc
        try:
            entry = store.commit(staged, wanted)
            logger.info("pulled %s from %s", wanted, bucket.url)
            return Pulled(entry, bucket.url, fetched=True)
        except AlreadyExists:  # a concurrent pull finished first: check its copy instead
            present = store.get(wanted)
    verify_local(present, files, bucket.url)
    return Pulled(present, bucket.url, fetched=False)


def _download(
    bucket: Bucket, relative: str, target: Path, item: dict[str, Any], progress: Progress | None
) -> None:
    metadata, chunks = bucket.stream(relative)
    where = bucket.where(relative)
    if metadata.get("sha256") not in (None, item["sha256"]):
        raise CorruptEntry(f"{where}'s SHA-256 differs from its manifest; nothing was pulled")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    with target.open("wb") as out:
        for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            if size > item["size"]:
                break
            out.write(chunk)
            if progress is not None:
                progress(len(chunk))
    if size != item["size"] or digest.hexdigest() != item["sha256"]:
        raise CorruptEntry(
            f"{where} does not match the size and SHA-256 in its manifest (corrupted or "
            "changed after the push); nothing was pulled"
        )


# -- models ------------------------------------------------------------------------------


def push_model(tag: Tag | str, url: str | None = None, transfer: Transfer | None = None) -> Pushed:
    """``tiffin models push``: one model version to ``url`` (default ``TIFFIN_REMOTE``)."""
    return push_entry(model_kind(), tag, url, transfer)


def pull_model(tag: Tag | str, url: str | None = None, transfer: Transfer | None = None) -> Model:
    """``tiffin models pull``: one model version from ``url`` (default ``TIFFIN_REMOTE``)."""
    from tiffin.store.models import Model

    pulled = pull_entry(model_kind(), tag, url, transfer)
    return Model.from_path(pulled.entry.path)


# -- built tiffins -----------------------------------------------------------------------


def push_tiffin(
    tag: Tag | str, url: str | None = None, transfer: Transfer | None = None
) -> Pushed:
    """``tiffin push``: one built tiffin version to ``url`` (default ``TIFFIN_REMOTE``)."""
    return push_entry(tiffin_kind(), tag, url, transfer)


def pull_tiffin(
    tag: Tag | str, url: str | None = None, transfer: Transfer | None = None
) -> BuiltTiffin:
    """``tiffin pull``: one built tiffin version from ``url`` (default ``TIFFIN_REMOTE``)."""
    from tiffin.store.tiffins import BuiltTiffin

    pulled = pull_entry(tiffin_kind(), tag, url, transfer)
    return BuiltTiffin.from_path(pulled.entry.path)
