"""A built tiffin's ``env/python/requirements.txt``: what ``pip install -r`` needs to serve it.

In order: the index options (``--index-url``, ``--extra-index-url``), then ``tiffin`` itself
at the version that built it with the extras its models' frameworks need (``tiffin[mlflow]==
0.1.0``; left out when the user's own requirements name tiffin), the ``packages``, the lines of
``requirements_txt`` (a ``-r`` inside it is read in its place, relative to that file; ``-e``
and ``-c`` are refused: an editable checkout or a constraints file does not travel), and one
``name==version`` per wheel of ``wheels`` (copied to ``env/python/wheels/``; install with
``--find-links`` there). With ``lock_packages`` the user's part is replaced by the full
resolved set, pinned (:mod:`tiffin.building.lock`); tiffin's own line stays as it is.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable, Sequence
from pathlib import Path

from tiffin._version import __version__
from tiffin.exceptions import InvalidArgument, NotFound

__all__ = [
    "index_options",
    "installed_from",
    "names_tiffin",
    "read_requirements",
    "tiffin_requirement",
    "wheel_requirement",
]

_REFUSED = {
    "-e": "an editable install", "--editable": "an editable install",
    "-c": "a constraints file", "--constraint": "a constraints file",
}  # fmt: skip
_INCLUDE = ("-r", "--requirement")


def read_requirements(path: Path, *, _seen: tuple[Path, ...] = ()) -> list[str]:
    """The requirement and option lines of ``path``, comments and blank lines dropped, every
    ``-r FILE`` read in its place."""
    path = path.resolve()
    if path in _seen:
        raise InvalidArgument(f"requirements file {path} includes itself (through -r)")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"requirements file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read requirements file {path}: {exc}") from exc
    lines: list[str] = []
    for number, raw in enumerate(text.replace("\\\n", "").splitlines(), start=1):
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if not line:
            continue
        option, _, rest = line.replace("=", " ", 1).partition(" ") if line[0] == "-" else (
            line, "", ""
        )
        if option in _REFUSED:
            raise InvalidArgument(
                f"{path}, line {number}: {line!r} is {_REFUSED[option]}, which does not travel "
                "with a built tiffin; list the packages themselves (or build a wheel and add it "
                "under python.wheels)"
            )
        if option in _INCLUDE:
            included = Path(rest.strip())
            if not included.is_absolute():
                included = path.parent / included
            lines.extend(read_requirements(included, _seen=(*_seen, path)))
            continue
        lines.append(line)
    return lines


def _name(line: str) -> str | None:
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    if line.startswith("-"):
        return None
    try:
        return canonicalize_name(Requirement(line).name)
    except InvalidRequirement:
        return None


def names_tiffin(lines: Iterable[str]) -> bool:
    """Whether the user's own requirements already name tiffin."""
    return any(_name(line) == "tiffin" for line in lines)


def tiffin_requirement(frameworks: Iterable[str]) -> str:
    """``tiffin[extras]==version``: this tiffin, with the extras of the models' frameworks
    that tiffin has an extra for."""
    try:
        extras_known = set(importlib.metadata.metadata("tiffin").get_all("Provides-Extra") or [])
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        extras_known = set()
    extras = sorted({name for name in frameworks if name in extras_known})
    return f"tiffin[{','.join(extras)}]=={__version__}" if extras else f"tiffin=={__version__}"


def installed_from() -> str | None:
    """Where this tiffin was installed from when that is not a package index (a source
    directory, a wheel file, a VCS URL: pip's ``direct_url.json``), or None."""
    import json

    try:
        text = importlib.metadata.distribution("tiffin").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return "a source tree (not installed)"
    if not text:
        return None
    try:
        return str(json.loads(text).get("url") or "a direct URL")
    except ValueError:
        return "a direct URL"


def wheel_requirement(path: Path) -> str:
    """``name==version`` of a wheel file, from its file name."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    try:
        name, version, _build, _tags = parse_wheel_filename(path.name)
    except InvalidWheelFilename as exc:
        raise InvalidArgument(
            f"python.wheels: {path.name} is not a wheel file name ({exc})"
        ) from None
    return f"{name}=={version}"


def index_options(index_url: str | None, extra_index_urls: Sequence[str]) -> list[str]:
    options = [f"--index-url {index_url}"] if index_url else []
    return options + [f"--extra-index-url {url}" for url in extra_index_urls]
