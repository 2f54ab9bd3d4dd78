"""A built tiffin is really deployable: built from an imported MLflow model with the guide's
tiffinfile, exported, then -- in a fresh virtualenv made from the tiffin's own
``env/python/requirements.txt`` plus a wheel of this repo, with an empty working directory
and a fresh ``TIFFIN_HOME`` -- imported, served by ``tiffin serve NAME:VERSION``, and asked
for predictions over HTTP, MLflow's ``/invocations`` included.

The virtualenv installs from whatever index this machine's pip is configured with (CI's too);
nothing of this interpreter's environment leaks into it (no PYTHONPATH, no site packages).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tiffin.store import tiffins

from .conftest import ROOT
from .test_build_support import invoke, project
from .test_serving_support import iris_frame, save_iris_model, start_on_free_port

pytestmark = pytest.mark.slow

SERVICE = """
import tiffin

runner = tiffin.mlflow.get("my_mlflow_model:latest").to_runner()
svc = tiffin.Service("iris_deployed", runners=[runner])


@svc.api(input=tiffin.io.NumpyNdarray(dtype="float64", shape=[-1, 4]),
         output=tiffin.io.NumpyNdarray())
def classify(rows):
    return runner.predict.run(rows)
"""

#: the guide's tip, word for word with tiffin for bentoml
TIFFINFILE = """
service: "service.py:svc"
include: ["*.py"]
python:
    requirements_txt: $TIFFIN_MLFLOW_MODEL_PATH/mlflow_model/requirements.txt
    lock_packages: False
"""


def _run(command: list[str], log: Path, **kwargs: object) -> str:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(command)}\n")
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload]
    with log.open("a") as out:
        out.write(result.stdout + result.stderr)
    assert result.returncode == 0, f"{command} failed:\n{log.read_text()[-4000:]}"
    return str(result.stdout)


@pytest.mark.timeout(1800)  # pip installs MLflow and its dependencies: minutes on a busy machine
def test_a_built_tiffin_deploys_into_a_fresh_virtualenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_env: Path
) -> None:
    log = tmp_path / "deploy.log"
    # -- on the build machine: import, `export TIFFIN_MLFLOW_MODEL_PATH=$(...)`, build, export
    save_iris_model(tmp_path / "model", tensor=True)
    imported = invoke("models", "import-mlflow", "my_mlflow_model", str(tmp_path / "model"))
    assert imported.exit_code == 0, imported.output
    path = invoke("models", "get", "my_mlflow_model:latest", "-o", "path").stdout.strip()
    monkeypatch.setenv("TIFFIN_MLFLOW_MODEL_PATH", path)
    monkeypatch.chdir(project(tmp_path / "proj", service=SERVICE, tiffinfile=TIFFINFILE))
    built = tiffins.get(invoke("build", "-q").stdout.strip())
    archive = invoke("export", str(built.tag), str(tmp_path), "-q").stdout.strip()
    # -- a fresh virtualenv from the tiffin's requirements and a wheel of this repo
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(ROOT)],
         log, timeout=600)  # fmt: skip
    wheel = next(wheels.glob("tiffin-*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], log, timeout=300)
    python = str(venv / "bin" / "python")
    _run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
          "-r", str(built.path / "env/python/requirements.txt"), str(wheel)],
         log, timeout=1200)  # fmt: skip
    # -- on the serving machine: an empty directory, a fresh TIFFIN_HOME, nothing inherited
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TIFFIN_", "MLFLOW_", "PYTHON", "VIRTUAL_ENV"))}  # fmt: skip
    env.update(TIFFIN_HOME=str(tmp_path / "fresh-home"), PYTHONUNBUFFERED="1")
    empty = tmp_path / "empty"
    empty.mkdir()
    exe = str(venv / "bin" / "tiffin")
    where = _run([python, "-c", "import tiffin; print(tiffin.__file__)"], log, cwd=empty, env=env)
    assert where.startswith(str(venv)), where  # the wheel's tiffin, not this checkout's
    said = _run([exe, "import", archive], log, cwd=empty, env=env)
    assert said.strip() == f"imported tiffin '{built.tag}'"
    server = start_on_free_port(
        lambda port: [exe, "serve", str(built.tag), "--host", "127.0.0.1", "--port", str(port)],
        cwd=empty, env=env, log=tmp_path / "serve.log", timeout=180,
    )  # fmt: skip
    try:
        X, y = iris_frame()
        rows = X.to_numpy()[[0, 60, 120]]
        expected = y.to_numpy()[[0, 60, 120]].tolist()
        response = httpx.post(server.url + "/classify", json=rows.tolist(), timeout=60)
        assert response.status_code == 200, response.text
        assert np.asarray(response.json()).tolist() == expected
        response = httpx.post(server.url + "/invocations", json={"inputs": rows.tolist()},
                              timeout=60)  # fmt: skip
        assert response.status_code == 200, response.text
        assert np.asarray(response.json()["predictions"]).tolist() == expected
    finally:
        server.stop()
    assert list(empty.iterdir()) == []  # it served from the store, writing nothing here
