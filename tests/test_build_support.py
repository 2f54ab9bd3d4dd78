"""Helpers the build tests share (no tests here): a project with a service and a tiffinfile,
a scikit-learn model in the store, the CLI in process, hand-made wheels for offline pip."""

from __future__ import annotations

import base64
import hashlib
import textwrap
import zipfile
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from tiffin.cli import main

SERVICE = '''
import tiffin
from tiffin.io import JSON

runner = tiffin.sklearn.get("clf:latest").to_runner()
svc = tiffin.Service("clfsvc", runners=[runner])


@svc.api(input=JSON(), output=JSON())
def classify(rows):
    return runner.predict.run(rows).tolist()
'''

TIFFINFILE = """
service: "service.py:svc"
labels: {owner: tests}
include: ["*.py", "data/"]
exclude: ["data/secret.txt"]
python:
  packages: ["scikit-learn"]
"""


def save_clf(name: str = "clf") -> Any:
    """A LogisticRegression on a toy problem saved as ``name``."""
    from sklearn.linear_model import LogisticRegression

    import tiffin

    X = [[0.0, 0.0], [1.0, 1.0], [0.0, 0.2], [1.0, 0.8]]
    return tiffin.sklearn.save_model(name, LogisticRegression().fit(X, [0, 1, 0, 1]))


def project(root: Path, *, service: str = SERVICE, tiffinfile: str = TIFFINFILE) -> Path:
    """A build context: service.py, tiffinfile.yaml, a data folder, files to leave out."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "service.py").write_text(textwrap.dedent(service))
    (root / "tiffinfile.yaml").write_text(textwrap.dedent(tiffinfile))
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / "labels.json").write_text('["no", "yes"]')
    (root / "data" / "secret.txt").write_text("do not ship")
    (root / "notes.md").write_text("not included: no pattern takes it")
    return root


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def store_entries(home: Path) -> list[str]:
    """What the tiffin store holds: NAME/VERSION directories and any staging leftovers."""
    root = home / "tiffins"
    if not root.is_dir():
        return []
    found = [f"{p.parent.name}/{p.name}" for p in root.glob("*/*") if p.is_dir()]
    found += [f".tmp/{p.name}" for p in (root / ".tmp").glob("*")]
    return sorted(found)


def write_wheel(folder: Path, name: str, version: str, requires: list[str] = ()) -> Path:  # type: ignore[assignment]
    """A minimal pure-Python wheel of ``name`` (one empty module) for an offline index."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": b"",
        f"{dist}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            + "".join(f"Requires-Dist: {r}\n" for r in requires)
        ).encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tiffin-tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return wheel
