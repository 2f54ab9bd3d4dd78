"""``tiffin serve TARGET``: finding the Service, and what the user sees when their code fails."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tiffin.exceptions import UserCodeFailed
from tiffin.process.targets import module_name_for, resolve_service

from .conftest import tiffin_exe

BROKEN = {
    "raises": (
        "import tiffin\n\ndef helper():\n    return 1 / 0\n\nx = helper()\n",
        ["line 6, in <module>", "line 4, in helper", "ZeroDivisionError: division by zero"],
    ),
    "syntax": (
        'import tiffin\nsvc = tiffin.Service("x"\n',
        ["line 2", "SyntaxError"],
    ),
    "missing_import": (
        "import tiffin\nimport nosuch_package_for_tiffin_tests\n",
        ["line 2, in <module>", "No module named 'nosuch_package_for_tiffin_tests'"],
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_service_file_shows_the_users_frames_only_and_exits_1(
    case: str, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    source, expected = BROKEN[case]
    path = tmp_path / f"{case}.py"
    path.write_text(source)
    result = subprocess.run(
        [tiffin_exe(), "serve", f"{path}:svc"],
        env=subprocess_env, capture_output=True, text=True, cwd=tmp_path, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    err = result.stderr
    assert err.startswith(f"tiffin: error: cannot import service '{path}:svc'"), err
    assert str(path) in err
    for text in expected:
        assert text in err, err
    assert "Traceback" not in err
    assert "/tiffin/" not in err.replace(str(path), "")  # no frames of tiffin itself
    assert "click" not in err and "importlib" not in err
    assert len(err.splitlines()) <= 12


def test_a_broken_service_module_is_reported_the_same_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "brokensvc_for_tests.py").write_text("import tiffin\nraise RuntimeError('nope')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserCodeFailed) as info:
        resolve_service("brokensvc_for_tests:svc", cwd=tmp_path)
    message = str(info.value)
    assert "brokensvc_for_tests.py\", line 2, in <module>" in message
    assert message.endswith("RuntimeError: nope")


def test_a_service_file_gets_the_same_module_name_in_every_process(tmp_path: Path) -> None:
    """API workers and runner processes unpickle each other's instances of classes defined in
    the service file by that name (it used to come from ``hash()``, salted per process)."""
    path = (tmp_path / "svc.py").resolve()
    code = textwrap.dedent(f"""
        from pathlib import Path
        from tiffin.process.targets import module_name_for
        print(module_name_for(Path({str(path)!r})))
    """)
    names = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, env={"PYTHONHASHSEED": seed}).stdout.strip()
        for seed in ("1", "2", "3")
    }  # fmt: skip
    assert names == {module_name_for(path)}
    assert module_name_for(path).isidentifier()
