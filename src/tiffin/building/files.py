"""Which files of the build context go into a built tiffin's ``src/``.

A file goes in when an ``include`` pattern matches it and no ``exclude`` pattern, nor a line of
the context's ``.tiffinignore``, does. Patterns are gitignore's (through ``pathspec``), matched
against paths relative to the build context: ``*.py``, ``data/``, ``/config.yaml``,
``!keep.txt``. Always left out: version-control directories, ``__pycache__`` and compiled
Python, virtual environments (a directory holding ``pyvenv.cfg``) and the tiffin home
(``$TIFFIN_HOME``) when it lies inside the context. A symbolic link to a file is copied as the
file; a linked directory is not followed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tiffin.exceptions import InvalidArgument

__all__ = ["ALWAYS_EXCLUDED", "IGNORE_FILE", "collect"]

IGNORE_FILE = ".tiffinignore"
ALWAYS_EXCLUDED = (".git/", ".hg/", ".svn/", "__pycache__/", "*.py[cod]", ".ipynb_checkpoints/")


def _spec(patterns: Sequence[str], where: str) -> object:
    import pathspec

    try:
        return pathspec.GitIgnoreSpec.from_lines(list(patterns))
    except (ValueError, TypeError) as exc:  # pathspec's GitWildMatchPatternError is a ValueError
        raise InvalidArgument(f"{where}: a pattern is not valid: {exc}") from None


def collect(
    build_ctx: Path,
    include: Sequence[str],
    exclude: Sequence[str],
    *,
    skip: Sequence[Path] = (),
) -> list[Path]:
    """The files to copy, as paths relative to ``build_ctx``, sorted. ``skip``: directories
    never entered (the tiffin home, the store being written)."""
    ignore_file = build_ctx / IGNORE_FILE
    ignored: list[str] = []
    if ignore_file.is_file():
        ignored = ignore_file.read_text(encoding="utf-8").splitlines()
    included = _spec(include, "include")
    excluded = _spec([*ALWAYS_EXCLUDED, *exclude, *ignored], f"exclude (or {IGNORE_FILE})")
    skipped = {os.path.realpath(p) for p in skip}
    found: list[Path] = []
    for root, dirs, files in os.walk(build_ctx):
        here = Path(root)
        relative_dir = here.relative_to(build_ctx)
        keep = []
        for name in sorted(dirs):
            path = here / name
            rel = (relative_dir / name).as_posix()
            if (
                path.is_symlink()
                or os.path.realpath(path) in skipped
                or (path / "pyvenv.cfg").is_file()
                or excluded.match_file(rel + "/")  # type: ignore[attr-defined]
            ):
                continue
            keep.append(name)
        dirs[:] = keep
        for name in sorted(files):
            rel = (relative_dir / name).as_posix()
            if not included.match_file(rel) or excluded.match_file(rel):  # type: ignore[attr-defined]
                continue
            if (here / name).is_file():  # a link to a file counts; a dangling one does not
                found.append(Path(rel))
    return sorted(found)
