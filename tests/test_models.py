"""``model.yaml``, the Model object and the tiffin.models API: list/get/delete/export/import."""

from __future__ import annotations

import datetime as dt
import gzip
import io
import os
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

import tiffin
from tiffin import models
from tiffin.exceptions import (
    AlreadyExists,
    CorruptEntry,
    InvalidArchive,
    InvalidArgument,
    NotFound,
    StoreError,
)
from tiffin.models import Model, ModelInfo


class Doubler:
    def predict(self, x: int) -> int:
        return 2 * x


def save(tag: str = "iris", **kwargs: Any) -> Model:
    return tiffin.picklable_model.save_model(tag, Doubler(), **kwargs)


def raw_yaml(model: Model) -> dict[str, Any]:
    data = yaml.safe_load(Path(model.path_of("model.yaml")).read_text())
    assert isinstance(data, dict)
    return data


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir()}


# -- model.yaml ------------------------------------------------------------------------------


def test_model_yaml_records_every_field() -> None:
    model = save(
        "iris",
        labels={"owner": "ml-team", "stage": "dev"},
        metadata={"accuracy": 0.1 + 0.2},
        signatures={"predict": {"batchable": True, "batch_dim": 0}},
    )
    data = raw_yaml(model)
    assert list(data) == [
        "name",
        "version",
        "module",
        "api_version",
        "creation_time",
        "labels",
        "metadata",
        "options",
        "signatures",
        "context",
    ]
    assert data["name"] == "iris"
    assert data["version"] == model.tag.version
    assert data["module"] == "tiffin.picklable_model"
    assert data["api_version"] == "v1"
    assert data["labels"] == {"owner": "ml-team", "stage": "dev"}
    assert data["signatures"] == {"predict": {"batchable": True, "batch_dim": 0}}
    assert data["options"]["file"] == "model.pkl"
    assert len(data["options"]["sha256"]) == 64
    context = data["context"]
    assert context["python_version"].count(".") == 2
    assert context["tiffin_version"] == tiffin.__version__
    assert isinstance(context["framework_versions"], dict)


def test_creation_time_is_utc_iso_8601() -> None:
    before = dt.datetime.now(dt.UTC)
    model = save()
    after = dt.datetime.now(dt.UTC)
    text = raw_yaml(model)["creation_time"]
    assert isinstance(text, str)  # quoted: not left to YAML's own timestamp parsing
    created = dt.datetime.fromisoformat(text)
    assert created.utcoffset() == dt.timedelta(0)
    assert text.endswith("+00:00")
    assert before <= created <= after
    assert model.creation_time == created == models.get(model.tag).creation_time


def test_metadata_round_trips_exactly() -> None:
    import numpy as np

    metadata = {
        "sum": 0.1 + 0.2,
        "tiny": 5e-324,
        "big": 1e300,
        "third": 1 / 3,
        "neg": -0.0,
        "int": 2**62,
        "flag": True,
        "nothing": None,
        "looks_like_number": "1.0",
        "looks_like_bool": "yes",
        "looks_like_null": "null",
        "text": "héllo\nworld",
        "nested": {"deeper": {"list": [1, 2.5, "three", [4], {"five": 5}]}},
        "tuple": (1, 2),
        "np_float": np.float64(0.1) * 3,
        "np_int": np.int64(7),
    }
    model = save("iris", metadata=metadata)
    expected = dict(metadata, tuple=[1, 2], np_float=float(np.float64(0.1) * 3), np_int=7)
    for loaded in (raw_yaml(model)["metadata"], models.get(model.tag).info.metadata):
        assert loaded == expected
        assert loaded["sum"] == 0.30000000000000004
        assert type(loaded["np_int"]) is int
        assert str(loaded["neg"]) == "-0.0"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": {"owner": 1}}, "labels must map str to str"),
        ({"labels": ["owner"]}, "labels must be a mapping"),
        ({"metadata": {"model": object()}}, "metadata.model is a object"),
        ({"metadata": {1: "x"}}, "metadata keys must be strings"),
        ({"metadata": {"a": {"b": {1, 2}}}}, r"metadata.a.b is a set"),
        ({"metadata": "accuracy=1"}, "metadata must be a mapping"),
        ({"signatures": {"predict": {"batchable": "yes"}}}, "batchable must be true or false"),
        ({"signatures": {"predict": {"batch": True}}}, r"unknown key\(s\) \['batch'\]"),
        ({"signatures": {"predict": {"batch_dim": "0"}}}, "batch_dim must be an int"),
        ({"signatures": {"predict": {"batch_dim": [0, 1, 2]}}}, "batch_dim must be an int or"),
        ({"signatures": {"_private": {}}}, "not a public method name"),
        ({"signatures": {}}, "non-empty mapping"),
        ({"custom_objects": ["not", "a", "mapping"]}, "custom_objects must be a mapping"),
    ],
)
def test_bad_save_arguments_are_refused_and_leave_nothing(
    kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        save("iris", **kwargs)
    assert models.scan() == ([], [])


# -- the Model object ------------------------------------------------------------------------


def test_model_attributes() -> None:
    model = save("iris:v1", labels={"a": "b"})
    assert model.tag == tiffin.Tag("iris", "v1")
    assert isinstance(model.path, str) and Path(model.path).is_dir()
    assert model.path_of("model.pkl") == os.path.join(model.path, "model.pkl")
    assert isinstance(model.info, ModelInfo)
    assert model.info.labels == {"a": "b"}
    assert model.info.framework == "picklable_model"
    assert model.custom_objects == {}
    assert model.size_bytes() == sum(p.stat().st_size for p in Path(model.path).iterdir())
    assert repr(model) == f"Model(tag='iris:v1', path={model.path!r})"
    assert models.get("iris:v1") == model
    assert hash(models.get("iris:v1")) == hash(model)


def test_custom_objects_round_trip_and_are_checksummed() -> None:
    def scale(x: int) -> int:
        return 3 * x

    model = save("iris", custom_objects={"scale": scale, "classes": ["a", "b"]})
    loaded = models.get("iris").custom_objects
    assert loaded["classes"] == ["a", "b"]
    assert loaded["scale"](2) == 6

    pickle_file = Path(model.path_of("custom_objects.pkl"))
    pickle_file.write_bytes(pickle_file.read_bytes() + b"\x00")
    with pytest.raises(CorruptEntry, match="SHA-256"):
        _ = models.get("iris").custom_objects


# -- list / get / delete ---------------------------------------------------------------------


def test_list_is_newest_first_and_filters_by_name() -> None:
    a1 = save("alpha")
    b1 = save("beta")
    a2 = save("alpha")
    assert models.list() == [a2, b1, a1]
    assert models.list("alpha") == [a2, a1]
    assert models.list(name="beta") == [b1]
    assert models.list("gamma") == []
    with pytest.raises(InvalidArgument):
        models.list("not a name")


def test_delete_returns_the_deleted_tag() -> None:
    model = save("iris")
    assert models.delete("iris") == model.tag
    assert models.list() == []
    with pytest.raises(NotFound):
        models.delete(model.tag)


# -- corrupt model.yaml ----------------------------------------------------------------------


def _edit(field: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    def edit(data: dict[str, Any]) -> dict[str, Any]:
        if value is _DELETE:
            del data[field]
        else:
            data[field] = value
        return data

    return edit


_DELETE = object()

CORRUPTIONS: dict[str, Callable[[dict[str, Any]], Any] | str] = {
    "invalid-yaml": "name: iris\nversion: [unclosed\n",
    "tab-indented": "name: iris\n\tversion: v1\n",
    "empty-file": "",
    "a-list": "- name\n- version\n",
    "binary": "\udcff",
    "missing-module": _edit("module", _DELETE),
    "missing-creation-time": _edit("creation_time", _DELETE),
    "name-mismatch": _edit("name", "other"),
    "version-mismatch": _edit("version", "v2"),
    "name-not-a-string": _edit("name", 5),
    "version-a-list": _edit("version", ["v1"]),
    "labels-a-list": _edit("labels", ["a", "b"]),
    "label-value-a-number": _edit("labels", {"a": 1}),
    "metadata-a-string": _edit("metadata", "oops"),
    "signatures-wrong": _edit("signatures", {"predict": {"batchable": "maybe"}}),
    "creation-time-garbage": _edit("creation_time", "yesterday"),
    "creation-time-number": _edit("creation_time", 12),
    "module-not-tiffin": _edit("module", "os.system"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupt_model_yaml_is_a_corrupt_entry_naming_the_file(corruption: str) -> None:
    good = save("good")
    bad = save("iris:v1")
    path = Path(bad.path_of("model.yaml"))
    change = CORRUPTIONS[corruption]
    if isinstance(change, str):
        path.write_bytes(change.encode("utf-8", "surrogateescape"))
    else:
        path.write_text(yaml.safe_dump(change(raw_yaml(bad)), sort_keys=False))

    with pytest.raises(CorruptEntry) as info:
        models.get("iris:v1")
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)
    assert issubclass(CorruptEntry, StoreError)

    assert models.list() == [good]  # the rest still lists
    found, broken = models.scan()
    assert found == [good]
    assert [(b.tag, b.path) for b in broken] == [("iris:v1", bad.path)]
    assert str(path) in broken[0].error


def test_missing_model_yaml_is_a_corrupt_entry() -> None:
    bad = save("iris")
    Path(bad.path_of("model.yaml")).unlink()
    with pytest.raises(CorruptEntry, match=r"model\.yaml is missing"):
        models.get(bad.tag)
    assert models.scan()[1][0].tag == str(bad.tag)


# -- export / import -------------------------------------------------------------------------


def test_export_to_a_directory_and_import_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = save("iris", labels={"k": "v"}, metadata={"x": 0.1 + 0.2})
    out = tmp_path / "out"
    out.mkdir()
    archive = models.export_model("iris", out)
    assert archive == str(out / f"iris-{model.tag.version}.tiffinmodel")
    assert os.listdir(out) == [Path(archive).name]  # no temporary file left behind

    monkeypatch.setenv("TIFFIN_HOME", str(tmp_path / "other-home"))
    assert models.list() == []
    imported = models.import_model(archive)
    assert imported.tag == model.tag
    assert imported.info == model.info
    assert files_under(Path(imported.path)) == files_under(Path(model.path))
    assert tiffin.picklable_model.load_model(imported.tag).predict(4) == 8
    assert models.get("iris") == imported
    with pytest.raises(AlreadyExists):
        models.import_model(archive)


def test_export_to_a_file_path(tmp_path: Path) -> None:
    save("iris")
    target = tmp_path / "my-model.tar.gz"
    assert models.export_model("iris", target) == str(target)
    with tarfile.open(target) as tar:
        assert "model.yaml" in tar.getnames()


def test_export_faults(tmp_path: Path) -> None:
    with pytest.raises(NotFound):
        models.export_model("nosuch", tmp_path)
    save("iris")
    with pytest.raises(NotFound, match="does not exist"):
        models.export_model("iris", tmp_path / "no" / "such" / "dir" / "x.tiffinmodel")


def test_import_of_a_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="does not exist"):
        models.import_model(tmp_path / "nothing.tiffinmodel")


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> Any:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    info.mode = 0o644
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3
    return info, io.BytesIO(data) if kind == tarfile.REGTYPE else None


def _archive(path: Path, members: list[Any], model_yaml: bytes) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in [_member("model.yaml", data=model_yaml), *members]:
            tar.addfile(info, data)
    return path


UNSAFE: dict[str, Callable[[Path], tuple[Any, Path]]] = {
    "absolute-path": lambda out: (_member(str(out / "abs.txt"), data=b"x"), out / "abs.txt"),
    "dot-dot": lambda out: (_member("../../../../escaped.txt", data=b"x"), out / "escaped.txt"),
    "dot-dot-inside": lambda out: (_member("sub/../../evil.txt", data=b"x"), out / "evil.txt"),
    "symlink-absolute": lambda out: (
        _member("link", tarfile.SYMTYPE, link=str(out / "target")),
        out / "target",
    ),
    "symlink-relative-out": lambda out: (
        _member("sub/link", tarfile.SYMTYPE, link="../../../outside"),
        out / "outside",
    ),
    "hardlink-absolute": lambda out: (
        _member("hard", tarfile.LNKTYPE, link="/etc/passwd"),
        out / "hard",
    ),
    "hardlink-dot-dot": lambda out: (
        _member("hard", tarfile.LNKTYPE, link="../../secret"),
        out / "secret",
    ),
    "symlink-inside": lambda out: (
        _member("extra/alias.pkl", tarfile.SYMTYPE, link="../model.yaml"),
        out / "alias.pkl",
    ),
    "hardlink-inside": lambda out: (
        _member("alias.yaml", tarfile.LNKTYPE, link="model.yaml"),
        out / "alias.yaml",
    ),
    "char-device": lambda out: (_member("null", tarfile.CHRTYPE), out / "null"),
    "fifo": lambda out: (_member("pipe", tarfile.FIFOTYPE), out / "pipe"),
}


@pytest.mark.parametrize("case", sorted(UNSAFE))
def test_unsafe_archives_are_refused_and_nothing_is_written(
    case: str, tmp_path: Path, tiffin_home: Path
) -> None:
    model = save("iris:v1")
    model_yaml = Path(model.path_of("model.yaml")).read_bytes()
    models.delete(model.tag)
    outside = tmp_path / "outside-dir"
    outside.mkdir()
    member, escape_target = UNSAFE[case](outside)
    archive = _archive(tmp_path / "evil.tiffinmodel", [member], model_yaml)
    before = files_under(tmp_path)

    with pytest.raises(InvalidArchive, match="nothing was imported") as info:
        models.import_model(archive)
    assert str(archive) in str(info.value)

    assert files_under(tmp_path) == before
    assert not escape_target.exists()
    assert models.scan() == ([], [])
    assert list((tiffin_home / "models" / ".tmp").iterdir()) == []
    assert not (tiffin_home / "models" / "iris").exists()


@pytest.mark.parametrize(
    ("limit", "members"),
    [("max_members", 3), ("max_bytes", 1)],
    ids=["too-many-members", "too-many-bytes"],
)
def test_archives_over_the_member_or_size_caps_are_refused_before_extracting(
    limit: str, members: int, tmp_path: Path, tiffin_home: Path
) -> None:
    model = save("iris:v1")
    model_yaml = Path(model.path_of("model.yaml")).read_bytes()
    models.delete(model.tag)
    padding = [_member(f"pad/{i}.bin", data=b"\0" * (1 << 20)) for i in range(members)]
    archive = _archive(tmp_path / "big.tiffinmodel", padding, model_yaml)
    caps = {"max_members": 3, "max_bytes": 1 << 20} if limit == "max_members" else {
        "max_members": 100, "max_bytes": 1 << 20
    }
    with pytest.raises(InvalidArchive, match="nothing was imported") as info:
        models.import_model(archive, **caps)
    assert ("members" if limit == "max_members" else "bytes") in str(info.value)
    assert models.scan() == ([], [])
    assert list((tiffin_home / "models" / ".tmp").iterdir()) == []
    # the same archive under the default caps imports
    assert models.import_model(archive).tag == model.tag


def test_a_pickle_is_unpickled_from_the_bytes_whose_hash_was_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The file is read once: swapping it after the hash check cannot get other bytes run."""
    model = save("iris:v1")
    path = Path(model.path_of("model.pkl"))
    opened: list[Path] = []
    real_open = Path.open

    def counting_open(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(self)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", counting_open)
    assert tiffin.picklable_model.load_model("iris:v1").predict(1) == 2
    assert opened.count(path) == 1  # hashed and unpickled from one read


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5, -1])
def test_truncated_archives_are_refused_and_nothing_is_written(
    keep: float, tmp_path: Path, tiffin_home: Path
) -> None:
    save("iris", metadata={"padding": "x" * 5000})
    archive = Path(models.export_model("iris", tmp_path))
    models.delete("iris")
    data = archive.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    archive.write_bytes(data[:cut])
    before = files_under(tmp_path)

    with pytest.raises(InvalidArchive, match="nothing was imported"):
        models.import_model(archive)
    assert files_under(tmp_path) == before
    assert models.scan() == ([], [])
    assert list((tiffin_home / "models" / ".tmp").iterdir()) == []


def test_archives_that_are_not_model_archives(tmp_path: Path) -> None:
    not_tar = tmp_path / "notes.tiffinmodel"
    not_tar.write_bytes(gzip.compress(b"just some text, not a tar file" * 20))
    with pytest.raises(InvalidArchive, match="nothing was imported"):
        models.import_model(not_tar)

    no_yaml = tmp_path / "empty.tiffinmodel"
    with tarfile.open(no_yaml, "w:gz") as tar:
        info, data = _member("model.pkl", data=b"x")
        tar.addfile(info, data)
    with pytest.raises(InvalidArchive, match=r"holds no model\.yaml"):
        models.import_model(no_yaml)

    bad_yaml = _archive(tmp_path / "bad.tiffinmodel", [], b"name: [unclosed\n")
    with pytest.raises(InvalidArchive, match=r"bad.tiffinmodel holds a model.yaml"):
        models.import_model(bad_yaml)

    model = save("iris:v1")
    latest_yaml = Path(model.path_of("model.yaml")).read_bytes().replace(b"v1", b"latest")
    models.delete(model.tag)
    with pytest.raises(InvalidArchive, match="latest"):
        models.import_model(_archive(tmp_path / "latest.tiffinmodel", [], latest_yaml))
    assert models.scan() == ([], [])


def test_an_archive_with_a_flipped_byte_is_refused(tmp_path: Path) -> None:
    save("iris", metadata={"padding": "x" * 5000})
    archive = Path(models.export_model("iris", tmp_path))
    models.delete("iris")
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(InvalidArchive, match="nothing was imported"):
        models.import_model(archive)
    assert models.scan() == ([], [])
