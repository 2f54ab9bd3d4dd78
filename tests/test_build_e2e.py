"""A built tiffin served by ``tiffin serve NAME:VERSION`` over real HTTP: from its own ``src/``
and ``models/``, in an unrelated working directory, after the project and the model it was
built from are gone -- with one process and with ``--workers 2``."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

import tiffin
from tiffin.store import tiffins

from .test_build_support import invoke, project
from .test_serving_support import iris_frame, save_iris_model, server_env, start_tiffin

pytestmark = pytest.mark.slow

SERVICE = """
import json
import numpy as np
import tiffin

# read at import time, relative to the working directory: a built tiffin serves from src/
LABELS = json.load(open("data/labels.json"))
runner = tiffin.mlflow.get("iris_mlflow:latest").to_runner()
svc = tiffin.Service("iris_built", runners=[runner])


@svc.api(input=tiffin.io.NumpyNdarray(dtype="float64", shape=[-1, 4]), output=tiffin.io.JSON())
def classify(rows):
    return [LABELS[int(i)] for i in np.asarray(runner.predict.run(rows)).ravel()]
"""


@pytest.fixture
def built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mlflow_env: Path
) -> tiffins.BuiltTiffin:
    save_iris_model(tmp_path / "model", tensor=True)
    imported = invoke("models", "import-mlflow", "iris_mlflow", str(tmp_path / "model"))
    assert imported.exit_code == 0, imported.output
    root = project(tmp_path / "proj", service=SERVICE, tiffinfile='service: "service.py:svc"\n')
    (root / "data" / "labels.json").write_text('["setosa", "versicolor", "virginica"]')
    monkeypatch.chdir(root)
    result = invoke("build", "-q")
    assert result.exit_code == 0, result.output
    built = tiffins.get(result.stdout.strip())
    # what it was built from goes away: the built tiffin alone must serve
    monkeypatch.chdir(tmp_path)
    shutil.rmtree(root)
    tiffin.models.delete("iris_mlflow")
    return built


@pytest.mark.parametrize("workers", [1, 2])
def test_a_built_tiffin_serves_alone_from_anywhere(
    built: tiffins.BuiltTiffin, tmp_path: Path, tiffin_home: Path, workers: int
) -> None:
    X, y = iris_frame()
    rows = X.to_numpy()[[0, 60, 120]]
    names = ["setosa", "versicolor", "virginica"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = ["serve", str(built.tag), "--tiffin"] if workers == 1 else [
        "serve", str(built.tag), "--workers", str(workers)
    ]  # fmt: skip
    server = start_tiffin(args, cwd=elsewhere, env=server_env(tiffin_home),
                          log=tmp_path / f"serve-{workers}.log")  # fmt: skip
    try:
        response = httpx.post(server.url + "/classify", json=rows.tolist(), timeout=30)
        assert response.status_code == 200, response.text
        assert response.json() == [names[int(i)] for i in y.to_numpy()[[0, 60, 120]]]
        response = httpx.post(server.url + "/invocations", json={"inputs": rows.tolist()},
                              timeout=30)  # fmt: skip
        assert response.status_code == 200, response.text
        expected = y.to_numpy()[[0, 60, 120]].tolist()
        assert np.array(response.json()["predictions"]).tolist() == expected
        docs = httpx.get(server.url + "/docs.json", timeout=30).json()
        assert "/classify" in docs["paths"] and "/invocations" in docs["paths"]
        # apis/openapi.yaml is the very document the server serves
        assert yaml.safe_load((built.path / "apis/openapi.yaml").read_text()) == docs
    finally:
        assert server.stop() in (0, -15)
    assert "Traceback" not in server.logs()
