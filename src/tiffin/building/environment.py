"""A built tiffin's ``env/``: ``python/`` (requirements.txt, python_version.txt, wheels/),
``conda/environment.yml`` when the tiffinfile has ``conda``, and ``docker/`` (the Dockerfile
and the setup script). Each writer returns what ``tiffin.yaml`` records about its part.

A conda environment comes from conda-forge's image, so it goes with ``distro: debian`` and
no CUDA image; channels default to ``conda-forge``.
"""

from __future__ import annotations

import platform
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tiffin._version import __version__
from tiffin.building import requirements as reqs
from tiffin.building.dockerfile import dockerfile
from tiffin.building.tiffinfile import TiffinFile, resolve_path
from tiffin.exceptions import InvalidArgument
from tiffin.tag import Tag

__all__ = ["Progress", "conda_env", "docker_env", "python_env"]

#: told ``(step, done, total)`` as a long step goes: "copying models" (bytes), "locking
#: packages" (0 of 1, then 1 of 1)
Progress = Callable[[str, int, int], None]


# -- env/ --------------------------------------------------------------------------------------


def python_env(
    config: TiffinFile, ctx: Path, env: Path, frameworks: set[str], progress: Progress | None
) -> dict[str, Any]:
    """Write ``env/python/``; return what tiffin.yaml records about it."""
    options = config.python
    where = "python"
    python_dir = env / "python"
    python_dir.mkdir(parents=True)
    wheels = [resolve_path(ctx, w, f"{where}.wheels", what="wheel") for w in options.wheels]
    lines = list(options.packages)
    if options.requirements_txt:
        path = resolve_path(ctx, options.requirements_txt, f"{where}.requirements_txt",
                            what="requirements file")  # fmt: skip
        lines += reqs.read_requirements(path)
    lines += [reqs.wheel_requirement(wheel) for wheel in wheels]
    if wheels:
        (python_dir / "wheels").mkdir()
        for wheel in wheels:
            shutil.copy2(wheel, python_dir / "wheels" / wheel.name)
    option_lines = reqs.index_options(options.index_url, options.extra_index_url)
    option_lines += [line for line in lines if line.startswith("-")]
    wanted = [line for line in lines if not line.startswith("-")]
    if options.lock_packages:
        from tiffin.building.lock import lock

        if progress is not None:
            progress("locking packages", 0, 1)
        wanted = lock(option_lines + wanted,
                      find_links=[python_dir / "wheels"] if wheels else [])  # fmt: skip
        if progress is not None:
            progress("locking packages", 1, 1)
    own = [] if reqs.names_tiffin(wanted) else [reqs.tiffin_requirement(frameworks)]
    header = [
        "# The Python packages this built tiffin needs (written by tiffin build "
        f"{__version__}{', locked' if options.lock_packages else ''}). Install them with",
        "#   pip install --find-links env/python/wheels -r env/python/requirements.txt",
    ]
    text = "\n".join([*header, *option_lines, *own, *wanted]) + "\n"
    (python_dir / "requirements.txt").write_text(text, encoding="utf-8")
    (python_dir / "python_version.txt").write_text(platform.python_version() + "\n")
    return {**options.model_dump(), "wheels": [w.name for w in wheels]}


def conda_env(config: TiffinFile, ctx: Path, env: Path) -> dict[str, Any] | None:
    conda = config.conda
    if conda is None:
        return None
    if config.docker.distro != "debian" or config.docker.cuda_version:
        raise InvalidArgument(
            "conda: the image of a conda environment is conda-forge's (Ubuntu): it goes with "
            "docker.distro: debian and no docker.cuda_version"
        )
    target = env / "conda" / "environment.yml"
    target.parent.mkdir(parents=True)
    if conda.environment_yml:
        source = resolve_path(ctx, conda.environment_yml, "conda.environment_yml",
                              what="conda environment file")  # fmt: skip
        text = source.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError:
            data = None
        if not isinstance(data, dict):
            raise InvalidArgument(f"conda.environment_yml: {source} is not a YAML mapping")
        target.write_text(text, encoding="utf-8")
    else:
        data = {"name": "tiffin", "channels": conda.channels or ["conda-forge"],
                "dependencies": conda.dependencies}  # fmt: skip
        target.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return conda.model_dump()


def docker_env(
    config: TiffinFile, ctx: Path, env: Path, tag: Tag, conda: bool, wheels: bool
) -> dict[str, Any]:
    options = config.docker
    docker_dir = env / "docker"
    docker_dir.mkdir(parents=True)
    script = None
    if options.setup_script:
        source = resolve_path(ctx, options.setup_script, "docker.setup_script",
                              what="setup script")  # fmt: skip
        script = "setup_script"
        shutil.copy2(source, docker_dir / script)
    python_version = options.python_version or "{}.{}".format(*sys.version_info[:2])
    text = dockerfile(tag, options, python_version=python_version, conda=conda, wheels=wheels,
                      setup_script=script)  # fmt: skip
    (docker_dir / "Dockerfile").write_text(text, encoding="utf-8")
    return {**options.model_dump(), "python_version": python_version}
