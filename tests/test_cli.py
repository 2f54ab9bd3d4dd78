"""``tiffin models ...``: in-process with CliRunner, and through the real console script.

Errors must be one readable line on stderr with exit code 1 (not found, store trouble) or
2 (bad usage, bad tag, bad archive) -- never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

import tiffin
from tiffin import models
from tiffin.cli import human_size, main

from .conftest import tiffin_exe


class Doubler:
    def predict(self, x: int) -> int:
        return 2 * x


def save(tag: str = "iris", **kwargs: Any) -> models.Model:
    return tiffin.picklable_model.save_model(tag, Doubler(), **kwargs)


def invoke(*args: str, input: str | None = None) -> Result:
    result = CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("tiffin: error: ") or lines[0].startswith("Error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def run_exe(*args: str, env: dict[str, str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tiffin_exe(), *args], env=env, capture_output=True, text=True, timeout=60, **kwargs
    )


# -- models list -----------------------------------------------------------------------------


def test_list_an_empty_store() -> None:
    result = invoke("models", "list")
    assert result.exit_code == 0
    assert result.stdout.split() == ["Tag", "Module", "Size", "Creation", "Time"]
    assert result.stderr == ""
    assert json.loads(invoke("models", "list", "-o", "json").stdout) == []


def test_list_table_newest_first() -> None:
    old = save("alpha")
    new = tiffin.sklearn.save_model("beta", _estimator())
    result = invoke("models", "list")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split("  ")[0] == "Tag"
    assert [c.strip() for c in header.split("  ") if c.strip()] == [
        "Tag",
        "Module",
        "Size",
        "Creation Time",
    ]
    assert len(rows) == 2
    assert rows[0].split()[:2] == [str(new.tag), "tiffin.sklearn"]
    assert rows[1].split()[:2] == [str(old.tag), "tiffin.picklable_model"]
    assert human_size(old.size_bytes()) in rows[1]
    assert old.creation_time.strftime("%Y-%m-%d %H:%M:%S") in rows[1]
    # columns line up
    assert rows[0].index("tiffin.") == rows[1].index("tiffin.") == header.index("Module")


def _estimator() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit([[0.0], [1.0]], [0, 1])


def test_list_one_name_and_machine_readable_outputs() -> None:
    a1 = save("alpha", labels={"team": "a"})
    save("beta")
    a2 = save("alpha")
    as_json = json.loads(invoke("models", "list", "alpha", "-o", "json").stdout)
    assert [row["tag"] for row in as_json] == [str(a2.tag), str(a1.tag)]
    assert as_json[1] == {
        "tag": str(a1.tag),
        "module": "tiffin.picklable_model",
        "size_bytes": a1.size_bytes(),
        "creation_time": a1.creation_time.isoformat(),
        "labels": {"team": "a"},
    }
    as_yaml = yaml.safe_load(invoke("models", "list", "alpha", "--output", "yaml").stdout)
    assert as_yaml == as_json
    table = invoke("models", "list", "beta").stdout
    assert "alpha" not in table and "beta:" in table


def test_list_reports_broken_entries_on_stderr_and_exits_0() -> None:
    good = save("good")
    bad = save("iris:v1")
    Path(bad.path_of("model.yaml")).write_text("name: [unclosed\n")
    result = invoke("models", "list")
    assert result.exit_code == 0
    assert str(good.tag) in result.stdout
    assert "iris:v1" not in result.stdout
    [warning] = result.stderr.splitlines()
    assert warning.startswith("tiffin: warning: broken entry iris:v1: ")
    assert bad.path_of("model.yaml") in warning
    as_json = json.loads(invoke("models", "list", "-o", "json").stdout)
    assert [row["tag"] for row in as_json] == [str(good.tag)]


def test_list_with_a_bad_output_format_is_a_usage_error() -> None:
    result = invoke("models", "list", "-o", "xml")
    assert result.exit_code == 2
    assert "Invalid value for '-o'" in result.stderr


# -- models get ------------------------------------------------------------------------------


def test_get_outputs() -> None:
    model = save("iris:v1", labels={"a": "b"}, metadata={"x": 0.1 + 0.2})
    as_yaml = yaml.safe_load(invoke("models", "get", "iris:v1").stdout)
    assert as_yaml["tag"] == "iris:v1"
    assert as_yaml["path"] == model.path
    assert as_yaml["module"] == "tiffin.picklable_model"
    assert as_yaml["labels"] == {"a": "b"}
    assert as_yaml["metadata"] == {"x": 0.30000000000000004}
    assert as_yaml["signatures"] == {"predict": {"batchable": False, "batch_dim": 0}}
    as_json = json.loads(invoke("models", "get", "iris", "-o", "json").stdout)
    assert as_json == as_yaml
    result = invoke("models", "get", "iris:latest", "-o", "path")
    assert result.stdout == model.path + "\n"


@pytest.mark.parametrize(
    ("args", "code", "fragments"),
    [
        (["models", "get", "nosuch"], 1, ["model 'nosuch' not found", "tiffin models list"]),
        (["models", "get", "iris:nosuch"], 1, ["model 'iris:nosuch' not found"]),
        (["models", "get", "bad name"], 2, ["invalid name 'bad name'", "lowercase letters"]),
        (["models", "get", "iris:"], 2, ["empty version"]),
        (["models", "get", "a:b:c"], 2, ["at most one ':'"]),
        (["models", "get", "a" * 64], 2, ["at most 63 characters"]),
        (["models", "list", "Not Valid"], 2, ["invalid name"]),
        (["models", "delete", "-y", "nosuch"], 1, ["model 'nosuch' not found"]),
        (["models", "delete", "-y", "iris:nosuch"], 1, ["not found"]),
        (["models", "delete", "-y", "iris/../x"], 2, ["invalid name"]),
        (["models", "export", "nosuch", "."], 1, ["not found"]),
        (["models", "import", "no-such-file.tiffinmodel"], 1, ["does not exist"]),
        (["models", "nosuch"], 2, ["No such command"]),
    ],
)
def test_errors_are_one_line_with_the_right_exit_code(
    args: list[str], code: int, fragments: list[str]
) -> None:
    save("iris")
    result = invoke(*args)
    assert result.exit_code == code, result.output
    if result.stderr.startswith("Usage:"):  # click's own usage errors end with 'Error: ...'
        assert result.stderr.strip().splitlines()[-1].startswith("Error: ")
        assert all(f in result.stderr for f in fragments)
    else:
        assert_one_line_error(result.stderr, *fragments)
    assert result.stdout == ""


def test_get_of_a_corrupt_entry_names_the_file() -> None:
    bad = save("iris:v1")
    Path(bad.path_of("model.yaml")).write_text("- not\n- a mapping\n")
    result = invoke("models", "get", "iris:v1")
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, bad.path_of("model.yaml"), "must hold a mapping")


# -- models delete ---------------------------------------------------------------------------


def test_delete_with_yes_and_with_confirmation() -> None:
    first, second = save("iris"), save("iris")
    result = invoke("models", "delete", "iris", "-y")
    assert result.exit_code == 0
    assert result.stdout == f"deleted model '{second.tag}'\n"
    assert models.list() == [first]

    refused = invoke("models", "delete", "iris", input="n\n")
    assert refused.exit_code == 1
    assert "nothing deleted" in refused.stderr
    assert models.list() == [first]

    confirmed = invoke("models", "delete", str(first.tag), input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert f"Delete model '{first.tag}'?" in confirmed.stderr
    assert models.list() == []


# -- export / import -------------------------------------------------------------------------


def test_export_and_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = save("iris")
    result = invoke("models", "export", "iris", str(tmp_path))
    assert result.exit_code == 0, result.output
    archive = tmp_path / f"iris-{model.tag.version}.tiffinmodel"
    assert result.stdout == f"{archive}\n"

    named = tmp_path / "copy.tiffinmodel"
    assert invoke("models", "export", str(model.tag), str(named)).stdout == f"{named}\n"

    monkeypatch.setenv("TIFFIN_HOME", str(tmp_path / "elsewhere"))
    result = invoke("models", "import", str(archive))
    assert result.exit_code == 0, result.output
    assert result.stdout == f"imported model '{model.tag}'\n"
    assert models.get("iris").info == model.info

    again = invoke("models", "import", str(named))
    assert again.exit_code == 1
    assert_one_line_error(again.stderr, "already exists")


def test_import_of_unsafe_or_truncated_archives_fails_cleanly(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tiffinmodel"
    with tarfile.open(evil, "w:gz") as tar:
        member = tarfile.TarInfo("../escaped.txt")
        tar.addfile(member, None)
    result = invoke("models", "import", str(evil))
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "unsafe member path", "nothing was imported")

    save("iris")
    archive = Path(models.export_model("iris", tmp_path))
    models.delete("iris")
    archive.write_bytes(archive.read_bytes()[:-20])
    result = invoke("models", "import", str(archive))
    assert result.exit_code == 2
    assert_one_line_error(result.stderr, "nothing was imported")
    assert models.list() == []
    assert not (tmp_path / "escaped.txt").exists()


# -- the real console script -----------------------------------------------------------------


def test_console_script_lists_and_reports_broken_entries(subprocess_env: dict[str, str]) -> None:
    good = save("good")
    bad = save("iris:v1")
    Path(bad.path_of("model.yaml")).write_text("name: iris\nversion: v1\n")  # keys missing
    result = run_exe("models", "list", env=subprocess_env)
    assert result.returncode == 0
    assert str(good.tag) in result.stdout and "iris:v1" not in result.stdout
    assert result.stderr.count("\n") == 1
    assert "broken entry iris:v1" in result.stderr and "missing key(s)" in result.stderr

    version = run_exe("--version", env=subprocess_env)
    assert version.returncode == 0 and tiffin.__version__ in version.stdout


def test_console_script_errors(subprocess_env: dict[str, str]) -> None:
    save("iris")
    missing = run_exe("models", "get", "nosuch", env=subprocess_env)
    assert missing.returncode == 1
    assert_one_line_error(missing.stderr, "model 'nosuch' not found")

    bad_tag = run_exe("models", "delete", "-y", "Bad Tag!", env=subprocess_env)
    assert bad_tag.returncode == 2
    assert_one_line_error(bad_tag.stderr, "invalid name 'Bad Tag!'", "at most 63 characters")

    assert run_exe("models", "list", env=subprocess_env).stdout.count("iris:") == 1


def test_console_script_lower_cases_mixed_case_with_a_notice(
    subprocess_env: dict[str, str],
) -> None:
    model = save("iris")
    result = run_exe("models", "get", "IRIS", "-o", "path", env=subprocess_env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == model.path + "\n"
    assert "name 'IRIS' lower-cased to 'iris'" in result.stderr


def test_tiffin_home_pointing_at_a_file(tmp_path: Path, subprocess_env: dict[str, str]) -> None:
    plain_file = tmp_path / "a-file"
    plain_file.write_text("not a store")
    env = dict(subprocess_env, TIFFIN_HOME=str(plain_file))
    for args in (["models", "list"], ["models", "get", "iris"], ["models", "delete", "-y", "x"]):
        result = run_exe(*args, env=env)
        assert result.returncode != 0
        assert_one_line_error(result.stderr, str(plain_file), "not a directory", "TIFFIN_HOME")
    assert plain_file.read_text() == "not a store"


# -- a store the user cannot write to --------------------------------------------------------

NOBODY = 65534
# Run the CLI entry point as `nobody` when the interpreter itself is out of nobody's reach
# (here it lives under /root, mode 0700): start as root, import what the commands need, then
# drop to nobody before any store access. The permission checks that follow are the kernel's.
DROP_TO_NOBODY = """
import os, sys
import difflib, gzip, json, shutil, tarfile, zlib
import yaml
import tiffin.cli, tiffin.models, tiffin.store, tiffin.frameworks.picklable_model
os.setgroups([])
os.setgid(65534)
os.setuid(65534)
tiffin.cli.main(args=sys.argv[1:], prog_name="tiffin")
"""


def run_unprivileged(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        return run_exe(*args, env=env)
    try:
        return run_exe(*args, env=env, user=NOBODY, group=NOBODY, extra_groups=[])
    except PermissionError:  # nobody cannot execute the interpreter
        return subprocess.run(
            [sys.executable, "-c", DROP_TO_NOBODY, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )


@pytest.fixture
def read_only_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A store under /tmp that the unprivileged runner can read but not write.

    As root: root-owned, every directory 0o755 (and a child process runs as nobody).
    Otherwise: every directory 0o500, restored afterwards so it can be removed.
    """
    base = Path(tempfile.mkdtemp(prefix="tiffin-readonly-", dir="/tmp"))
    home = base / "home"
    monkeypatch.setenv("TIFFIN_HOME", str(home))
    try:
        yield home
    finally:
        for path in [base, *base.rglob("*")]:
            if path.is_dir() and not path.is_symlink():
                path.chmod(0o755)
        shutil.rmtree(base)


def _lock_down(base: Path) -> None:
    mode = 0o755 if os.geteuid() == 0 else 0o500
    for path in [base, *base.rglob("*")]:
        if path.is_dir():
            path.chmod(mode)
        elif path.is_file():
            path.chmod(0o644)


def test_a_store_that_is_not_writable(
    read_only_home: Path, subprocess_env: dict[str, str]
) -> None:
    kept = save("kept")
    gone = save("gone")
    archive = Path(models.export_model(gone.tag, read_only_home.parent))
    models.delete(gone.tag)
    (read_only_home / "models" / "kept" / "latest").unlink()  # must be found without writing
    _lock_down(read_only_home.parent)
    env = dict(subprocess_env, TIFFIN_HOME=str(read_only_home))

    listed = run_unprivileged("models", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert str(kept.tag) in listed.stdout
    found = run_unprivileged("models", "get", "kept", "-o", "path", env=env)
    assert found.returncode == 0, found.stderr
    assert found.stdout == kept.path + "\n"

    imported = run_unprivileged("models", "import", str(archive), env=env)
    assert imported.returncode == 1, imported
    assert_one_line_error(imported.stderr, "cannot write to model store", "Permission denied")

    deleted = run_unprivileged("models", "delete", "-y", "kept", env=env)
    assert deleted.returncode == 1, deleted
    assert_one_line_error(deleted.stderr, "cannot delete", "Permission denied")

    assert models.list() == [kept]
    assert list((read_only_home / "models" / ".tmp").iterdir()) == []
