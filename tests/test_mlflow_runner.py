"""Runners over imported MLflow models: pyfunc (every input type the page lists, params,
batching) and native flavors (every method), and the page's runner and service snippets."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.models import infer_signature

import tiffin
from tests.fixtures_mlflow import fitted_classifier, iris_like, save_sklearn
from tiffin.exceptions import InvalidArgument

pytestmark = pytest.mark.usefixtures("mlflow_env")
COLUMNS = ["a", "b", "c", "d"]


@pytest.fixture
def frame_model(tmp_path: Path):
    """A LogisticRegression logged from a DataFrame: its signature names four columns."""
    X, y = iris_like()
    frame = pd.DataFrame(X, columns=COLUMNS)
    clf = fitted_classifier().fit(frame, y)
    path = save_sklearn(
        tmp_path / "frame_model", clf, signature=infer_signature(frame, clf.predict(frame))
    )
    return path, frame, clf


@pytest.mark.parametrize("batchable", [False, True])
def test_pyfunc_runner_accepts_every_input_type_of_the_page(frame_model, batchable):
    path, frame, clf = frame_model
    tiffin.mlflow.import_model("clf", str(path), signatures={"predict": {"batchable": batchable}})
    runner = tiffin.mlflow.get("clf:latest").to_runner()
    runner.init_local()
    try:
        expected = clf.predict(frame.iloc[:6])
        as_frame = runner.predict.run(frame.iloc[:6])
        as_array = runner.predict.run(frame.to_numpy()[:6])  # converted to the signature's columns
        as_list = runner.predict.run(frame.to_numpy()[:6].tolist())
        as_dict = runner.predict.run({c: frame[c].to_numpy()[:6] for c in COLUMNS})
        for got in (as_frame, as_array, as_list, as_dict):
            np.testing.assert_array_equal(np.asarray(got), expected)
    finally:
        runner.destroy()


def test_pyfunc_runner_wrong_width_is_a_clear_error(frame_model):
    path, frame, _ = frame_model
    tiffin.mlflow.import_model("clf", str(path))
    runner = tiffin.mlflow.get("clf").to_runner()
    runner.init_local()
    try:
        with pytest.raises(InvalidArgument, match="the model's 4 columns"):
            runner.predict.run(frame.to_numpy()[:2, :3])
    finally:
        runner.destroy()


def test_pyfunc_runner_batches_concurrent_callers_and_splits_answers(frame_model):
    path, frame, clf = frame_model
    tiffin.mlflow.import_model("clf", str(path), signatures={"predict": {"batchable": True}})
    runner = tiffin.mlflow.get("clf").to_runner()
    runner.init_local()

    async def main():
        return await asyncio.gather(
            *(runner.predict.async_run(frame.iloc[i : i + 2]) for i in range(0, 40, 2))
        )

    try:
        results = asyncio.run(main())
        for i, got in zip(range(0, 40, 2), results, strict=True):
            np.testing.assert_array_equal(np.asarray(got), clf.predict(frame.iloc[i : i + 2]))
        assert runner.predict.stats is not None and runner.predict.stats.calls == 20
    finally:
        runner.destroy()


class Scaler(mlflow.pyfunc.PythonModel):
    """A pyfunc model with an inference parameter."""

    def predict(self, context, model_input, params=None):
        factor = (params or {}).get("factor", 1.0)
        return model_input["x"].to_numpy() * factor


def test_params_reach_predict_and_never_share_a_batch(tmp_path):
    frame = pd.DataFrame({"x": [1.0, 2.0]})
    signature = infer_signature(frame, np.array([1.0, 2.0]), params={"factor": 1.0})
    mlflow.pyfunc.save_model(str(tmp_path / "scaler"), python_model=Scaler(), signature=signature)
    tiffin.mlflow.import_model(
        "scaler", str(tmp_path / "scaler"), signatures={"predict": {"batchable": True}}
    )
    runner = tiffin.mlflow.get("scaler").to_runner()
    runner.init_local()

    async def main():
        return await asyncio.gather(
            runner.predict.async_run(frame, params={"factor": 10.0}),
            runner.predict.async_run(frame),
            runner.predict.async_run(frame, params={"factor": 3.0}),
        )

    try:
        assert runner.predict.run(frame, params={"factor": 2.0}).tolist() == [2.0, 4.0]
        ten, one, three = asyncio.run(main())
        assert ten.tolist() == [10.0, 20.0]
        assert one.tolist() == [1.0, 2.0]
        assert three.tolist() == [3.0, 6.0]
    finally:
        runner.destroy()


def test_native_flavor_runner_has_every_declared_method(frame_model):
    path, frame, clf = frame_model
    model = tiffin.mlflow.import_model(
        "clf", str(path), signatures={"predict": {"batchable": True}, "predict_proba": {}}
    )
    assert model.info.options["native_flavor"] == "sklearn"
    runner = model.to_runner()
    assert sorted(runner.methods) == ["predict", "predict_proba"]
    runner.init_local()
    try:
        first = frame.iloc[:4]
        np.testing.assert_array_equal(runner.predict.run(first), clf.predict(first))
        np.testing.assert_allclose(
            runner.predict_proba.run(frame.iloc[:4]), clf.predict_proba(frame.iloc[:4])
        )
    finally:
        runner.destroy()


def test_pyfunc_with_extra_methods_is_refused_at_runner_time(frame_model):
    path, _, _ = frame_model
    model = tiffin.mlflow.import_model("clf", str(path))
    # a hand-edited model.yaml could declare more; the runner says what to do
    from dataclasses import replace

    edited = tiffin.models.Model(
        replace(model.info, signatures={"predict": {"batchable": False, "batch_dim": 0},
                                        "predict_proba": {"batchable": False, "batch_dim": 0}}),
        model.path,
    )
    with pytest.raises(InvalidArgument, match="flavor='native'"):
        edited.to_runner()


def _mnist_like() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))


@pytest.mark.slow
@pytest.mark.parametrize("flavor", [None, "native"])
def test_page_runner_and_service_snippets_with_a_pytorch_model(flavor):
    """The page's "Using Model Runner" and "Build Prediction Service" code, with `tiffin`: as
    pyfunc, and natively (the module on the runner's device) with only ``flavor=`` added."""
    net = _mnist_like().eval()
    test_input_arr = np.random.default_rng(0).normal(size=(3, 1, 28, 28)).astype("float32")
    with torch.no_grad():
        expected = net(torch.from_numpy(test_input_arr)).numpy()
    with mlflow.start_run():
        mlflow.pytorch.log_model(
            net, artifact_path="pytorch-model", input_example=test_input_arr,
            pip_requirements=["torch"],
        )
        model_uri = mlflow.get_artifact_uri("pytorch-model")
        tiffin.mlflow.import_model(
            "mlflow_pytorch_mnist", model_uri, signatures={"predict": {"batchable": True}},
            flavor=flavor,
        )

    # Using Model Runner
    runner = tiffin.mlflow.get("mlflow_pytorch_mnist:latest").to_runner()
    runner.init_local()
    kind = "MlflowPytorchRunnable" if flavor else "MlflowPyfuncRunnable"
    assert type(runner.backend.instance).__name__ == kind
    np.testing.assert_allclose(runner.predict.run(test_input_arr), expected, rtol=1e-5, atol=1e-5)
    runner.destroy()

    # Build Prediction Service
    mnist_runner = tiffin.mlflow.get("mlflow_pytorch_mnist:latest").to_runner()
    svc = tiffin.Service("mlflow_pytorch_mnist", runners=[mnist_runner])
    input_spec = tiffin.io.NumpyNdarray(
        dtype="float32", shape=[-1, 1, 28, 28], enforce_shape=True, enforce_dtype=True
    )

    @svc.api(input=input_spec, output=tiffin.io.NumpyNdarray())
    def predict(input_arr):
        return mnist_runner.predict.run(input_arr)

    from starlette.testclient import TestClient

    with TestClient(svc.asgi_app) as client:
        for _ in range(200):  # runners load in the background; /readyz says when they are in
            if client.get("/readyz").status_code == 200:
                break
            time.sleep(0.05)
        ok = client.post("/predict", json=test_input_arr.tolist())
        assert ok.status_code == 200, ok.text
        np.testing.assert_allclose(np.asarray(ok.json()), expected, rtol=1e-4, atol=1e-4)
        bad = client.post("/predict", json=[[1.0, 2.0]])
        assert bad.status_code == 400 and "shape" in bad.json()["detail"]


def test_to_runner_embedded_marks_the_runner_for_every_api_worker(frame_model):
    path, frame, clf = frame_model
    tiffin.mlflow.import_model("clf", str(path))
    assert tiffin.mlflow.get("clf").to_runner().embedded is False
    runner = tiffin.mlflow.get("clf").to_runner(embedded=True)
    assert runner.embedded is True
    runner.init_local()  # in one process it runs as any other runner
    try:
        got = runner.predict.run(frame.iloc[:3])
        np.testing.assert_array_equal(got, clf.predict(frame.iloc[:3]))
    finally:
        runner.destroy()
