"""``lock_packages: true``: pip resolves the whole set and the build pins it -- offline, against
a ``--find-links`` folder of wheels made here (pip's own configuration is set aside)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tiffin
from tiffin.store import tiffins

from .test_build_support import invoke, project, save_clf, store_entries, write_wheel

pytestmark = pytest.mark.slow  # pip runs in a subprocess


@pytest.fixture
def offline_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of wheels as the only index this test's pip sees."""
    wheels = tmp_path / "wheelhouse"
    wheels.mkdir()
    write_wheel(wheels, "alpha", "1.0", ["beta>=2"])
    write_wheel(wheels, "beta", "1.0")
    write_wheel(wheels, "beta", "2.1")
    write_wheel(wheels, "gamma", "0.5", ["beta"])
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # no pip.conf: no other index
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return wheels


def _requirements(built: tiffins.BuiltTiffin) -> list[str]:
    text = (built.path / "env/python/requirements.txt").read_text()
    return [line for line in text.splitlines() if not line.startswith("#")]


def test_the_whole_resolved_set_is_pinned(
    offline_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_clf()
    (tmp_path / "dist").mkdir()
    write_wheel(tmp_path / "dist", "gamma", "0.5", ["beta"])  # a build's own wheel resolves too
    root = project(tmp_path / "proj", tiffinfile=(
        'service: "service.py:svc"\npython:\n  packages: [alpha]\n  lock_packages: true\n'
        f"  wheels: [{tmp_path / 'dist' / 'gamma-0.5-py3-none-any.whl'}]\n"
    ))  # fmt: skip
    monkeypatch.chdir(root)
    built = tiffins.get(invoke("build", "-q").stdout.strip())
    assert _requirements(built) == [
        f"tiffin[sklearn]=={tiffin.__version__}", "alpha==1.0", "beta==2.1", "gamma==0.5",
    ]  # fmt: skip
    assert "locked" in (built.path / "env/python/requirements.txt").read_text()
    assert built.info.python["lock_packages"] is True


def test_unlocked_requirements_stay_as_written(
    offline_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_clf()
    root = project(tmp_path / "proj", tiffinfile=(
        'service: "service.py:svc"\npython:\n  packages: [alpha]\n'
    ))  # fmt: skip
    monkeypatch.chdir(root)
    built = tiffins.get(invoke("build", "-q").stdout.strip())
    assert _requirements(built) == [f"tiffin[sklearn]=={tiffin.__version__}", "alpha"]


def test_a_set_pip_cannot_resolve_is_one_line_and_leaves_nothing(
    offline_index: Path, tmp_path: Path, tiffin_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_clf()
    root = project(tmp_path / "proj", tiffinfile=(
        'service: "service.py:svc"\npython:\n  packages: ["alpha", "beta<2"]\n'
        "  lock_packages: true\n"
    ))  # fmt: skip
    monkeypatch.chdir(root)
    result = invoke("build", "-q")
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tiffin: error: cannot lock the packages (pip): `python")
    assert "ERROR: Cannot install alpha==1.0 and beta<2" in lines[0], lines[0]
    assert store_entries(tiffin_home) == []
