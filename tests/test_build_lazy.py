"""While ``tiffin build`` imports the service, installed packages load when first used: a
package the service only imports costs nothing, one it uses loads in full, one that is missing
fails the build at the user's line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tiffin.building.lazy import is_lazy, lazy_packages, module_file
from tiffin.store import tiffins

from .test_build_support import invoke, project, store_entries

PACKAGE = """
from pathlib import Path
Path({marker!r}).write_text("loaded")
VALUE = 42
"""


@pytest.fixture
def heavy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed package (outside the build context) that leaves a file when it runs."""
    site = tmp_path / "site"
    (site / "tiffin_heavy_pkg").mkdir(parents=True)
    marker = tmp_path / "heavy-ran"
    (site / "tiffin_heavy_pkg" / "__init__.py").write_text(PACKAGE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(site))
    yield marker
    sys.modules.pop("tiffin_heavy_pkg", None)


def _build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, service: str) -> tiffins.BuiltTiffin:
    root = project(tmp_path / "proj", service=service, tiffinfile='service: "service.py:svc"\n')
    monkeypatch.chdir(root)
    result = invoke("build", "-q")
    assert result.exit_code == 0, result.output
    return tiffins.get(result.stdout.strip())


def test_a_package_the_service_only_imports_does_not_run(
    heavy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = "import tiffin\nimport tiffin_heavy_pkg\nsvc = tiffin.Service('lazy')\n"
    built = _build(tmp_path, monkeypatch, service)
    assert built.info.name == "lazy"
    assert not heavy.exists()
    assert is_lazy(sys.modules["tiffin_heavy_pkg"])
    assert sys.modules["tiffin_heavy_pkg"].VALUE == 42  # touched: it runs now, in full
    assert heavy.read_text() == "loaded" and not is_lazy(sys.modules["tiffin_heavy_pkg"])


def test_a_package_the_service_uses_at_import_loads_in_full(
    heavy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = (
        "import tiffin\nfrom tiffin_heavy_pkg import VALUE\n"
        "svc = tiffin.Service(f'lazy{VALUE}')\n"
    )
    assert _build(tmp_path, monkeypatch, service).info.name == "lazy42"
    assert heavy.read_text() == "loaded"


def test_a_package_that_is_not_installed_fails_at_the_users_line(
    tmp_path: Path, tiffin_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = "import tiffin\n\nimport tiffin_not_installed_pkg\nsvc = tiffin.Service('x')\n"
    root = project(tmp_path / "proj", service=service, tiffinfile='service: "service.py:svc"\n')
    monkeypatch.chdir(root)
    result = invoke("build")
    assert result.exit_code == 1
    assert 'service.py", line 3, in <module>' in result.stderr
    assert "No module named 'tiffin_not_installed_pkg'" in result.stderr
    assert store_entries(tiffin_home) == []


def test_the_users_own_modules_and_the_standard_library_run_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "mine_for_lazy_test.py").write_text("RAN = True\n")
    monkeypatch.syspath_prepend(str(tmp_path / "own"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    with lazy_packages(tmp_path):
        import wave  # a standard library module nothing here imported before

        import mine_for_lazy_test  # type: ignore[import-not-found]
    try:
        assert not is_lazy(mine_for_lazy_test) and mine_for_lazy_test.RAN
        assert not is_lazy(wave)
        assert module_file(mine_for_lazy_test) == str(tmp_path / "own" / "mine_for_lazy_test.py")
    finally:
        sys.modules.pop("mine_for_lazy_test", None)
