"""Shared fixtures: every test gets its own TIFFIN_HOME; helpers for subprocesses and ports."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

pytest_plugins = ["tests.fixtures_mlflow"]

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiffin_exe() -> str:
    """The installed ``tiffin`` console script of this interpreter's environment."""
    return str(BIN / "tiffin")


@pytest.fixture
def anyio_backend() -> str:
    """Async tests (``pytest.mark.anyio``) run on asyncio only."""
    return "asyncio"


@pytest.fixture(autouse=True)
def tiffin_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "tiffin-home"
    monkeypatch.setenv("TIFFIN_HOME", str(home))
    return home


@pytest.fixture
def subprocess_env(tiffin_home: Path) -> dict[str, str]:
    """Environment for child processes: same TIFFIN_HOME, this interpreter's bin first."""
    env = dict(os.environ)
    env["TIFFIN_HOME"] = str(tiffin_home)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PYTHONWARNINGS", None)
    return env
