"""The generated ``env/docker/Dockerfile``, read by a real Dockerfile parser (dockerfile-parse):
its base image, its install steps, where it puts the built tiffin and how it serves it.

No container engine runs here: building the image itself is ``tiffin containerize``'s, where
docker or podman works (``test_containerize.py``).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

import tiffin
from tiffin.building.dockerfile import dockerfile
from tiffin.building.tiffinfile import DockerOptions
from tiffin.store import tiffins
from tiffin.tag import Tag

from .test_build_support import invoke, project, save_clf

TAG = Tag("iris", "v1")


def parse(text: str, tmp_path: Path) -> DockerfileParser:
    parser = DockerfileParser(path=str(tmp_path / "Dockerfile"))
    parser.content = text
    return parser


def steps(parser: DockerfileParser, instruction: str) -> list[str]:
    return [s["value"] for s in parser.structure if s["instruction"] == instruction]


def run_commands(parser: DockerfileParser) -> list[list[str]]:
    """Each RUN's commands, split on && and into words as the shell would."""
    return [shlex.split(part) for value in steps(parser, "RUN") for part in value.split("&&")]


@pytest.fixture
def built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tiffins.BuiltTiffin:
    save_clf()
    (tmp_path / "setup.sh").write_text("#!/bin/sh\necho set up\n")
    root = project(tmp_path / "proj", tiffinfile=(
        'service: "service.py:svc"\n'
        "docker:\n  system_packages: [libgomp1, curl]\n"
        "  env: {OMP_NUM_THREADS: '1', GREETING: 'hi there'}\n"
        f"  setup_script: {tmp_path / 'setup.sh'}\n"
    ))  # fmt: skip
    monkeypatch.chdir(root)
    return tiffins.get(invoke("build", "-q", "--version", "v1").stdout.strip())


def test_the_built_dockerfile_installs_the_requirements_and_serves_the_tiffin(
    built: tiffins.BuiltTiffin,
) -> None:
    parser = DockerfileParser(path=str(built.dockerfile))
    assert parser.baseimage == "python:{}.{}-slim".format(*__import__("sys").version_info[:2])
    env = parser.envs
    assert env["TIFFIN_HOST"] == "0.0.0.0" and env["TIFFIN_PORT"] == "3000"
    assert env["OMP_NUM_THREADS"] == "1" and env["GREETING"] == "hi there"
    commands = run_commands(parser)
    assert ["apt-get", "install", "-y", "--no-install-recommends", "libgomp1", "curl"] in commands
    install = next(c for c in commands if c[:4] == ["python", "-m", "pip", "install"])
    requirements = install[install.index("-r") + 1]
    # every file the steps copy from the context exists in the built tiffin, where they use it
    copies = [value.split() for value in steps(parser, "COPY")]
    sources = {src: dst for *flags, src, dst in copies}
    for source in sources:
        assert (built.path / source).exists(), source
    assert requirements == sources["env/python/"] + "requirements.txt"
    assert ["/opt/tiffin/env/docker/setup_script"] in commands
    # the built tiffin lands where $TIFFIN_HOME's store looks for it, and is what is served
    assert sources["."] == f"{env['TIFFIN_HOME']}/tiffins/{built.tag.name}/{built.tag.version}/"
    assert copies[-1][0] == "--chown=tiffin:tiffin"
    assert steps(parser, "USER") == ["tiffin"]
    assert steps(parser, "EXPOSE") == ["3000"]
    entrypoint = json.loads(steps(parser, "ENTRYPOINT")[0])
    assert entrypoint == ["tiffin", "serve", str(built.tag), "--tiffin"]
    # the order matters: packages before the code (cache), the user's code last, then USER
    order = [s["instruction"] for s in parser.structure if s["instruction"] != "COMMENT"]
    assert order.index("FROM") == 0 and order[-1] == "ENTRYPOINT"
    assert order.index("USER") > max(i for i, o in enumerate(order) if o in ("RUN", "COPY"))


def test_the_readme_says_where_the_image_is_built(built: tiffins.BuiltTiffin) -> None:
    text = (built.path / "README.md").read_text()
    assert f"tiffin containerize {built.tag}" in text
    assert "only where a container engine (docker or podman) runs" in text


@pytest.mark.parametrize(
    ("options", "base", "expected_run"),
    [
        ({"distro": "alpine", "system_packages": ["libgomp"]}, "python:3.12-alpine",
         ["apk", "add", "--no-cache", "libgomp"]),
        ({"cuda_version": "12.4.1"}, "nvidia/cuda:12.4.1-runtime-ubuntu22.04",
         ["python3.12", "-m", "venv", "/opt/venv"]),
        ({"base_image": "ghcr.io/me/python:3.12", "system_packages": ["git"]},
         "ghcr.io/me/python:3.12",
         ["apt-get", "install", "-y", "--no-install-recommends", "git"]),
    ],
)  # fmt: skip
def test_each_base_image_gets_its_own_install_steps(
    options: dict, base: str, expected_run: list[str], tmp_path: Path
) -> None:
    docker = DockerOptions.model_validate(options)
    parser = parse(dockerfile(TAG, docker, python_version="3.12", wheels=True), tmp_path)
    assert parser.baseimage == base
    commands = run_commands(parser)
    assert expected_run in commands
    install = next(c for c in commands if c[:4] == ["python", "-m", "pip", "install"])
    assert install[4:] == ["--find-links", "/opt/tiffin/env/python/wheels", "-r",
                           "/opt/tiffin/env/python/requirements.txt"]  # fmt: skip
    assert json.loads(steps(parser, "ENTRYPOINT")[0])[:3] == ["tiffin", "serve", "iris:v1"]


def test_a_conda_environment_is_created_before_pip_runs(tmp_path: Path) -> None:
    parser = parse(dockerfile(TAG, DockerOptions(), python_version="3.11", conda=True), tmp_path)
    assert parser.baseimage == "condaforge/miniforge3:latest"
    commands = run_commands(parser)
    conda = commands.index(["conda", "env", "update", "-n", "base", "-f",
                            "/opt/tiffin/env/conda/environment.yml"])  # fmt: skip
    pip = next(i for i, c in enumerate(commands) if c[:4] == ["python", "-m", "pip", "install"])
    assert ["conda", "install", "-y", "-n", "base", "python=3.11"] in commands
    assert conda < pip


def test_tiffin_in_the_image_is_the_version_that_built_it(built: tiffins.BuiltTiffin) -> None:
    requirements = (built.path / "env/python/requirements.txt").read_text().splitlines()
    assert f"tiffin[sklearn]=={tiffin.__version__}" in requirements
