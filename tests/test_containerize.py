"""``tiffin containerize`` and ``tiffin build --containerize``: the engine is whichever of
docker and podman answers ``info`` within 5 s; where none does, one line with the command to run
elsewhere. This machine has no working engine, so the engines here are small stand-in programs
on ``PATH`` that answer ``info`` as told and record the ``build`` command they are given."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tiffin.building.containerize import containerize
from tiffin.exceptions import MissingDependency
from tiffin.store import tiffins

from .conftest import tiffin_exe
from .test_build_support import invoke, project, save_clf

ENGINE = '''#!{python}
import json, sys, time
if sys.argv[1:] == ["info"]:
    time.sleep({info_sleep})
    sys.exit({info_code})
with open({log!r}, "a") as log:
    log.write(json.dumps([sys.argv[0].rsplit("/", 1)[-1], *sys.argv[1:]]) + "\\n")
print("building for real", file=sys.stderr)
sys.exit({build_code})
'''


def fake_engine(folder: Path, name: str, *, info_code: int = 0, info_sleep: float = 0,
                build_code: int = 0) -> Path:  # fmt: skip
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(ENGINE.format(python=sys.executable, info_sleep=info_sleep,
                                  info_code=info_code, log=str(folder / "calls.jsonl"),
                                  build_code=build_code))  # fmt: skip
    path.chmod(0o755)
    return path


def calls(folder: Path) -> list[list[str]]:
    log = folder / "calls.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tiffins.BuiltTiffin:
    save_clf()
    monkeypatch.chdir(project(tmp_path / "proj", tiffinfile='service: "service.py:svc"\n'))
    return tiffins.get(invoke("build", "-q").stdout.strip())


def test_without_an_engine_one_line_gives_the_command_to_run_elsewhere(
    built: tiffins.BuiltTiffin, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    engines = tmp_path / "engines"
    fake_engine(engines, "docker", info_code=1)  # a client without its daemon, as here
    env = {**subprocess_env, "PATH": str(engines)}
    result = subprocess.run([tiffin_exe(), "containerize", str(built.tag)], env=env,
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "tiffin: error: no container engine answers here (neither `docker info` nor `podman "
        "info` exited 0 within 5 s); build the image where one does: docker build -t "
        f"{built.tag} -f {built.dockerfile} {built.path}"
    ]
    assert calls(engines) == []  # asked for info, built nothing


def test_an_engine_that_answers_builds_the_image(
    built: tiffins.BuiltTiffin, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    engines = tmp_path / "engines"
    fake_engine(engines, "podman")
    env = {**subprocess_env, "PATH": str(engines)}
    result = subprocess.run([tiffin_exe(), "containerize", str(built.tag), "-t", "me/clf:1"],
                            env=env, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "me/clf:1"
    assert "building for real" in result.stderr  # the engine's own output, as it comes
    assert calls(engines) == [
        ["podman", "build", "-t", "me/clf:1", "-f", str(built.dockerfile), str(built.path)]
    ]


def test_build_containerize_and_a_failing_image_build(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    root = project(tmp_path / "proj", tiffinfile='service: "service.py:svc"\n',
                   service="import tiffin\nsvc = tiffin.Service('plain')\n")  # fmt: skip
    engines = tmp_path / "engines"
    fake_engine(engines, "docker", build_code=3)
    env = {**subprocess_env, "PATH": str(engines)}
    command = [tiffin_exe(), "build", "--containerize", "-q", "--version", "v1"]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert result.returncode == 1
    assert result.stdout.strip() == "plain:v1"  # built, then the image failed
    assert result.stderr.strip().splitlines()[-1] == (
        "tiffin: error: cannot build image plain:v1: `docker` exited with 3; see its output above"
    )
    assert calls(engines)[0][:4] == ["docker", "build", "-t", "plain:v1"]


def test_docker_is_preferred_and_a_slow_one_is_passed_over(
    built: tiffins.BuiltTiffin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engines = tmp_path / "engines"
    fake_engine(engines, "docker")
    fake_engine(engines, "podman")
    monkeypatch.setenv("PATH", str(engines))
    assert containerize(built.tag) == str(built.tag)
    assert [call[0] for call in calls(engines)] == ["docker"]
    fake_engine(engines, "docker", info_sleep=30)  # hangs: passed over after the timeout
    assert containerize(built.tag, image="x:1", probe_timeout=1.0) == "x:1"
    assert [call[0] for call in calls(engines)] == ["docker", "podman"]
    fake_engine(engines, "podman", info_sleep=30)
    with pytest.raises(MissingDependency, match=r"within 0\.5 s"):
        containerize(built.tag, probe_timeout=0.5)
    assert len(calls(engines)) == 2


def test_the_stand_in_engine_is_honest(tmp_path: Path) -> None:
    """The stand-in answers ``info`` with the exit status it is given (the tests above rely
    on it)."""
    engine = fake_engine(tmp_path, "docker", info_code=1)
    assert subprocess.run([str(engine), "info"], timeout=30).returncode == 1
    engine = fake_engine(tmp_path, "docker")
    assert subprocess.run([str(engine), "info"], timeout=30).returncode == 0
