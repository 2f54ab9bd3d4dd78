"""MLflow's scoring protocol on tiffin (/invocations, /ping, /health, /version), in process,
and side by side with the real ``mlflow models serve --env-manager local`` on one model."""

from __future__ import annotations

import asyncio
import json
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pytest

import tiffin
from tests.test_serving_support import (
    BIN,
    IRIS_COLUMNS,
    ServerProcess,
    asgi_client,
    iris_frame,
    save_iris_model,
    server_env,
    start_on_free_port,
    start_tiffin,
    store_at,
)
from tiffin.config import load_settings
from tiffin.exceptions import InvalidArgument
from tiffin.io import JSON
from tiffin.serving.app import build_app
from tiffin.serving.model_service import build_service

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:X (has|does not have valid) feature names:UserWarning"),
]


with warnings.catch_warnings():  # MLflow asks for type hints that it would then misread
    warnings.simplefilter("ignore", UserWarning)

    class Scaled(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
        """First column times params["scale"]; sleeps params["sleep"] seconds first."""

        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            # (no type hints: MLflow would read them as a signature)
            params = params or {}
            time.sleep(float(params.get("sleep", 0.0)))
            return np.asarray(model_input, dtype=np.float64)[:, 0] * float(params.get("scale", 1.0))


class Models:
    def __init__(self, root: Path) -> None:
        from mlflow.models import infer_signature

        from tiffin.frameworks import mlflow as tiffin_mlflow

        self.root = root
        self.iris_dir = save_iris_model(root / "iris")
        scaled_dir = root / "scaled"
        mlflow.pyfunc.save_model(
            str(scaled_dir), python_model=Scaled(), pip_requirements=["numpy"],
            input_example=(np.ones((1, 1)), {"scale": 1.0}),
            signature=infer_signature(np.zeros((2, 1)), np.zeros(2),
                                      params={"scale": 1.0, "sleep": 0.0}),
        )  # fmt: skip
        store = store_at(root / "home")
        self.iris = tiffin_mlflow.import_model(
            "iris", self.iris_dir, store=store, signatures={"predict": {"batchable": True}}
        )
        self.scaled = tiffin_mlflow.import_model("scaled", scaled_dir, store=store)
        self.sklearn = mlflow.sklearn.load_model(str(self.iris_dir))
        X, _ = iris_frame()
        self.X = X.to_numpy()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(tmp_path_factory.mktemp("mlflow-protocol"))


def split(rows: Any) -> dict[str, Any]:
    return {"dataframe_split": {"columns": IRIS_COLUMNS, "data": rows}}


# -- in process ------------------------------------------------------------------------------


async def test_every_input_format_answers_predictions(models: Models) -> None:
    rows = models.X[:3].tolist()
    expected = {"predictions": models.sklearn.predict(models.X[:3]).tolist()}
    records = [dict(zip(IRIS_COLUMNS, row, strict=True)) for row in rows]
    csv = ",".join(IRIS_COLUMNS) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n"
    async with asgi_client(build_app(build_service(models.iris))) as client:
        for body in (split(rows), {"dataframe_records": records}, {"instances": records},
                     {"inputs": dict(zip(IRIS_COLUMNS, models.X[:3].T.tolist(), strict=True))}):
            response = await client.post("/invocations", json=body)
            assert response.status_code == 200, (body, response.text)
            assert response.json() == expected
        response = await client.post("/invocations", content=csv,
                                     headers={"content-type": "text/csv; charset=utf-8"})
        assert response.json() == expected
        assert (await client.get("/ping")).status_code == 200
        assert (await client.get("/health")).text == "\n"
        assert (await client.get("/version")).text == mlflow.__version__


async def test_errors_have_mlflows_shape(models: Models) -> None:
    async with asgi_client(build_app(build_service(models.iris))) as client:
        cases = [
            (await client.post("/invocations", json=[[1, 2, 3, 4]]), 400),
            (await client.post("/invocations", json={"instances": [], "inputs": []}), 400),
            (await client.post("/invocations", content=b"{", headers={
                "content-type": "application/json"}), 400),
            (await client.post("/invocations", content=b"x", headers={
                "content-type": "text/plain"}), 415),
            (await client.get("/invocations"), 405),
        ]
    for response, status in cases:
        assert response.status_code == status, response.text
        assert set(response.json()) == {"error_code", "message"}, response.text


async def test_error_codes_are_mlflows_for_a_value_and_for_a_shape(models: Models) -> None:
    """As ``mlflow models serve``: a value its parser cannot read is BAD_REQUEST; an input its
    schema enforcement refuses (missing columns, unequal columns, a Parquet column of another
    type) is INVALID_PARAMETER_VALUE. Both 400; /predict keeps tiffin's own code."""
    import io

    import pandas as pd

    rows = models.X[:2].tolist()
    records = [dict(zip(IRIS_COLUMNS, row, strict=True)) for row in rows]
    parquet = io.BytesIO()
    pd.DataFrame(records).astype({IRIS_COLUMNS[0]: str}).to_parquet(parquet)
    cases = [
        ({"dataframe_records": [dict(records[0], **{IRIS_COLUMNS[0]: "five"})]}, "BAD_REQUEST"),
        ({"dataframe_records": [{k: v for k, v in r.items() if k != IRIS_COLUMNS[3]}
                                for r in records]}, "INVALID_PARAMETER_VALUE"),
        ({"inputs": {c: [1.0] * (1 + (c == IRIS_COLUMNS[0])) for c in IRIS_COLUMNS}},
         "INVALID_PARAMETER_VALUE"),
        ({"dataframe_records": []}, "INVALID_PARAMETER_VALUE"),
    ]  # fmt: skip
    async with asgi_client(build_app(build_service(models.iris))) as client:
        for body, code in cases:
            response = await client.post("/invocations", json=body)
            assert response.status_code == 400, (body, response.text)
            assert response.json()["error_code"] == code, (body, response.text)
        response = await client.post("/invocations", content=parquet.getvalue(),
                                     headers={"content-type": "application/vnd.apache.parquet"})
        assert response.status_code == 400, response.text
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE", response.text
        response = await client.post("/predict", json=cases[1][0]["dataframe_records"])
        assert (response.status_code, response.json()["error"]) == (400, "BAD_REQUEST")


async def test_calls_batch_together_only_when_their_params_are_equal(models: Models) -> None:
    scales = [1.0, 2.0, 3.0] * 10
    async with asgi_client(build_app(build_service(models.scaled))) as client:
        responses = await asyncio.gather(*(
            client.post("/invocations", json={"inputs": [[i + 1.0]], "params": {"scale": s}})
            for i, s in enumerate(scales)
        ))  # fmt: skip
        metrics = (await client.get("/metrics")).text
    assert [r.json()["predictions"] for r in responses] == [
        [(i + 1.0) * s] for i, s in enumerate(scales)
    ]
    batches = next(float(line.rpartition(" ")[2]) for line in metrics.splitlines()
                   if line.startswith("tiffin_runner_batches_total{"))
    assert 3 <= batches < 30  # batched, but never across different params


async def test_timeout_and_overload_in_mlflows_shape(models: Models) -> None:
    settings = load_settings(
        overrides={"api_timeout_s": 0.4, "runners": {"scaled": {"max_latency_ms": 50}}},
        environ={},
    )
    async with asgi_client(build_app(build_service(models.scaled), settings)) as client:
        response = await client.post("/invocations",
                                     json={"inputs": [[1.0]], "params": {"sleep": 1.0}})
        assert response.status_code == 504
        assert response.json()["error_code"] == "DEADLINE_EXCEEDED"
        await asyncio.sleep(0.7)  # the model finishes that call
        first = asyncio.ensure_future(
            client.post("/invocations", json={"inputs": [[1.0]], "params": {"sleep": 0.3}})
        )
        await asyncio.sleep(0.05)
        queued = await client.post("/invocations", json={"inputs": [[1.0]]})
        assert (await first).status_code == 200
    assert queued.status_code == 503
    assert queued.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert int(queued.headers["retry-after"]) >= 1


async def test_before_the_model_loads_ping_is_404_and_invocations_503(models: Models) -> None:
    app = build_app(build_service(models.iris))  # no lifespan: nothing loaded
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/ping")).status_code == 404
        response = await client.post("/invocations", json=split([[1, 2, 3, 4]]))
        assert response.status_code == 503
        assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


async def test_a_service_with_one_mlflow_runner_speaks_the_protocol(models: Models) -> None:
    runner = tiffin.mlflow.get("iris", store=store_at(models.root / "home")).to_runner()
    svc = tiffin.Service("user_service", runners=[runner])

    @svc.api(input=JSON(), output=JSON())
    async def classify(rows: Any) -> Any:
        return (await runner.predict.async_run(np.asarray(rows))).tolist()

    async with asgi_client(build_app(svc)) as client:
        rows = models.X[:2].tolist()
        expected = models.sklearn.predict(models.X[:2]).tolist()
        assert (await client.post("/classify", json=rows)).json() == expected
        response = await client.post("/invocations", json=split(rows))
        assert response.json() == {"predictions": expected}

    clash = tiffin.Service("clash", runners=[runner])
    with pytest.raises(InvalidArgument, match="route /ping is one the tiffin server answers"):
        clash.api(input=JSON(), output=JSON(), name="ping")(lambda x: x)  # refused at once


async def test_two_mlflow_runners_means_no_mlflow_routes(models: Models) -> None:
    store = store_at(models.root / "home")
    one = tiffin.mlflow.get("iris", store=store).to_runner(name="one")
    two = tiffin.mlflow.get("scaled", store=store).to_runner(name="two")
    async with asgi_client(build_app(tiffin.Service("two", runners=[one, two]))) as client:
        response = await client.post("/invocations", json=split([[1, 2, 3, 4]]))
        assert response.status_code == 404
        assert response.json()["error"] == "NOT_FOUND"


# -- the same answers as mlflow models serve -------------------------------------------------


@pytest.fixture(scope="module")
def both(models: Models) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """``mlflow models serve --env-manager local`` and ``tiffin serve-model`` on one model."""
    root = models.root / "parity"
    root.mkdir()
    env = server_env(root / "home")
    theirs = start_on_free_port(
        lambda port: [str(BIN / "mlflow"), "models", "serve", "-m", str(models.iris_dir),
                      "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
        cwd=root, env=env, log=root / "mlflow.log", ready="/ping",
    )  # fmt: skip
    try:
        ours = start_tiffin(["serve-model", str(models.iris_dir)], cwd=root, env=env,
                            log=root / "tiffin.log")
        try:
            yield theirs, ours
        finally:
            ours.stop()
    finally:
        theirs.stop()


def _payloads(X: np.ndarray) -> list[tuple[str, bytes, str]]:
    rows = X[:5].tolist()
    records = [dict(zip(IRIS_COLUMNS, row, strict=True)) for row in rows]
    columns = dict(zip(IRIS_COLUMNS, X[:5].T.tolist(), strict=True))
    csv = (",".join(IRIS_COLUMNS) + "\n" + "\n".join(",".join(map(str, r)) for r in rows)).encode()
    app_json = "application/json"

    def js(obj: Any) -> bytes:
        return json.dumps(obj).encode()

    return [
        # valid
        ("split", js(split(rows)), app_json),
        ("split with index", js({"dataframe_split": {"columns": IRIS_COLUMNS, "data": rows,
                                                     "index": [9, 8, 7, 6, 5]}}), app_json),
        ("records", js({"dataframe_records": records}), app_json),
        ("instances", js({"instances": records}), app_json),
        ("columnar inputs", js({"inputs": columns}), app_json),
        ("integers", js(split([[5, 3, 1, 0]])), app_json),
        ("charset", js(split(rows)), "application/json; charset=utf-8"),
        ("empty params", js({**split(rows), "params": {}}), app_json),
        ("csv", csv, "text/csv"),
        ("extra column", js({"dataframe_records": [dict(records[0], extra=1)]}), app_json),
        # invalid
        ("bare list", js(rows), app_json),
        ("mlflow 1.x", js({"columns": IRIS_COLUMNS, "data": rows}), app_json),
        ("two keys", js({**split(rows), "inputs": rows}), app_json),
        ("no data key", js({"params": {}}), app_json),
        ("malformed", b'{"dataframe_split": ', app_json),
        ("empty body", b"", app_json),
        ("missing column", js({"dataframe_records": [
            {k: v for k, v in records[0].items() if k != IRIS_COLUMNS[3]}]}), app_json),
        ("string in a double column", js({"dataframe_records": [
            dict(records[0], **{IRIS_COLUMNS[0]: "five"})]}), app_json),
        ("NaN", b'{"dataframe_split": {"columns": ' + js(IRIS_COLUMNS)
         + b', "data": [[NaN, 1, 2, 3]]}}', app_json),
        ("plain text", b"hello", "text/plain"),
        ("latin-1", js(split(rows)), "application/json; charset=latin-1"),
        ("unknown parameter", js(split(rows)), "application/json; format=pandas-split"),
        ("csv with wrong columns", b"a,b\n1,2\n", "text/csv"),
    ]


@pytest.mark.slow
def test_same_predictions_and_status_codes_as_mlflow_models_serve(
    models: Models, both: tuple[ServerProcess, ServerProcess]
) -> None:
    theirs, ours = both
    compared = []
    for name, body, content_type in _payloads(models.X):
        headers = {"content-type": content_type}
        a = httpx.post(theirs.url + "/invocations", content=body, headers=headers, timeout=30)
        b = httpx.post(ours.url + "/invocations", content=body, headers=headers, timeout=30)
        compared.append((name, a.status_code, b.status_code))
        assert b.status_code == a.status_code, (name, a.text, b.text)
        assert b.headers["content-type"] == "application/json", name
        if a.status_code == 200:
            assert b.json() == a.json(), name
        else:
            assert set(b.json()) >= {"error_code", "message"}, (name, b.text)
    assert sum(1 for _, status, _ in compared if status == 200) >= 9
    assert sum(1 for _, status, _ in compared if status == 415) == 3
    for path in ("/ping", "/health", "/version"):
        a, b = httpx.get(theirs.url + path), httpx.get(ours.url + path)
        assert (b.status_code, b.text) == (a.status_code, a.text), path
    assert httpx.get(ours.url + "/invocations").status_code == 405
    assert httpx.get(theirs.url + "/invocations").status_code == 405


async def test_the_one_tensor_fast_path_answers_as_mlflows_parser(
    models: Models, tmp_path: Path
) -> None:
    """``{"inputs": [...]}`` for a one-tensor signature skips MLflow's parser; the same body
    with an empty ``params`` takes it: both must answer alike, good input or bad."""
    from tiffin.frameworks import mlflow as tiffin_mlflow

    tensor = tiffin_mlflow.import_model(
        "iris_tensor", save_iris_model(tmp_path / "tensor", tensor=True),
        store=store_at(tmp_path / "home"),
    )  # fmt: skip
    rows = models.X[:4].tolist()
    bodies: list[Any] = [rows, [[1, 2, 3, 4]], [[1, 2], [3]], [["a", "b", "c", "d"]],
                         [[1, 2, 3]], [[[1, 2, 3, 4]]], [1, 2, 3, 4], []]
    async with asgi_client(build_app(build_service(tensor))) as client:
        for inputs in bodies:
            fast = await client.post("/invocations", json={"inputs": inputs})
            slow = await client.post("/invocations", json={"inputs": inputs, "params": {}})
            assert fast.status_code == slow.status_code, (inputs, fast.text, slow.text)
            if fast.status_code == 200:
                assert fast.json() == slow.json(), inputs
            else:
                assert fast.json()["error_code"] == slow.json()["error_code"], inputs
        response = await client.post("/invocations", json={"inputs": rows})
        assert response.json() == {"predictions": models.sklearn.predict(models.X[:4]).tolist()}


# -- decode limits -----------------------------------------------------------------------------


def _parquet(rows: int) -> bytes:
    import io

    import pandas as pd

    buffer = io.BytesIO()
    pd.DataFrame({"a": [0.0] * rows}).to_parquet(buffer)
    return buffer.getvalue()


async def test_invocations_measures_what_a_body_declares_before_mlflow_builds_it(
    models: Models, tmp_path: Path
) -> None:
    """Each envelope's payload, a CSV header and lines, a Parquet footer: over a limit is
    MLflow's 413 naming the setting, whatever the signature (here a tensor signature, which
    knows no columns to keep)."""
    from tiffin.frameworks import mlflow as tiffin_mlflow

    tensor = tiffin_mlflow.import_model(
        "iris_tensor", save_iris_model(tmp_path / "tensor", tensor=True),
        store=store_at(tmp_path / "home"),
    )  # fmt: skip
    wide = [f"c{i}" for i in range(11)]
    new_keys = [{f"k{i}": 1.0} for i in range(11)]
    app_json = "application/json"
    cases: list[tuple[str, bytes, str, str]] = [
        ("split", json.dumps({"dataframe_split": {"columns": wide, "data": [[0] * 11]}}).encode(),
         app_json, "max_columns"),
        ("records", json.dumps({"dataframe_records": new_keys}).encode(), app_json, "max_columns"),
        ("instances", json.dumps({"instances": new_keys}).encode(), app_json, "max_columns"),
        ("dict of lists", json.dumps({"inputs": {"a": [[0] * 100] * 11}}).encode(), app_json,
         "max_decoded_cells"),
        ("nested inputs", json.dumps({"inputs": [[0] * 100] * 11}).encode(), app_json,
         "max_decoded_cells"),
        ("NaN inputs", b'{"inputs": [' + b",".join([b"[NaN" + b", 0" * 99 + b"]"] * 11) + b"]}",
         app_json, "max_decoded_cells"),
        ("csv", (",".join(wide) + "\n1\n").encode(), "text/csv", "max_columns"),
        ("parquet", _parquet(1001), "application/vnd.apache.parquet", "max_decoded_cells"),
    ]  # fmt: skip
    settings = load_settings(overrides={"max_columns": 10, "max_decoded_cells": 1000}, environ={})
    async with asgi_client(build_app(build_service(tensor), settings)) as client:
        for name, body, content_type, setting in cases:
            response = await client.post("/invocations", content=body,
                                         headers={"content-type": content_type})
            assert response.status_code == 413, (name, response.text)
            assert set(response.json()) == {"error_code", "message"}, name
            assert setting in response.json()["message"], (name, response.text)
        good = await client.post("/invocations", json={"inputs": models.X[:2].tolist()})
        assert good.status_code == 200


async def test_with_a_column_signature_unknown_keys_are_dropped_before_the_frame_is_built(
    models: Models, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As MLflow ignores them, but before anything is built: many junk keys in records or in
    an object of inputs are neither a 413 nor a frame of junk columns."""
    from mlflow.pyfunc import scoring_server

    parsed: list[Any] = []
    original = scoring_server._parse_json_data

    def spy(data: Any, metadata: Any, schema: Any) -> Any:
        parsed.append(data)
        return original(data, metadata, schema)

    monkeypatch.setattr(scoring_server, "_parse_json_data", spy)
    rows = models.X[:3].tolist()
    junk = {f"junk{i}": 0 for i in range(50)}
    records = [{**dict(zip(IRIS_COLUMNS, row, strict=True)), **junk} for row in rows]
    columns = {**dict(zip(IRIS_COLUMNS, models.X[:3].T.tolist(), strict=True)),
               **{k: [0, 0, 0] for k in junk}}  # fmt: skip
    expected = {"predictions": models.sklearn.predict(models.X[:3]).tolist()}
    settings = load_settings(overrides={"max_columns": 10}, environ={})
    async with asgi_client(build_app(build_service(models.iris), settings)) as client:
        for key, payload in (("dataframe_records", records), ("instances", records),
                             ("inputs", columns)):
            response = await client.post("/invocations", json={key: payload})
            assert response.status_code == 200, (key, response.text)
            assert response.json() == expected, key
        wide = await client.post("/invocations", json={"dataframe_split": {
            "columns": IRIS_COLUMNS + list(junk), "data": [row + [0] * 50 for row in rows]}})
        assert wide.status_code == 413 and "max_columns" in wide.json()["message"]
    for data in parsed:
        payload = next(iter(data.values()))
        keys = set(payload) if isinstance(payload, dict) else set().union(*payload)
        assert keys == set(IRIS_COLUMNS), keys
