"""Running a tool to completion: pip (locking a build's packages) and a container engine
(``docker`` or ``podman``: ``info`` to see whether one answers here, ``build`` for an image).

A tool that is missing is :class:`~tiffin.exceptions.MissingDependency`; one that fails, or
runs past its timeout, is :class:`~tiffin.exceptions.ToolFailed` ending with the tool's own
last words. Every process started here is waited for, or killed by its PID on a timeout.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from tiffin.exceptions import MissingDependency, ToolFailed

__all__ = [
    "ENGINES",
    "PROBE_TIMEOUT_S",
    "find_engine",
    "image_build_command",
    "run_tool",
]

#: the container engines tiffin builds images with, in order of preference
ENGINES = ("docker", "podman")
#: how long an engine's ``info`` may take to say it works
PROBE_TIMEOUT_S = 5.0


def _last_words(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    # pip's first ERROR line is the cause; its last one may only point at its documentation
    return errors[0] if errors else (lines or ["(no output)"])[-1]


def run_tool(
    args: Sequence[str],
    *,
    what: str,
    timeout: float | None = None,
    cwd: Path | None = None,
    stream: bool = False,
) -> str:
    """Run ``args`` and return what it wrote on stdout. ``stream``: its output goes to this
    process's stderr as it comes (a long image build), and nothing is returned."""
    try:
        proc = subprocess.run(
            list(args), cwd=cwd, timeout=timeout, stdin=subprocess.DEVNULL,
            # streamed: both to this process's file descriptor 2 (stdout carries results)
            stdout=2 if stream else subprocess.PIPE,
            stderr=None if stream else subprocess.PIPE, text=True, check=False,
        )  # fmt: skip
        stdout, stderr = proc.stdout or "", proc.stderr or ""
    except FileNotFoundError:
        raise MissingDependency(f"{what}: {args[0]} is not installed here") from None
    except subprocess.TimeoutExpired:
        raise ToolFailed(f"{what}: `{args[0]}` did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        said = f": {_last_words(stderr or stdout)}" if not stream else "; see its output above"
        raise ToolFailed(f"{what}: `{Path(args[0]).name}` exited with {proc.returncode}{said}")
    return stdout


def find_engine(
    engines: Sequence[str] = ENGINES, timeout: float = PROBE_TIMEOUT_S
) -> str | None:
    """The path of the first engine whose ``info`` exits 0 within ``timeout`` seconds (all
    asked at once), or None."""
    probes: list[tuple[str, subprocess.Popen[bytes]]] = []
    for name in engines:
        path = shutil.which(name)
        if path is None:
            continue
        try:
            proc = subprocess.Popen(
                [path, "info"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            continue
        probes.append((path, proc))
    deadline = time.monotonic() + timeout
    found = None
    try:
        for path, proc in probes:
            try:
                code = proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                continue
            if code == 0:
                found = path
                break
    finally:
        for _path, proc in probes:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return found


def image_build_command(engine: str, context: Path, dockerfile: Path, image: str) -> list[str]:
    """The command that builds ``image`` from ``dockerfile`` with ``context`` as its context."""
    return [engine, "build", "-t", image, "-f", str(dockerfile), str(context)]
