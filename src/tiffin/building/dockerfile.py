"""A built tiffin's ``env/docker/Dockerfile``: an image that serves it and nothing else.

Built from the built tiffin's directory (``docker build -f env/docker/Dockerfile .``, which
``tiffin containerize`` runs), the image installs ``env/python/requirements.txt`` (with
``--find-links`` to ``env/python/wheels/`` when there are wheels), the conda environment first
when there is one, runs the setup script as root, copies the built tiffin to
``$TIFFIN_HOME/tiffins/NAME/VERSION/``, and serves it as user ``tiffin`` (uid 1034) on
``0.0.0.0:3000``: its entrypoint is ``tiffin serve NAME:VERSION --tiffin``, so
``docker run IMAGE --workers 4`` passes options on, and ``TIFFIN_*`` settings apply.

Base images: ``python:X.Y-slim`` (``distro: debian``, the default) or ``python:X.Y-alpine``;
``nvidia/cuda:C-runtime-ubuntu22.04`` with Python from the deadsnakes archive for
``cuda_version``; ``condaforge/miniforge3`` with conda's Python for a conda environment; or
``base_image`` as given (it must have ``python`` with pip; ``distro`` says whether it installs
system packages with apt or apk).
"""

from __future__ import annotations

import json

from tiffin._version import __version__
from tiffin.building.tiffinfile import DockerOptions
from tiffin.tag import Tag

__all__ = ["APP_HOME", "ENV_DIR", "PORT", "dockerfile"]

APP_HOME = "/home/tiffin"
#: where the build steps put the built tiffin's env/ (before the built tiffin itself)
ENV_DIR = "/opt/tiffin/env"
PORT = 3000
_UID = 1034


def _run(*commands: str) -> str:
    return "RUN " + " \\\n && ".join(commands)


def _base(options: DockerOptions, python_version: str, conda: bool) -> tuple[str, list[str]]:
    """The FROM image and the steps that give it Python (and system packages)."""
    packages = " ".join(options.system_packages)
    alpine = options.distro == "alpine"
    steps: list[str] = []
    if options.base_image:
        image = options.base_image
    elif conda:
        image = "condaforge/miniforge3:latest"
    elif options.cuda_version:
        image = f"nvidia/cuda:{options.cuda_version}-runtime-ubuntu22.04"
        py = f"python{python_version}"
        steps.append("ENV DEBIAN_FRONTEND=noninteractive")
        steps.append(_run(
            "apt-get update",
            "apt-get install -y --no-install-recommends software-properties-common gpg-agent",
            "add-apt-repository -y ppa:deadsnakes/ppa",
            "apt-get update",
            f"apt-get install -y --no-install-recommends {py} {py}-venv {packages}".rstrip(),
            "rm -rf /var/lib/apt/lists/*",
            f"{py} -m venv /opt/venv",
        ))  # fmt: skip
        steps.append("ENV PATH=/opt/venv/bin:$PATH")
        return image, steps
    else:
        image = f"python:{python_version}-{'alpine' if alpine else 'slim'}"
    if packages:
        if alpine:
            steps.append(_run(f"apk add --no-cache {packages}"))
        else:
            steps.append(_run(
                "apt-get update",
                f"apt-get install -y --no-install-recommends {packages}",
                "rm -rf /var/lib/apt/lists/*",
            ))  # fmt: skip
    if conda:
        steps.append(f"COPY env/conda/environment.yml {ENV_DIR}/conda/environment.yml")
        steps.append(_run(
            f"conda install -y -n base python={python_version}",
            f"conda env update -n base -f {ENV_DIR}/conda/environment.yml",
            "conda clean -afy",
        ))  # fmt: skip
    return image, steps


def dockerfile(
    tag: Tag,
    options: DockerOptions,
    *,
    python_version: str,
    conda: bool = False,
    wheels: bool = False,
    setup_script: str | None = None,
) -> str:
    """The Dockerfile's text. ``setup_script``: its file name under ``env/docker/``."""
    image, base_steps = _base(options, python_version, conda)
    home = f"{APP_HOME}/tiffin"
    place = f"{home}/tiffins/{tag.name}/{tag.version}/"
    alpine = options.distro == "alpine"
    if alpine:
        add_user = (
            f"addgroup -S -g {_UID} tiffin",
            f"adduser -S -D -u {_UID} -G tiffin -h {APP_HOME} tiffin",
        )
    else:
        add_user = (
            f"groupadd --system --gid {_UID} tiffin",
            f"useradd --system --uid {_UID} --gid tiffin --create-home --home-dir {APP_HOME} "
            "tiffin",
        )
    find_links = f" --find-links {ENV_DIR}/python/wheels" if wheels else ""
    settings = [
        "LANG=C.UTF-8", "LC_ALL=C.UTF-8", "PYTHONUNBUFFERED=1", "PIP_NO_CACHE_DIR=1",
        "PIP_DISABLE_PIP_VERSION_CHECK=1", f"TIFFIN_HOME={home}", "TIFFIN_HOST=0.0.0.0",
        f"TIFFIN_PORT={PORT}",
    ]  # fmt: skip
    lines = [
        "# syntax=docker/dockerfile:1",
        f"# The image of built tiffin {tag} (written by tiffin build {__version__}).",
        f"# Build it with `tiffin containerize {tag}`, or from the built tiffin's directory:",
        f"#   docker build -t {tag} -f env/docker/Dockerfile .",
        f"FROM {image}",
        *base_steps,
        "ENV " + " \\\n    ".join(settings),
        _run(*add_user),
        f"COPY env/python/ {ENV_DIR}/python/",
        _run(f"python -m pip install{find_links} -r {ENV_DIR}/python/requirements.txt"),
    ]
    if setup_script:
        lines += [
            f"COPY env/docker/{setup_script} {ENV_DIR}/docker/{setup_script}",
            _run(
                f"chmod +x {ENV_DIR}/docker/{setup_script}",
                f"{ENV_DIR}/docker/{setup_script}",
            ),
        ]
    if options.env:
        lines.append(
            "ENV " + " \\\n    ".join(f"{k}={json.dumps(v)}" for k, v in options.env.items())
        )
    lines += [
        f"COPY --chown=tiffin:tiffin . {place}",
        "USER tiffin",
        f"WORKDIR {APP_HOME}",
        f"EXPOSE {PORT}",
        "ENTRYPOINT " + json.dumps(["tiffin", "serve", str(tag), "--tiffin"]),
    ]
    return "\n".join(lines) + "\n"
