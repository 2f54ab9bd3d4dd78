"""``tiffin build`` on bad input: one readable line (an import error: the user's own frames,
one screen), exit status != 0, and nothing in the store -- not even a staging leftover."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from .conftest import tiffin_exe
from .test_build_support import invoke, project, save_clf, store_entries

GOOD = 'service: "service.py:svc"\n'

#: case -> (tiffinfile, service.py or None for the good one, exit status, words of the line)
CASES = {
    "no service": ("labels: {a: b}\n", None, 2, ["has no `service`", 'service: "service.py:svc"']),
    "bad yaml": ('service: "service.py:svc"\npython: [\n', None, 2,
                 ["is not valid YAML", "line 3"]),
    "unknown key": (GOOD + "python:\n  requirments_txt: r.txt\n", None, 2,
                    ["unknown key 'python.requirments_txt'", "did you mean 'requirements_txt'",
                     "packages, requirements_txt, lock_packages"]),
    "unknown top key": (GOOD + "dockr: {}\n", None, 2, ["unknown key 'dockr'", "docker"]),
    "unset variable": (GOOD + "python:\n  requirements_txt: ${TIFFIN_TEST_UNSET}/r.txt\n",
                       None, 2, ["python.requirements_txt", "$TIFFIN_TEST_UNSET is not set"]),
    "missing model tag": (GOOD + "models: ['nosuch:latest']\n", None, 1,
                          ["model 'nosuch:latest'", "not in the model store"]),
    "missing requirements file": (GOOD + "python:\n  requirements_txt: ./nope.txt\n", None, 1,
                                  ["python.requirements_txt", "nope.txt does not exist"]),
    "missing service file": ('service: "nosuch.py:svc"\n', None, 1,
                             ["service file", "nosuch.py does not exist"]),
    "not a service": (GOOD, "import tiffin\nsvc = 42\n", 2, ["is a int, not a tiffin.Service"]),
    "bad python version": (GOOD + "docker:\n  python_version: 3.10\n", None, 2,
                           ["docker.python_version", "'3.1'", "quote it"]),
    "service excluded": (GOOD + "exclude: ['service.py']\n", None, 2,
                         ["service.py", "not among the files the build includes"]),
    "editable requirement": (GOOD + "python:\n  requirements_txt: ./r.txt\n", None, 2,
                             ["r.txt, line 1", "editable install"]),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_leaves_nothing(
    case: str, tmp_path: Path, tiffin_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiffinfile, service, code, words = CASES[case]
    save_clf()
    root = project(tmp_path / "proj", tiffinfile=tiffinfile)
    if service is not None:
        (root / "service.py").write_text(service)
    (root / "r.txt").write_text("-e ./mylib\n")
    monkeypatch.delenv("TIFFIN_TEST_UNSET", raising=False)
    monkeypatch.chdir(root)
    result = invoke("build")
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tiffin: error: ")
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert result.stdout == ""
    assert store_entries(tiffin_home) == []


def test_a_version_that_exists_is_refused_and_kept(
    tmp_path: Path, tiffin_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_clf()
    monkeypatch.chdir(project(tmp_path / "proj"))
    assert invoke("build", "--version", "v1", "-q").exit_code == 0
    before = (tiffin_home / "tiffins/clfsvc/v1/tiffin.yaml").read_bytes()
    result = invoke("build", "--version", "v1")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"tiffin: error: tiffin 'clfsvc:v1' already exists in store {tiffin_home / 'tiffins'}; "
        "omit the version to get a new one, or `tiffin delete clfsvc:v1` first"
    )
    assert store_entries(tiffin_home) == ["clfsvc/v1"]
    assert (tiffin_home / "tiffins/clfsvc/v1/tiffin.yaml").read_bytes() == before


def test_an_import_error_shows_the_users_file_and_line_on_one_screen(
    tmp_path: Path, tiffin_home: Path, subprocess_env: dict[str, str]
) -> None:
    """Through the real console script: the user's frames, no tiffin internals."""
    root = project(tmp_path / "proj", tiffinfile=GOOD)
    (root / "helpers.py").write_text("def load():\n    return {}['weights']\n")
    (root / "service.py").write_text("import tiffin\nimport helpers\n\nhelpers.load()\n")
    result = subprocess.run(
        [tiffin_exe(), "build"], cwd=root, env=subprocess_env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    err = result.stderr
    assert err.startswith("tiffin: error: cannot import service 'service.py:svc':")
    assert f'File "{root / "service.py"}", line 4, in <module>' in err
    assert f'File "{root / "helpers.py"}", line 2, in load' in err
    assert "KeyError: 'weights'" in err
    assert "Traceback" not in err and "/tiffin/" not in err.replace(str(root), "")
    assert len(err.splitlines()) <= 12
    assert result.stdout == ""
    assert store_entries(tiffin_home) == []


def test_a_model_the_service_asks_for_and_the_store_lacks(
    tmp_path: Path, tiffin_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The service's own ``get()`` fails: the user's line, and the store's one-line reason."""
    monkeypatch.chdir(project(tmp_path / "proj", tiffinfile=GOOD))  # no clf model saved
    result = invoke("build")
    assert result.exit_code == 1
    assert 'service.py", line 5, in <module>' in result.stderr
    assert "NotFound: model 'clf:latest' not found in store" in result.stderr
    assert store_entries(tiffin_home) == []


def test_a_missing_tiffinfile_names_where_it_looked(tmp_path: Path) -> None:
    result = invoke("build", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        f"tiffin: error: no tiffinfile.yaml (or tiffinfile.yml) in {tmp_path}: write one there, "
        "or pass -f FILE"
    )
    result = invoke("build", "-f", str(tmp_path / "other.yaml"))
    assert result.exit_code == 1
    assert "tiffinfile" in result.stderr and "does not exist" in result.stderr
