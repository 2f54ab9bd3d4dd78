"""``lock_packages: true``: the whole resolved set of a build's requirements, pinned.

pip resolves them as it would install them, without installing anything: ``pip install
--dry-run --ignore-installed --report FILE REQUIREMENT...``, against whatever index this
machine's pip is configured with (``pip.conf``, ``PIP_*`` variables), plus the tiffinfile's
``index_url`` / ``extra_index_url`` and ``--find-links`` to the build's own wheels. Every
package of the report becomes ``name==version`` (a direct URL stays ``name @ URL``). The set
is resolved for the Python that runs the build.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tiffin.exceptions import InvalidArgument, ToolFailed
from tiffin.process.tools import run_tool

__all__ = ["LOCK_TIMEOUT_S", "lock"]

#: the longest a resolution may take (a slow index, a large set)
LOCK_TIMEOUT_S = 600.0


def _pins(report: dict) -> list[str]:
    pins = []
    for item in report.get("install") or []:
        metadata = item.get("metadata") or {}
        name, version = metadata.get("name"), metadata.get("version")
        if not name or not version:
            raise InvalidArgument(f"pip's report names a package without a version: {item!r}")
        info = item.get("download_info") or {}
        url = info.get("url", "")
        direct = item.get("is_direct") and url and not url.startswith("file:")
        pins.append(f"{name} @ {url}" if direct else f"{name}=={version}")
    return sorted(pins, key=str.lower)


def lock(
    lines: Sequence[str],
    *,
    find_links: Sequence[Path] = (),
    python: str = sys.executable,
) -> list[str]:
    """The pinned set ``lines`` (requirement and option lines) resolve to, sorted by name."""
    if not [line for line in lines if not line.startswith("-")]:
        return []
    with tempfile.TemporaryDirectory(prefix="tiffin-lock-") as tmp:
        report_file = Path(tmp) / "report.json"
        command = [
            python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
            "--disable-pip-version-check", "--no-input", "--report", str(report_file),
        ]  # fmt: skip
        for folder in find_links:
            command += ["--find-links", str(folder)]
        # on the command line, not in a file: pip's messages then name the requirements
        for line in lines:
            command += shlex.split(line) if line.startswith("-") else [line]
        try:
            run_tool(command, what="cannot lock the packages (pip)", timeout=LOCK_TIMEOUT_S)
        except ToolFailed as exc:
            if "No module named pip" in str(exc):
                raise ToolFailed(
                    "cannot lock the packages: pip is not installed in this environment "
                    "(lock_packages needs it); install pip, or set lock_packages: false"
                ) from None
            raise
        try:
            report = json.loads(report_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ToolFailed(
                f"cannot lock the packages: pip wrote no readable report ({exc})"
            ) from exc
    return _pins(report)
