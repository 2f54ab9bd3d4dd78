"""``import tiffin`` stays cheap: no ML or server stack until it is used (habit 3)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import tiffin

HEAVY = ["numpy", "pandas", "sklearn", "mlflow", "torch", "starlette", "uvicorn", "rich"]

PROBE = """
import json, sys
{statement}
heavy = {heavy!r}
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def loaded_after(statement: str, env: dict[str, str]) -> list[str]:
    code = PROBE.format(statement=statement, heavy=HEAVY)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout
    loaded = json.loads(out.strip().splitlines()[-1])
    assert isinstance(loaded, list)
    return loaded


@pytest.mark.parametrize(
    "statement",
    [
        "import tiffin",
        "import tiffin, tiffin.exceptions, tiffin.tag",
        "import tiffin.models, tiffin.store",
        "import tiffin.cli",
        # the console script's own path for --help and for `models list`
        "from tiffin.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass",
        "from tiffin.cli import main\n"
        "try:\n    main(['models', 'list'])\nexcept SystemExit:\n    pass",
    ],
)
def test_importing_tiffin_loads_no_heavy_modules(
    statement: str, subprocess_env: dict[str, str]
) -> None:
    assert loaded_after(statement, subprocess_env) == []


def test_the_probe_does_see_heavy_modules(subprocess_env: dict[str, str]) -> None:
    """The check above can fail: touching a framework does load its library."""
    assert "numpy" in loaded_after("import numpy", subprocess_env)
    assert loaded_after("import tiffin\ntiffin.sklearn.load_model", subprocess_env) == []


def test_tiffin_help_works(subprocess_env: dict[str, str]) -> None:
    from .conftest import tiffin_exe

    result = subprocess.run(
        [tiffin_exe(), "--help"], env=subprocess_env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "Usage: tiffin" in result.stdout
    assert "models" in result.stdout
    assert result.stderr == ""


def test_public_api_is_sorted_and_resolves() -> None:
    assert tiffin.__all__ == sorted(tiffin.__all__)
    assert len(set(tiffin.__all__)) == len(tiffin.__all__)
    for name in tiffin.__all__:
        assert getattr(tiffin, name) is not None, name
    assert set(tiffin.__all__) <= set(dir(tiffin))
    with pytest.raises(AttributeError, match="no attribute 'nosuch'"):
        _ = tiffin.nosuch  # type: ignore[attr-defined]
