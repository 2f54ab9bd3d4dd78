"""``tiffin push`` / ``tiffin pull``: built tiffins through S3 (moto's standalone server), with
the models' key layout and checks (:mod:`tiffin.store.remote`)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures_mlflow import Bucket
from tiffin.exceptions import CorruptEntry, NotFound
from tiffin.store import tiffins
from tiffin.store.manifests import sha256_file
from tiffin.store.remote import REMOTE_ENV, pull_tiffin, push_tiffin

from .test_build_support import invoke, project, save_clf, store_entries


@pytest.fixture
def remote(s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Bucket]:
    monkeypatch.delenv(REMOTE_ENV, raising=False)
    return f"s3://{s3_bucket.name}/team", s3_bucket


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tiffins.BuiltTiffin:
    save_clf()
    monkeypatch.chdir(project(tmp_path / "proj", tiffinfile='service: "service.py:svc"\n'))
    result = invoke("build", "-q")
    assert result.exit_code == 0, result.output
    return tiffins.get(result.stdout.strip())


def _keys(bucket: Bucket, prefix: str = "") -> list[str]:
    answer = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=prefix)
    return sorted(item["Key"] for item in answer.get("Contents", []))


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p)
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


def test_push_writes_the_models_layout_under_tiffins(
    built: tiffins.BuiltTiffin, remote: tuple[str, Bucket]
) -> None:
    url, bucket = remote
    pushed = push_tiffin(built.tag, url)
    assert pushed.uploaded and pushed.tag == built.tag
    base = f"team/tiffins/clfsvc/{built.tag.version}"
    local = _digests(built.path)
    assert "tiffin.yaml" in local and "src/service.py" in local
    assert any(path.startswith("models/clf/") for path in local)
    assert _keys(bucket) == sorted(
        ["team/tiffins/index.json", f"{base}/manifest.json"]
        + [f"{base}/files/{path}" for path in local]
    )
    manifest = json.loads(bucket.client.get_object(Bucket=bucket.name,
                                                   Key=f"{base}/manifest.json")["Body"].read())
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == local
    head = bucket.client.head_object(Bucket=bucket.name, Key=f"{base}/files/src/service.py")
    assert head["Metadata"]["sha256"] == local["src/service.py"]
    index = json.loads(bucket.client.get_object(Bucket=bucket.name,
                                                Key="team/tiffins/index.json")["Body"].read())
    assert index["entries"]["clfsvc"]["latest"] == built.tag.version
    assert not push_tiffin(built.tag, url).uploaded  # the same version again: nothing moves


def test_the_commands_round_trip_into_an_empty_store(
    built: tiffins.BuiltTiffin, remote: tuple[str, Bucket], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    url, _bucket = remote
    result = invoke("push", str(built.tag), url)
    assert result.exit_code == 0, result.output
    assert f"pushed tiffin '{built.tag}' to {url}" in result.stdout
    other = tmp_path / "other-node"
    monkeypatch.setenv("TIFFIN_HOME", str(other))
    result = invoke("pull", f"{url}/clfsvc")  # no version: the index's latest
    assert result.exit_code == 0, result.output
    assert f"pulled tiffin '{built.tag}' from {url}" in result.stdout
    pulled = tiffins.get(built.tag)
    assert pulled.path.is_relative_to(other)
    assert _digests(pulled.path) == _digests(built.path)
    assert pulled.info == built.info
    monkeypatch.setenv(REMOTE_ENV, url)
    result = invoke("pull", str(built.tag))  # already here: checked, left as it is
    assert result.exit_code == 0 and "already here" in result.stdout, result.output
    result = invoke("pull", "nothing:v1")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "tiffin 'nothing:v1' is not at" in result.stderr


def test_a_corrupted_object_is_refused_and_nothing_enters_the_store(
    built: tiffins.BuiltTiffin, remote: tuple[str, Bucket], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    url, bucket = remote
    push_tiffin(built.tag, url)
    key = f"team/tiffins/clfsvc/{built.tag.version}/files/src/service.py"
    original = bucket.client.get_object(Bucket=bucket.name, Key=key)
    data = original["Body"].read().replace(b"tolist", b"tolisp")  # same size, checksum kept
    bucket.client.put_object(Bucket=bucket.name, Key=key, Body=data,
                             Metadata=original["Metadata"])  # fmt: skip
    home = tmp_path / "other-node"
    monkeypatch.setenv("TIFFIN_HOME", str(home))
    with pytest.raises(CorruptEntry, match=r"SHA-256.*nothing was pulled"):
        pull_tiffin(built.tag, url)
    assert store_entries(home) == []


def test_a_missing_version_is_a_clear_error(remote: tuple[str, Bucket]) -> None:
    url, _bucket = remote
    with pytest.raises(NotFound, match=r"tiffin 'clfsvc:v1' is not at s3://.*manifest\.json"):
        pull_tiffin("clfsvc:v1", url)
    with pytest.raises(NotFound, match="no tiffin named 'clfsvc'"):
        pull_tiffin("clfsvc", url)


def test_two_concurrent_pulls_leave_one_copy(
    built: tiffins.BuiltTiffin, remote: tuple[str, Bucket], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    url, _bucket = remote
    push_tiffin(built.tag, url)
    home = tmp_path / "other-node"
    monkeypatch.setenv("TIFFIN_HOME", str(home))
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(pull_tiffin(built.tag, url)))
               for _ in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0].path == results[1].path
    assert store_entries(home) == [f"clfsvc/{built.tag.version}"]
