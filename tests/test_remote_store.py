"""``tiffin models push/pull`` and ``TIFFIN_REMOTE`` against moto's standalone S3 server."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import tiffin
from tests.fixtures_mlflow import Bucket, fitted_classifier, iris_like, store_is_empty
from tiffin.cli import main
from tiffin.exceptions import (
    AlreadyExists,
    CorruptEntry,
    InvalidArgument,
    NotFound,
    StoreError,
)
from tiffin.store.remote import REMOTE_ENV, pull_model, push_model, split_pull_target


@pytest.fixture
def remote(s3_bucket: Bucket, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Bucket]:
    monkeypatch.delenv(REMOTE_ENV, raising=False)
    return f"s3://{s3_bucket.name}/team", s3_bucket


def _keys(bucket: Bucket, prefix: str = "") -> list[str]:
    answer = bucket.client.list_objects_v2(Bucket=bucket.name, Prefix=prefix)
    return sorted(item["Key"] for item in answer.get("Contents", []))


def _saved(name: str = "clf") -> Any:
    return tiffin.sklearn.save_model(name, fitted_classifier())


def test_push_writes_the_documented_layout_with_checksums(remote: tuple[str, Bucket]) -> None:
    url, bucket = remote
    model = _saved()
    pushed = push_model(model.tag, url)
    assert pushed.uploaded and pushed.tag == model.tag
    base = f"team/models/clf/{model.tag.version}"
    assert _keys(bucket) == sorted([
        "team/models/index.json", f"{base}/manifest.json",
        f"{base}/files/model.pkl", f"{base}/files/model.yaml",
    ])  # fmt: skip
    manifest = json.loads(bucket.client.get_object(Bucket=bucket.name,
                                                   Key=f"{base}/manifest.json")["Body"].read())
    by_path = {f["path"]: f for f in manifest["files"]}
    head = bucket.client.head_object(Bucket=bucket.name, Key=f"{base}/files/model.pkl")
    assert head["Metadata"]["sha256"] == by_path["model.pkl"]["sha256"]
    assert head["ContentLength"] == by_path["model.pkl"]["size"]
    index = json.loads(bucket.client.get_object(Bucket=bucket.name,
                                                Key="team/models/index.json")["Body"].read())
    assert index["entries"]["clf"]["latest"] == model.tag.version
    # the same version again: nothing uploaded, nothing changed
    assert not push_model(model.tag, url).uploaded


def test_round_trip_into_an_empty_store(
    remote: tuple[str, Bucket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _bucket = remote
    model = _saved()
    push_model(model.tag, url)
    other_home = tmp_path / "other-node"
    monkeypatch.setenv("TIFFIN_HOME", str(other_home))
    pulled = pull_model("clf", url)  # no version: the index's latest
    assert pulled.tag == model.tag and Path(pulled.path).is_relative_to(other_home)
    X, _ = iris_like()
    np.testing.assert_array_equal(
        tiffin.sklearn.load_model(pulled.tag).predict(X), fitted_classifier().predict(X)
    )
    # a version already here: checked against the manifest, left as it is
    assert pull_model(str(model.tag), url).path == pulled.path


def test_a_corrupted_object_is_refused_before_anything_is_loaded(
    remote: tuple[str, Bucket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, bucket = remote
    model = _saved()
    push_model(model.tag, url)
    key = f"team/models/clf/{model.tag.version}/files/model.pkl"
    original = bucket.client.get_object(Bucket=bucket.name, Key=key)
    data = bytearray(original["Body"].read())
    data[len(data) // 2] ^= 0xFF  # one bit flipped, same size, the stored checksum kept
    bucket.client.put_object(Bucket=bucket.name, Key=key, Body=bytes(data),
                             Metadata=original["Metadata"])  # fmt: skip
    home = tmp_path / "other-node"
    monkeypatch.setenv("TIFFIN_HOME", str(home))
    with pytest.raises(CorruptEntry, match=r"SHA-256.*nothing was pulled"):
        pull_model(model.tag, url)
    assert store_is_empty(home)


def test_an_unsafe_manifest_is_refused(
    remote: tuple[str, Bucket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, bucket = remote
    model = _saved()
    push_model(model.tag, url)
    key = f"team/models/clf/{model.tag.version}/manifest.json"
    manifest = json.loads(bucket.client.get_object(Bucket=bucket.name, Key=key)["Body"].read())
    manifest["files"][0]["path"] = "../../escaped.txt"
    bucket.client.put_object(Bucket=bucket.name, Key=key, Body=json.dumps(manifest).encode())
    home = tmp_path / "other-node"
    monkeypatch.setenv("TIFFIN_HOME", str(home))
    with pytest.raises(CorruptEntry, match="unsafe"):
        pull_model(model.tag, url)
    assert store_is_empty(home) and not (tmp_path / "escaped.txt").exists()


def test_missing_keys_and_buckets_are_clear_errors(remote: tuple[str, Bucket]) -> None:
    url, bucket = remote
    with pytest.raises(NotFound, match=r"'clf:v1' is not at s3://.*manifest\.json"):
        pull_model("clf:v1", url)
    with pytest.raises(NotFound, match="no model named 'clf'"):
        pull_model("clf", url)
    with pytest.raises(NotFound, match=r"bucket .* does not exist"):
        pull_model("clf:v1", f"s3://{bucket.name}-missing/team")
    with pytest.raises(InvalidArgument, match="not an s3:// URL"):
        pull_model("clf:v1", "gs://elsewhere/team")


def test_a_failed_push_leaves_no_objects(remote: tuple[str, Bucket]) -> None:
    url, bucket = remote
    model = _saved()
    second = Path(model.path) / "model.yaml"  # uploaded after model.pkl
    kept = second.read_bytes()

    def start(total: int) -> None:
        pass

    def advance(count: int) -> None:  # model.pkl is on its way: model.yaml vanishes
        second.unlink(missing_ok=True)

    with pytest.raises(StoreError, match="cannot upload"):
        push_model(model.tag, url, (start, advance))
    assert _keys(bucket) == []  # model.pkl, uploaded first, was removed again
    second.write_bytes(kept)
    assert push_model(model.tag, url).uploaded  # and a later push writes it whole


def test_two_concurrent_pulls_leave_one_verified_copy(
    remote: tuple[str, Bucket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _bucket = remote
    model = _saved()
    push_model(model.tag, url)
    home = tmp_path / "other-node"
    monkeypatch.setenv("TIFFIN_HOME", str(home))
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(pull_model(model.tag, url)))
               for _ in range(2)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0].path == results[1].path
    assert [p.name for p in (home / "models" / "clf").iterdir() if p.is_dir()] == [
        model.tag.version
    ]


def test_a_local_version_that_differs_from_the_remote_one_is_an_error(
    remote: tuple[str, Bucket],
) -> None:
    url, _bucket = remote
    model = _saved()
    push_model(model.tag, url)
    with open(Path(model.path) / "model.yaml", "a") as fh:
        fh.write("# edited after the push\n")
    with pytest.raises(CorruptEntry, match="differs"):
        pull_model(model.tag, url)
    with pytest.raises(AlreadyExists, match="immutable"):
        push_model(model.tag, url)


def test_tiffin_remote_fills_a_store_that_lacks_a_model(
    remote: tuple[str, Bucket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _bucket = remote
    model = _saved()
    push_model(model.tag, url)
    monkeypatch.setenv("TIFFIN_HOME", str(tmp_path / "replica-node"))
    with pytest.raises(NotFound):
        tiffin.models.get("clf")
    monkeypatch.setenv(REMOTE_ENV, url)
    assert tiffin.models.get("clf").tag == model.tag  # pulled on first use
    assert tiffin.models.get(str(model.tag)).tag == model.tag  # then found here


def test_the_commands(
    remote: tuple[str, Bucket], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _bucket = remote
    model = _saved()
    cli = CliRunner()
    result = cli.invoke(main, ["models", "push", str(model.tag), url])
    assert result.exit_code == 0, result.output
    assert f"pushed model '{model.tag}' to {url}" in result.stdout
    monkeypatch.setenv("TIFFIN_HOME", str(tmp_path / "node-b"))
    result = cli.invoke(main, ["models", "pull", f"{url}/clf:{model.tag.version}"])
    assert result.exit_code == 0, result.output
    assert f"pulled model '{model.tag}' from {url}" in result.stdout
    monkeypatch.setenv(REMOTE_ENV, url)
    result = cli.invoke(main, ["models", "pull", "clf"])
    assert result.exit_code == 0 and "already here" in result.stdout, result.output
    result = cli.invoke(main, ["models", "pull", "nothing:v1"])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "is not at" in result.stderr
    monkeypatch.delenv(REMOTE_ENV)
    result = cli.invoke(main, ["models", "push", str(model.tag)])
    assert result.exit_code == 2 and "TIFFIN_REMOTE" in result.stderr


def test_split_pull_target() -> None:
    assert split_pull_target("s3://b/p/q/clf:v1") == ("s3://b/p/q", "clf:v1")
    assert split_pull_target("clf") == (None, "clf")
    with pytest.raises(InvalidArgument):
        split_pull_target("s3://clf")
