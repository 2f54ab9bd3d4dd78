"""An imported MLflow model's parameter schema, checked as MLflow checks it
(``frameworks/mlflow/params.py``), and the pyfunc runnable that then calls the model's own
predict function without MLflow's second check of the inputs."""

from __future__ import annotations

import copy
import datetime as dt
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model as MlflowModel
from mlflow.models import ModelSignature
from mlflow.models.utils import _enforce_params_schema
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

import tiffin
from tests.test_serving_support import asgi_client
from tiffin.frameworks.mlflow.params import params_checker
from tiffin.serving.app import build_app
from tiffin.serving.model_service import build_service

pytestmark = [
    pytest.mark.usefixtures("mlflow_env"),
    pytest.mark.filterwarnings("ignore:.*input example was not provided:UserWarning"),
]

SCHEMA = ParamSchema([
    ParamSpec("flag", "boolean", True),
    ParamSpec("n", "integer", 3),
    ParamSpec("big", "long", 7),
    ParamSpec("ratio", "float", 0.5),
    ParamSpec("scale", "double", 1.0),
    ParamSpec("name", "string", "a"),
    ParamSpec("when", "datetime", dt.datetime(2024, 1, 1)),
    ParamSpec("weights", "double", [1.0, 2.0], shape=(-1,)),
])  # fmt: skip
INPUTS = Schema([ColSpec("double", "x")])

#: every kind of params a caller may send: exact types (the fast path), conversions, nulls,
#: unknown and non-string names, lists, wrong types, and what is not a dict
CASES: list[Any] = [
    None,
    {},
    {"scale": 2.0},
    {"scale": 2.0, "name": "b", "flag": False, "n": 4, "big": 2**40, "ratio": 0.25},
    {"name": "b", "scale": 2.5},  # sent out of the schema's order
    {"scale": 2},
    {"scale": np.float64(2.0)},
    {"ratio": np.float32(0.25)},
    {"ratio": 1},
    {"scale": True},
    {"scale": "abc"},
    {"scale": None},
    {"scale": [1.0]},
    {"n": 1.5},
    {"n": 2**40},
    {"flag": 1},
    {"name": 5},
    {"when": "2024-05-01"},
    {"when": 5},
    {"weights": [1, 2]},
    {"weights": 1.0},
    {"bogus": 1},
    {"bogus": 1, "scale": 3.0},
    {1: 2.0},
    {"scale": "abc", "n": "x"},
    [1],
    "scale",
]


def _mlflow_answer(params: Any) -> tuple[str, Any]:
    try:
        return "ok", _enforce_params_schema(copy.deepcopy(params), SCHEMA)
    except MlflowException as exc:
        return "error", (exc.error_code, exc.message)


def _typed(answer: tuple[str, Any]) -> Any:
    """An answer with the type of each value, and the order of the names."""
    status, value = answer
    if status != "ok":
        return answer
    return status, [(k, type(v), v) for k, v in value.items()]


@pytest.mark.parametrize("params", CASES, ids=repr)
def test_the_check_gives_what_mlflows_own_check_gives(params: Any) -> None:
    check = params_checker(MlflowModel(signature=ModelSignature(INPUTS, params=SCHEMA)))
    assert check is not None
    try:
        got: tuple[str, Any] = "ok", check(copy.deepcopy(params))
    except MlflowException as exc:
        got = "error", (exc.error_code, exc.message)
    assert _typed(got) == _typed(_mlflow_answer(params))


def test_defaults_are_a_fresh_dict_each_call() -> None:
    check = params_checker(MlflowModel(signature=ModelSignature(INPUTS, params=SCHEMA)))
    assert check is not None
    first = check(None)
    first["scale"] = 99.0
    assert check(None)["scale"] == 1.0
    sent = {"scale": 2.0}
    assert check(sent) is not sent and sent == {"scale": 2.0}


def test_a_model_without_a_parameter_schema_has_no_check() -> None:
    assert params_checker(MlflowModel(signature=ModelSignature(INPUTS))) is None


# -- the runnable ----------------------------------------------------------------------------


with warnings.catch_warnings():  # MLflow asks for type hints that it would then misread
    warnings.simplefilter("ignore", UserWarning)

    class Echo(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
        """x times params["scale"], and the params it was given, one row each."""

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            # (no type hints: MLflow would read them as a signature)
            return [
                {"y": float(x) * params["scale"], "params": sorted(params.items())}
                for x in model_input["x"]
            ]


@pytest.fixture
def echo(tmp_path: Path) -> Path:
    path = tmp_path / "echo"
    signature = ModelSignature(INPUTS, params=ParamSchema([
        ParamSpec("scale", "double", 1.0), ParamSpec("label", "string", "none"),
    ]))  # fmt: skip
    mlflow.pyfunc.save_model(str(path), python_model=Echo(), signature=signature)
    tiffin.mlflow.import_model("echo", str(path))
    return path


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How often MLflow's own check of a predict call's inputs and params ran."""
    calls: list[int] = []
    original = mlflow.pyfunc._validate_prediction_input

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(mlflow.pyfunc, "_validate_prediction_input", counting)
    return calls


def test_params_are_checked_without_mlflows_input_check(echo: Path, counted: list[int]) -> None:
    frame = pd.DataFrame({"x": [1.0, 2.0]})
    runner = tiffin.mlflow.get("echo").to_runner()
    runner.init_local()
    try:
        default = runner.predict.run(frame)
        scaled = runner.predict.run({"x": [1.0, 2.0]}, params={"scale": 3, "bogus": 1})
        labelled = runner.predict.run(frame, params={"label": "b"})
        with pytest.raises(MlflowException) as raised:
            runner.predict.run(frame, params={"scale": "abc"})
    finally:
        runner.destroy()
    assert counted == []  # MLflow's predict never ran its checks
    assert default == [{"y": v, "params": [("label", "none"), ("scale", 1.0)]} for v in (1, 2)]
    assert scaled == [{"y": v, "params": [("label", "none"), ("scale", 3.0)]} for v in (3, 6)]
    assert type(scaled[0]["params"][1][1]) is float  # 3 became a double, as MLflow makes it
    assert labelled[0]["params"] == [("label", "b"), ("scale", 1.0)]
    with pytest.raises(MlflowException) as mlflows:  # MLflow's own predict, for its words
        mlflow.pyfunc.load_model(str(echo)).predict(frame, params={"scale": "abc"})
    assert raised.value.error_code == mlflows.value.error_code == "INVALID_PARAMETER_VALUE"
    assert raised.value.message == mlflows.value.message


@pytest.mark.anyio
async def test_invocations_answer_params_as_mlflow_does(echo: Path) -> None:
    model = tiffin.mlflow.get("echo")
    split = {"dataframe_split": {"columns": ["x"], "data": [[2.0]]}}
    async with asgi_client(build_app(build_service(model))) as client:
        plain = await client.post("/invocations", json=split)
        scaled = await client.post("/invocations", json={**split, "params": {"scale": 2}})
        bad = await client.post("/invocations", json={**split, "params": {"scale": "abc"}})
    assert plain.status_code == 200, plain.text
    assert plain.json()["predictions"][0]["y"] == 2.0
    assert scaled.status_code == 200, scaled.text
    assert scaled.json()["predictions"][0]["y"] == 4.0
    assert bad.status_code == 400, bad.text
    assert bad.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert "scale" in bad.json()["message"]
