"""``tiffin containerize TAG``: the image of a built tiffin, built by docker or podman.

The engine is whichever of ``docker`` and ``podman`` answers ``info`` with exit status 0
within 5 seconds (docker first). Where none does, nothing is run: the error is one line with
the exact command to run where an engine works.
"""

from __future__ import annotations

import shlex

from tiffin.exceptions import MissingDependency
from tiffin.process.tools import PROBE_TIMEOUT_S, find_engine, image_build_command, run_tool
from tiffin.store import tiffins
from tiffin.store.versioned import Store
from tiffin.tag import Tag

__all__ = ["containerize"]


def containerize(
    tag: Tag | str,
    *,
    image: str | None = None,
    probe_timeout: float = PROBE_TIMEOUT_S,
    store: Store | None = None,
) -> str:
    """Build the image of built tiffin ``tag`` (named ``image``, default ``NAME:VERSION``);
    the image's name. The engine's output goes to stderr as it comes."""
    built = tiffins.get(tag, store=store)
    image = image or str(built.tag)
    engine = find_engine(timeout=probe_timeout)
    if engine is None:
        command = image_build_command("docker", built.path, built.dockerfile, image)
        raise MissingDependency(
            "no container engine answers here (neither `docker info` nor `podman info` exited 0 "
            f"within {probe_timeout:g} s); build the image where one does: "
            + " ".join(shlex.quote(part) for part in command)
        )
    run_tool(image_build_command(engine, built.path, built.dockerfile, image),
             what=f"cannot build image {image}", stream=True)  # fmt: skip
    return image
