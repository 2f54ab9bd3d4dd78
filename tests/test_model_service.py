"""``tiffin serve-model``: one stored model, a route per signature method, rows in and rows
out, schemas from the MLflow signature; in process, and as a real process over HTTP."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.test_serving_support import (
    IRIS_COLUMNS,
    asgi_client,
    iris_frame,
    save_iris_model,
    server_env,
    start_tiffin,
    store_at,
)
from tiffin.exceptions import InvalidArgument, NotFound
from tiffin.serving.app import build_app
from tiffin.serving.model_service import _name_from_uri, build_service, resolve_model

pytestmark = [
    pytest.mark.anyio,
    # the pyfunc model gets DataFrames, the native flavor arrays: sklearn notes the difference
    pytest.mark.filterwarnings("ignore:X (has|does not have valid) feature names:UserWarning"),
]


class Models:
    """The module's models: iris with a column signature (pyfunc and native flavors) and
    iris with a tensor signature, imported into a store of their own."""

    def __init__(self, root: Path) -> None:
        from tiffin.frameworks import mlflow as tiffin_mlflow

        self.root = root
        self.columns_dir = save_iris_model(root / "iris-columns")
        self.tensor_dir = save_iris_model(root / "iris-tensor", tensor=True)
        store = store_at(root / "home")
        self.pyfunc = tiffin_mlflow.import_model("iris", self.columns_dir, store=store)
        self.native = tiffin_mlflow.import_model(
            "iris_native", self.columns_dir, flavor="native", store=store,
            signatures={"predict": {"batchable": True}, "predict_proba": {}},
        )  # fmt: skip
        self.tensor = tiffin_mlflow.import_model("iris_tensor", self.tensor_dir, store=store)
        from mlflow.sklearn import load_model

        self.sklearn = load_model(str(self.columns_dir))
        X, _ = iris_frame()
        self.X = X.to_numpy()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Models:
    return Models(tmp_path_factory.mktemp("serve-model"))


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"no {name} {labels}")


# -- in process ------------------------------------------------------------------------------


async def test_a_route_per_signature_method(models: Models) -> None:
    async with asgi_client(build_app(build_service(models.native))) as client:
        spec = (await client.get("/docs.json")).json()
        assert {"/predict", "/predict_proba", "/invocations"} <= set(spec["paths"])
        rows = models.X[:5].tolist()
        predicted = await client.post("/predict", json=rows)
        assert predicted.json() == models.sklearn.predict(models.X[:5]).tolist()
        proba = np.array((await client.post("/predict_proba", json=rows)).json())
        np.testing.assert_allclose(proba, models.sklearn.predict_proba(models.X[:5]))
    async with asgi_client(build_app(build_service(models.pyfunc))) as client:
        spec = (await client.get("/docs.json")).json()
        assert "/predict_proba" not in spec["paths"]


async def test_rows_columns_records_and_npy_all_answer_a_json_array(models: Models) -> None:
    expected = models.sklearn.predict(models.X[:3]).tolist()
    frame = dict(zip(IRIS_COLUMNS, models.X[:3].T.tolist(), strict=True))
    records = [dict(zip(IRIS_COLUMNS, row, strict=True)) for row in models.X[:3].tolist()]
    async with asgi_client(build_app(build_service(models.pyfunc))) as client:
        for body in (models.X[:3].tolist(), frame, records, {"inputs": models.X[:3].tolist()}):
            response = await client.post("/predict", json=body)
            assert response.status_code == 200, (body, response.text)
            assert response.headers["content-type"] == "application/json"
            assert response.json() == expected
    buffer = io.BytesIO()
    np.save(buffer, models.X[:3])
    async with asgi_client(build_app(build_service(models.tensor))) as client:
        response = await client.post("/predict", content=buffer.getvalue(),
                                     headers={"content-type": "application/x-npy"})
        assert response.status_code == 200, response.text
        assert response.json() == expected


async def test_schemas_come_from_the_signature_and_the_input_example(models: Models) -> None:
    async with asgi_client(build_app(build_service(models.pyfunc))) as client:
        spec = (await client.get("/docs.json")).json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    records, columns, rows = body["schema"]["oneOf"]
    assert list(records["items"]["properties"]) == IRIS_COLUMNS
    assert records["items"]["properties"][IRIS_COLUMNS[0]] == {"type": "number"}
    assert columns["required"] == IRIS_COLUMNS
    assert rows["items"]["minItems"] == rows["items"]["maxItems"] == 4
    example = body["schema"]["examples"][0]
    assert list(example[0]) == IRIS_COLUMNS and len(example) == 2
    assert [c["name"] for c in body["schema"]["x-mlflow-signature"]["inputs"]] == IRIS_COLUMNS
    invocations = spec["paths"]["/invocations"]["post"]["requestBody"]["content"]
    assert "dataframe_split" in invocations["application/json"]["example"]

    async with asgi_client(build_app(build_service(models.tensor))) as client:
        spec = (await client.get("/docs.json")).json()
    schema = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    schema = schema["schema"]
    assert schema["type"] == "array"
    assert schema["items"] == {"type": "array", "items": {"type": "number"},
                               "minItems": 4, "maxItems": 4}
    assert len(schema["examples"][0]) == 2


async def test_predict_is_batched_by_default_and_not_with_no_batching(models: Models) -> None:
    service = build_service(models.pyfunc)
    assert service.runners[0].predict.settings.batchable
    async with asgi_client(build_app(service)) as client:
        rows = models.X[:40].tolist()
        responses = await asyncio.gather(*(client.post("/predict", json=[row]) for row in rows))
        assert [r.json()[0] for r in responses] == models.sklearn.predict(models.X[:40]).tolist()
        metrics = (await client.get("/metrics")).text
    assert _sample(metrics, "tiffin_runner_calls_total") == 40
    assert _sample(metrics, "tiffin_runner_batches_total") < 40
    assert not build_service(models.pyfunc, batching=False).runners[0].predict.settings.batchable


async def test_bad_rows_are_400s_that_never_fail_their_neighbours(models: Models) -> None:
    good = [dict(zip(IRIS_COLUMNS, row, strict=True)) for row in models.X[:30].tolist()]
    bad = dict(good[0], **{IRIS_COLUMNS[0]: "not a number"})  # same columns, wrong dtype
    async with asgi_client(build_app(build_service(models.pyfunc))) as client:
        bodies: list[Any] = [[row] for row in good]
        bodies[10:10] = [[bad]]
        responses = await asyncio.gather(*(client.post("/predict", json=b) for b in bodies))
        statuses = [r.status_code for r in responses]
        assert statuses == [200] * 10 + [400] + [200] * 20, statuses
        detail = responses[10].json()["detail"]  # names the column, the row and the value
        assert "'sepal length (cm)' row 0: 'not a number'" in detail and "float64" in detail
        answers = [r.json()[0] for r in responses[:10] + responses[11:]]
        assert answers == models.sklearn.predict(models.X[:30]).tolist()

        response = await client.post("/predict", json=[[1.0, 2.0, 3.0]])
        assert response.status_code == 400
        assert "row 0 has 3 values, but the model's signature has 4 columns" in (
            response.json()["detail"]
        )
        response = await client.post("/predict", json=[[1, 2], [3]])
        assert response.status_code == 400  # ragged rows: each row against the signature
        assert "row 0 has 2 values, but the model's signature has 4" in response.json()["detail"]
        response = await client.post("/predict", json=[])
        assert response.status_code == 400 and "empty" in response.json()["detail"]


async def test_a_model_error_is_a_500_for_its_caller_only(models: Models) -> None:
    def npy(rows: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, rows)
        return buffer.getvalue()

    poisoned = models.X[:1].copy()
    poisoned[0, 0] = np.nan  # LogisticRegression refuses NaN: the model itself raises
    headers = {"content-type": "application/octet-stream"}
    async with asgi_client(build_app(build_service(models.tensor))) as client:
        bodies = [npy(models.X[i : i + 1]) for i in range(20)]
        bodies[5:5] = [npy(poisoned)]
        responses = await asyncio.gather(
            *(client.post("/predict", content=b, headers=headers) for b in bodies)
        )
        statuses = [r.status_code for r in responses]
        assert statuses == [200] * 5 + [500] + [200] * 15, statuses
        failed = responses[5].json()
        assert f"error_id={failed['error_id']}" in failed["detail"]
        assert "NaN" not in failed["detail"]  # the model's error text: in the log only
        answers = [r.json()[0] for r in responses[:5] + responses[6:]]
        assert answers == models.sklearn.predict(models.X[:20]).tolist()


def test_resolve_model_by_tag_and_by_uri(
    models: Models, tiffin_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = resolve_model(str(models.columns_dir))  # a path: imported into the store
    assert first.tag.name == "iris-columns"
    assert resolve_model("iris-columns:latest").tag == first.tag
    assert resolve_model("iris-columns").tag == first.tag
    with pytest.raises(NotFound):
        resolve_model("nothing:latest")
    with pytest.raises(InvalidArgument):
        resolve_model(str(models.root))  # a directory without an MLmodel
    assert _name_from_uri("runs:/0123abc/my model") == "my-model"
    assert _name_from_uri("models:/Fraud Detector/3") == "3"
    assert _name_from_uri("s3://bucket/Iris_Model/") == "iris_model"


# -- a real server process -------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(models: Models) -> Iterator[Any]:
    """``tiffin serve-model <MLflow model directory>``: imported into the store, then served."""
    root = models.root / "served"
    root.mkdir()
    srv = start_tiffin(["serve-model", str(models.columns_dir)], cwd=root,
                       env=server_env(root / "home"), log=root / "log")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.mark.slow
def test_serve_model_from_an_mlflow_uri_over_http(models: Models, served: Any) -> None:
    rows = models.X[:4].tolist()
    expected = models.sklearn.predict(models.X[:4]).tolist()
    response = httpx.post(served.url + "/predict", json=rows)
    assert response.status_code == 200, response.text
    assert response.json() == expected
    response = httpx.post(served.url + "/invocations", json={"inputs": rows})
    assert response.json() == {"predictions": expected}
    assert httpx.get(served.url + "/ping").status_code == 200
    assert "serving model 'iris-columns:" in served.logs()
    stored = list((models.root / "served" / "home" / "models" / "iris-columns").iterdir())
    assert any((p / "mlflow_model" / "MLmodel").is_file() for p in stored)
    response = httpx.post(served.url + "/predict", json=[[1, 2]])
    assert response.status_code == 400
    assert response.json()["error"] == "BAD_REQUEST"


@pytest.mark.slow
def test_serve_model_by_tag_without_batching(models: Models, tmp_path: Path) -> None:
    home = models.root / "home"  # the module's store, with iris_native in it
    srv = start_tiffin(["serve-model", "iris_native:latest", "--no-batching"], cwd=tmp_path,
                       env=server_env(home), log=tmp_path / "log")
    try:
        rows = models.X[:2].tolist()
        response = httpx.post(srv.url + "/predict_proba", json=rows)
        assert response.status_code == 200
        np.testing.assert_allclose(response.json(), models.sklearn.predict_proba(models.X[:2]))
        metrics = httpx.get(srv.url + "/metrics").text
        assert "tiffin_runner_calls_total{" not in metrics  # nothing went through a batcher
        spec = httpx.get(srv.url + "/docs.json").json()
        assert json.dumps(spec)
    finally:
        srv.stop()


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """An .npy file whose header declares ``shape`` of float64, with 16 bytes of data."""
    header = repr({"descr": "<f8", "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\0" * 16


async def test_what_a_body_declares_is_measured_before_it_is_built(models: Models) -> None:
    """An .npy header's shape, an envelope's table, an object of inputs' nested lists: a 413
    that names the setting, from the server's settings."""
    from tiffin.config import load_settings

    settings = load_settings(overrides={"max_columns": 10, "max_decoded_cells": 1000},
                             environ={})  # fmt: skip
    wide = [f"c{i}" for i in range(11)]
    cases: list[tuple[dict[str, Any], str]] = [
        ({"content": _npy_header((100_000, 100_000)),
          "headers": {"content-type": "application/octet-stream"}}, "max_decoded_cells"),
        ({"json": {"dataframe_split": {"columns": wide, "data": [[0] * 11]}}}, "max_columns"),
        ({"json": {"inputs": {"a": [[0] * 100] * 11}}}, "max_decoded_cells"),
        ({"json": [{f"k{i}": 0} for i in range(11)]}, "max_columns"),
    ]  # fmt: skip
    async with asgi_client(build_app(build_service(models.tensor), settings)) as client:
        for request, setting in cases:
            response = await client.post("/predict", **request)
            assert response.status_code == 413, response.text
            assert response.json()["setting"] == setting
            assert response.json()["error"] == "PAYLOAD_TOO_LARGE"
        assert (await client.post("/predict", json=models.X[:2].tolist())).status_code == 200


# -- every method of a native scikit-learn model --------------------------------------------


def _native_estimators(store: Any = None) -> dict[str, Any]:
    """A classifier (predict, predict_proba, predict_log_proba, decision_function) and a PCA
    (transform, score_samples), saved with tiffin.sklearn and signatures="all"."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression

    import tiffin

    X, y = iris_frame()
    X = X.to_numpy()
    fitted = {"clf": LogisticRegression(max_iter=500).fit(X, y),
              "pca": PCA(n_components=2).fit(X)}  # fmt: skip
    for name, estimator in fitted.items():
        tiffin.sklearn.save_model(name, estimator, signatures="all", store=store)
    return fitted


SIX = {"clf": ["decision_function", "predict", "predict_log_proba", "predict_proba"],
       "pca": ["score_samples", "transform"]}  # fmt: skip


async def test_every_declared_sklearn_method_is_a_route_answering_json_or_npy(
    models: Models,
) -> None:
    import tiffin

    fitted = _native_estimators()
    x = models.X[:5]
    for name, methods in SIX.items():
        model = tiffin.sklearn.get(name)
        assert sorted(model.info.signatures) == methods
        assert sorted(model.to_runner().methods) == methods
        async with asgi_client(build_app(build_service(model))) as client:
            for method in methods:
                expected = getattr(fitted[name], method)(x)
                as_json = await client.post(f"/{method}", json=x.tolist())
                assert as_json.status_code == 200, (method, as_json.text)
                np.testing.assert_allclose(as_json.json(), expected)
                buffer = io.BytesIO()
                np.save(buffer, x)
                as_npy = await client.post(
                    f"/{method}", content=buffer.getvalue(),
                    headers={"content-type": "application/octet-stream",
                             "accept": "application/octet-stream"},
                )  # fmt: skip
                assert as_npy.headers["content-type"] == "application/octet-stream", method
                np.testing.assert_array_equal(np.load(io.BytesIO(as_npy.content)), expected)


@pytest.mark.slow
def test_every_declared_sklearn_method_is_a_client_method(tmp_path: Path) -> None:
    """Real ``tiffin serve-model`` processes; ``tiffin.Client`` sends ndarrays as .npy and
    gets ndarrays back (exact dtype), lists as JSON and gets lists."""
    import tiffin

    home = tmp_path / "home"
    fitted = _native_estimators(store_at(home))
    x = iris_frame()[0].to_numpy()[:4]
    servers = {name: start_tiffin(["serve-model", f"{name}:latest"], cwd=tmp_path,
                                  env=server_env(home), log=tmp_path / f"{name}.log")
               for name in SIX}  # fmt: skip
    try:
        for name, methods in SIX.items():
            with tiffin.Client.from_url(servers[name].url) as client:
                for method in methods:
                    expected = getattr(fitted[name], method)(x)
                    answer = getattr(client, method)(x)
                    assert isinstance(answer, np.ndarray), (name, method)
                    assert answer.dtype == expected.dtype
                    np.testing.assert_array_equal(answer, expected)
                    listed = getattr(client, method)(x.tolist())
                    assert isinstance(listed, list)
                    np.testing.assert_allclose(listed, expected)
    finally:
        for server in servers.values():
            server.stop()
