"""The versioned store on disk: layout, ``latest``, atomic saves, killed and concurrent savers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tiffin
from tiffin import models
from tiffin.exceptions import AlreadyExists, InvalidArgument, NotFound, StoreError
from tiffin.store.versioned import Store
from tiffin.tag import Tag


class Doubler:
    def predict(self, x: int) -> int:
        return 2 * x


def save(tag: str = "iris", **kwargs: object) -> models.Model:
    return tiffin.picklable_model.save_model(tag, Doubler(), **kwargs)  # type: ignore[arg-type]


def latest_file(home: Path, name: str) -> str:
    return (home / "models" / name / "latest").read_text().strip()


# -- layout and latest -----------------------------------------------------------------------


def test_layout_under_tiffin_home(tiffin_home: Path) -> None:
    model = save("iris")
    version = model.tag.version
    assert version is not None
    entry = tiffin_home / "models" / "iris" / version
    assert Path(model.path) == entry
    assert (entry / "model.yaml").is_file()
    assert (entry / "model.pkl").is_file()
    assert latest_file(tiffin_home, "iris") == version
    # nothing else at the top of the store but bookkeeping directories
    visible = [p.name for p in (tiffin_home / "models").iterdir() if not p.name.startswith(".")]
    assert visible == ["iris"]


def test_latest_names_the_newest_and_follows_deletes(tiffin_home: Path) -> None:
    first, second, third = save("iris"), save("iris"), save("iris")
    assert latest_file(tiffin_home, "iris") == third.tag.version
    assert models.get("iris").tag == third.tag
    assert models.get("iris:latest").tag == third.tag

    models.delete(third.tag)
    assert latest_file(tiffin_home, "iris") == second.tag.version
    assert models.get("iris:latest").tag == second.tag

    models.delete("iris:latest")  # deletes the newest
    assert models.get("iris").tag == first.tag
    assert latest_file(tiffin_home, "iris") == first.tag.version

    models.delete(first.tag)
    assert not (tiffin_home / "models" / "iris").exists()
    with pytest.raises(NotFound, match="tiffin models list"):
        models.get("iris")


def test_latest_is_by_creation_time_not_version_order(tiffin_home: Path, tmp_path: Path) -> None:
    older = save("iris:zzz")
    archive = models.export_model(older.tag, tmp_path)
    models.delete(older.tag)
    newer = save("iris:aaa")
    models.import_model(archive)  # 'zzz' sorts after 'aaa' but was created before it
    assert {str(m.tag) for m in models.list("iris")} == {"iris:zzz", "iris:aaa"}
    assert models.get("iris").tag == newer.tag
    assert latest_file(tiffin_home, "iris") == "aaa"
    assert [str(m.tag) for m in models.list("iris")] == ["iris:aaa", "iris:zzz"]


def test_stale_or_missing_latest_is_recomputed(tiffin_home: Path) -> None:
    first, second = save("iris"), save("iris")
    shutil.rmtree(second.path)  # removed by hand: latest names a version that is gone
    assert models.get("iris").tag == first.tag
    assert latest_file(tiffin_home, "iris") == first.tag.version

    (tiffin_home / "models" / "iris" / "latest").unlink()
    assert models.get("iris:latest").tag == first.tag

    (tiffin_home / "models" / "iris" / "latest").write_text("../../../etc\n")
    assert models.get("iris").tag == first.tag
    assert latest_file(tiffin_home, "iris") == first.tag.version


def test_explicit_version_is_honoured_and_cannot_be_saved_twice() -> None:
    model = save("iris:v1")
    assert str(model.tag) == "iris:v1"
    assert models.get("iris:v1") == model
    with pytest.raises(AlreadyExists, match="iris:v1"):
        save("iris:v1")
    assert [str(m.tag) for m in models.list()] == ["iris:v1"]
    assert AlreadyExists.exit_code == 1


def test_latest_is_not_a_version_to_save_under() -> None:
    with pytest.raises(InvalidArgument, match="latest"):
        save("iris:latest")
    assert models.list() == []


def test_unknown_name_and_version_are_not_found(tiffin_home: Path) -> None:
    with pytest.raises(NotFound, match="'nosuch' not found"):
        models.get("nosuch")
    save("iris")
    with pytest.raises(NotFound, match="'iris:nosuch' not found"):
        models.get("iris:nosuch")
    with pytest.raises(NotFound):
        models.delete("iris:nosuch")
    with pytest.raises(NotFound):
        models.delete("nosuch")
    assert NotFound.exit_code == 1


def test_store_argument_overrides_home(tiffin_home: Path, tmp_path: Path) -> None:
    other = Store(tmp_path / "elsewhere", "model", "model.yaml")
    model = tiffin.picklable_model.save_model("iris", Doubler(), store=other)
    assert Path(model.path).is_relative_to(tmp_path / "elsewhere")
    assert models.list() == []
    assert models.list(store=other) == [model]
    assert models.get("iris", store=other) == model
    models.delete("iris", store=other)
    assert models.list(store=other) == []


def test_empty_store_lists_nothing(tiffin_home: Path) -> None:
    assert not tiffin_home.exists()
    assert models.list() == []
    assert models.list("iris") == []


# -- faults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("below", ["", "models"])
def test_tiffin_home_pointing_at_a_file_is_a_store_error(
    tiffin_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, below: str
) -> None:
    plain_file = tmp_path / "not-a-dir"
    plain_file.write_text("hello")
    if below:  # TIFFIN_HOME is a directory, but TIFFIN_HOME/models is a file
        plain_file = tmp_path / "home2" / below
        plain_file.parent.mkdir()
        plain_file.write_text("hello")
    monkeypatch.setenv("TIFFIN_HOME", str(plain_file.parent if below else plain_file))
    for call in (
        lambda: models.list(),
        lambda: models.get("iris"),
        lambda: models.delete("iris"),
        lambda: save("iris"),
    ):
        with pytest.raises(StoreError, match="not a directory"):
            call()
    assert plain_file.read_text() == "hello"


def test_directories_that_break_the_tag_rule_are_reported_not_fatal(tiffin_home: Path) -> None:
    good = save("iris")
    (tiffin_home / "models" / "iris" / "Bad Version").mkdir()
    (tiffin_home / "models" / "Iris" / "v1").mkdir(parents=True)
    found, broken = models.scan()
    assert found == [good]
    assert sorted(b.tag for b in broken) == ["Iris:v1", "iris:Bad Version"]
    assert all("not a valid tag" in b.error for b in broken)
    assert models.get("iris") == good  # latest is computed over valid entries only


def test_dead_savers_leftovers_are_swept_live_ones_kept(tiffin_home: Path) -> None:
    save("iris")
    tmp = tiffin_home / "models" / ".tmp"
    dead = tmp / "999999999-0123abcd"  # above any pid_max: no such process
    live = tmp / f"{os.getpid()}-0123abcd"
    for leftover in (dead, live):
        leftover.mkdir()
        (leftover / "model.pkl").write_bytes(b"partial")
    save("iris")
    assert not dead.exists()
    assert live.exists()
    assert len(models.list()) == 2


def test_a_failed_save_leaves_nothing(tiffin_home: Path) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        models.create("iris", module="tiffin.picklable_model") as draft,
    ):
        (draft.path / "model.pkl").write_bytes(b"half")
        raise RuntimeError("boom")
    assert models.list() == []
    assert list((tiffin_home / "models" / ".tmp").iterdir()) == []
    assert not (tiffin_home / "models" / "iris").exists()


KILLED_SAVER = """
import sys, time
import tiffin.models
with tiffin.models.create("victim", module="tiffin.picklable_model") as draft:
    (draft.path / "model.pkl").write_bytes(b"half-written" * 1000)
    print(draft.path, flush=True)
    time.sleep(60)
"""


def test_killed_save_leaves_nothing_visible(
    tiffin_home: Path, subprocess_env: dict[str, str]
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_SAVER],
        env=subprocess_env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        staged = Path(proc.stdout.readline().strip())
        assert staged.is_dir() and (staged / "model.pkl").is_file()
    finally:
        proc.kill()  # SIGKILL: no cleanup handlers run
        proc.wait()
    assert proc.returncode == -9
    assert staged.exists()  # the half-written save is still on disk ...

    # ... but nothing shows it and nothing breaks on it
    assert models.scan() == ([], [])
    with pytest.raises(NotFound):
        models.get("victim")

    model = save("victim")  # a later save works and sweeps the dead save's directory
    assert models.list() == [model]
    assert models.get("victim") == model
    assert not staged.exists()
    assert list((tiffin_home / "models" / ".tmp").iterdir()) == []


CONCURRENT_SAVER = """
import os, sys, time
import tiffin

class Model:
    def predict(self, x):
        return x

barrier = sys.argv[1]
print("ready", flush=True)
while not os.path.exists(barrier):
    time.sleep(0.001)
for _ in range(int(sys.argv[2])):
    model = tiffin.picklable_model.save_model("shared", Model())
    print(model.tag.version, flush=True)
"""


@pytest.mark.parametrize("saves_each", [1, 10])
def test_concurrent_saves_of_one_name_all_succeed(
    tiffin_home: Path, tmp_path: Path, subprocess_env: dict[str, str], saves_each: int
) -> None:
    barrier = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_SAVER, str(barrier), str(saves_each)],
            env=subprocess_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:  # both imported tiffin and wait at the barrier
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    barrier.touch()
    versions = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        versions += out.split()
    assert len(versions) == 2 * saves_each
    assert len(set(versions)) == len(versions)

    listed = models.list("shared")
    assert sorted(m.tag.version or "" for m in listed) == sorted(versions)
    newest = max(listed, key=lambda m: (m.creation_time, m.tag.version or ""))
    assert latest_file(tiffin_home, "shared") == newest.tag.version
    assert models.get("shared") == newest
    assert listed[0] == newest
    assert list((tiffin_home / "models" / ".tmp").iterdir()) == []


def test_model_yaml_is_plain_yaml_a_person_can_read(tiffin_home: Path) -> None:
    model = save("iris", labels={"team": "ml"})
    text = Path(model.path_of("model.yaml")).read_text()
    assert text.startswith("name: iris\n")
    assert "!!python" not in text  # safe_dump only
    dumped = json.dumps(models.get("iris").info.to_dict())
    assert '"team": "ml"' in dumped


def test_versions_of_quick_successive_saves_sort_by_time(tiffin_home: Path) -> None:
    saved = [save("iris") for _ in range(5)]
    versions = [m.tag.version or "" for m in saved]
    assert versions == sorted(versions)
    assert [m.tag for m in models.list("iris")] == [m.tag for m in reversed(saved)]


def test_tag_objects_and_strings_are_interchangeable() -> None:
    model = save("iris")
    assert models.get(model.tag) == models.get(str(model.tag))
    assert models.get(Tag("iris")) == model
