"""Inputs become what an MLflow model's signature declares: on /predict, /invocations and
through a runner, for the signatures MLflow users get from ``input_example``."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

import tiffin
from tests.test_serving_support import asgi_client
from tiffin.exceptions import InvalidArgument
from tiffin.serving.app import build_app
from tiffin.serving.model_service import build_service

pytestmark = pytest.mark.anyio

FEATURES = 6
RNG = np.random.default_rng(0)
X = RNG.normal(size=(60, FEATURES))
Y = (X[:, 0] + X[:, 1] > 0).astype(int)


class Float32Only(LogisticRegression):
    """Refuses anything but float32, as a model traced for float32 would."""

    def predict(self, x):  # type: ignore[no-untyped-def]
        assert getattr(x, "dtype", None) == np.float32, f"got {getattr(x, 'dtype', type(x))}"
        return super().predict(x)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("signatures")
    dirs = {
        # MLflow's usual tensor signature: float32 (-1, 6), from a float32 input example
        "float32": (Float32Only(max_iter=300).fit(X, Y), X[:2].astype(np.float32)),
        # no signature: the model saw a DataFrame of named columns
        "unsigned": (
            LogisticRegression(max_iter=300).fit(pd.DataFrame(X, columns=list("abcdef")), Y), None
        ),
    }  # fmt: skip
    out = {}
    for name, (model, example) in dirs.items():
        path = root / name
        mlflow.sklearn.save_model(model, str(path), input_example=example,
                                  serialization_format="cloudpickle")
        out[name] = path
    yield out


def _tag(saved: dict[str, Path], kind: str) -> tiffin.Tag:
    return tiffin.mlflow.import_model(kind, str(saved[kind])).tag


async def test_json_rows_and_every_envelope_reach_a_float32_tensor_model_as_float32(
    saved: dict[str, Path],
) -> None:
    """JSON rows on /predict answered 400 ("Failed to enforce schema ... float32") for MLflow's
    usual tensor signature; every form now arrives as float32."""
    model = tiffin.mlflow.get(_tag(saved, "float32"))
    expected = Float32Only(max_iter=300).fit(X, Y).predict(X[:3].astype(np.float32)).tolist()
    rows = X[:3].tolist()
    npy = io.BytesIO()
    np.save(npy, X[:3])  # float64 .npy: converted exactly to the declared float32
    async with asgi_client(build_app(build_service(model))) as client:
        answers = {
            "rows": await client.post("/predict", json=rows),
            "npy": await client.post("/predict", content=npy.getvalue(),
                                     headers={"content-type": "application/octet-stream"}),
            "inputs": await client.post("/invocations", json={"inputs": rows}),
            "instances": await client.post("/invocations", json={"instances": rows}),
            "split": await client.post("/invocations", json={"dataframe_split": {
                "columns": list(range(FEATURES)), "data": rows}}),
        }  # fmt: skip
        bad = await client.post("/predict", json=[[1.0] * FEATURES, ["x"] * FEATURES])
    for form, response in answers.items():
        assert response.status_code == 200, (form, response.text)
        body = response.json()
        assert (body["predictions"] if isinstance(body, dict) else body) == expected, form
    assert bad.status_code == 400
    assert "[1][0]" in bad.json()["detail"]  # names the position


async def test_a_runner_converts_nested_lists_and_refuses_what_the_dtype_cannot_hold(
    saved: dict[str, Path],
) -> None:
    runner = tiffin.mlflow.get(_tag(saved, "float32")).to_runner()
    runner.init_local()
    try:
        answer = runner.predict.run(X[:2].tolist())  # lists: float32 rows for the model
        assert answer.tolist() == Float32Only(max_iter=300).fit(X, Y).predict(
            X[:2].astype(np.float32)).tolist()  # fmt: skip
        with pytest.raises(InvalidArgument, match="input"):
            runner.predict.run([[1.0] * (FEATURES - 1)])  # one value short of the shape
    finally:
        runner.destroy()


async def test_a_dict_of_columns_reaches_a_model_without_a_signature_as_a_dataframe(
    saved: dict[str, Path],
) -> None:
    runner = tiffin.mlflow.get(_tag(saved, "unsigned")).to_runner()
    runner.init_local()
    frame = pd.DataFrame(X[:4], columns=list("abcdef"))
    try:
        answer = runner.predict.run({name: frame[name].tolist() for name in frame.columns})
    finally:
        runner.destroy()
    reference = LogisticRegression(max_iter=300).fit(pd.DataFrame(X, columns=list("abcdef")), Y)
    assert answer.tolist() == reference.predict(frame).tolist()
