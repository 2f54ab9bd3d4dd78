"""The ASGI app in process (httpx.ASGITransport, lifespan running): error shapes, settings
applied to runners, metrics, the OpenAPI document, logs."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest

import tiffin
from tests.test_serving_support import asgi_client
from tiffin.config import load_settings
from tiffin.exceptions import InvalidArgument
from tiffin.io import JSON, File, Multipart, NumpyNdarray, PandasDataFrame, Text
from tiffin.process.logs import JSONFormatter
from tiffin.serving.app import build_app
from tiffin.serving.openapi import openapi_spec
from tiffin.serving.service import Service

pytestmark = pytest.mark.anyio


class Echo(tiffin.Runnable):
    @tiffin.Runnable.method(batchable=True)
    def predict(self, x: Any) -> Any:
        return x


def make_service() -> Service:
    runner = tiffin.Runner(Echo, name="echo")
    svc = Service("demo", runners=[runner])

    @svc.api(input=NumpyNdarray(dtype="float32"), output=NumpyNdarray())
    async def predict(arr: np.ndarray) -> np.ndarray:
        """Echo an array."""
        return await runner.predict.async_run(arr)

    @svc.api(input=JSON(), output=NumpyNdarray())
    def not_an_array(obj: Any) -> Any:
        return {"not": "an array"}

    @svc.api(input=JSON(), output=JSON())
    def mlflow_says_no(obj: Any) -> Any:
        from mlflow.exceptions import MlflowException

        raise MlflowException.invalid_parameter_value("column 'x' is missing")

    @svc.api(input=Text(), output=Text())
    async def user_timeout(text: str) -> str:
        raise TimeoutError("the database did not answer")

    return svc


async def test_404_and_405_are_json_and_name_what_exists() -> None:
    async with asgi_client(build_app(make_service())) as client:
        response = await client.get("/nothing")
        assert response.status_code == 404
        body = response.json()
        assert body["error"] == "NOT_FOUND"
        assert "POST /predict" in body["detail"] and "/readyz" in body["detail"]
        response = await client.delete("/predict")
        assert response.status_code == 405
        assert response.json()["error"] == "METHOD_NOT_ALLOWED"
        assert response.headers["allow"] == "POST"
        response = await client.get("/static/swagger-ui/../../etc/passwd")
        assert response.status_code == 404
        assert response.json()["error"] == "NOT_FOUND"


async def test_server_side_errors_carry_a_logged_error_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with asgi_client(build_app(make_service())) as client:
        first = await client.post("/not_an_array", json={})
        second = await client.post("/not_an_array", json={})
    assert first.status_code == second.status_code == 500
    body = first.json()
    assert body["error"] == "INVALID_OUTPUT"
    assert body["error_id"] != second.json()["error_id"]
    errors = [r for r in caplog.records if r.name == "tiffin.server" and r.levelno == logging.ERROR]
    assert any(body["error_id"] in r.getMessage() and r.exc_info for r in errors)
    access = [r.access for r in caplog.records if r.name == "tiffin.access"]  # type: ignore[attr-defined]
    assert {"method": "POST", "path": "/not_an_array", "status": 500,
            "error_id": body["error_id"]}.items() <= access[0].items()


async def test_the_short_path_for_api_posts_answers_as_the_full_middleware_stack(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """POSTs to API routes skip Starlette's layers (app.TiffinApp), CORS or not; the other
    requests take the full stack. Both give the same statuses, bodies, log and metrics."""
    caplog.set_level(logging.INFO)
    JSON_TYPE = "application/json"
    requests: list[tuple[str, str, Any]] = [
        ("post", "/predict", {"json": [[1.5, 2.0]]}),
        ("post", "/predict", {"content": b"[[1, 2", "headers": {"content-type": JSON_TYPE}}),
        ("post", "/predict", {"content": b"1,2", "headers": {"content-type": "text/csv"}}),
        ("post", "/not_an_array", {"json": {}}),
        ("post", "/mlflow_says_no", {"json": {}}),
        ("get", "/predict", {}),
        ("post", "/nothing", {"json": {}}),
    ]
    seen: dict[str, list[tuple[int, Any]]] = {}
    for kind, settings in (
        ("short", load_settings(environ={})),
        ("full", load_settings(overrides={"cors_origins": ["http://ui.example"]}, environ={})),
    ):
        app = build_app(make_service(), settings)
        assert {"/predict", "/not_an_array", "/mlflow_says_no"} <= set(app.posts)
        caplog.clear()
        answers = []
        async with asgi_client(app) as client:
            for method, path, kwargs in requests:
                response = await getattr(client, method)(path, **kwargs)
                body = response.json()
                if isinstance(body, dict):
                    body.pop("error_id", None)
                    body["detail"] = str(body.get("detail", ""))[:30]
                answers.append((response.status_code, body))
            metrics = (await client.get("/metrics")).text
        access = [r.access for r in caplog.records if r.name == "tiffin.access"]  # type: ignore[attr-defined]
        assert [(a["method"], a["path"], a["status"]) for a in access[: len(requests)]] == [
            (m.upper(), p, status) for (m, p, _), (status, _) in zip(requests, answers, strict=True)
        ]
        assert any("error_id" in a for a in access)  # the 500's id reaches the access log
        counted = 'tiffin_http_requests_total{method="POST",route="/predict",status="400"} 1.0'
        assert counted in metrics
        seen[kind] = answers
    assert seen["short"] == seen["full"]
    assert [status for status, _ in seen["short"]] == [200, 400, 415, 500, 400, 405, 404]


async def test_an_mlflow_client_error_is_a_400_and_a_users_timeouterror_is_not_a_504(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with asgi_client(build_app(make_service())) as client:
        response = await client.post("/mlflow_says_no", json={})
        assert response.status_code == 400
        assert response.json() == {"error": "BAD_REQUEST", "detail": "column 'x' is missing"}
        response = await client.post("/user_timeout", content="hi")
        assert response.status_code == 500
        error_id = response.json()["error_id"]
    logged = [r for r in caplog.records if error_id in r.getMessage()]
    assert logged and "TimeoutError" in repr(logged[0].exc_info[1])  # type: ignore[index]


async def test_a_500_says_where_to_look_and_nothing_of_the_exception(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The exception's text (paths, data, secrets) is only in the log, under the error id."""
    svc = Service("leaky")

    @svc.api(input=JSON(), output=JSON())
    def predict(obj: Any) -> Any:
        raise RuntimeError("cannot open /srv/secret/weights.bin with password hunter2")

    @svc.api(input=JSON(), output=NumpyNdarray())
    def bad_output(obj: Any) -> Any:
        return {"token": "hunter2"}

    async with asgi_client(build_app(svc)) as client:
        answers = [await client.post(path, json={}) for path in ("/predict", "/bad_output")]
    for response, code in zip(answers, ("INTERNAL_ERROR", "INVALID_OUTPUT"), strict=True):
        body = response.json()
        assert response.status_code == 500 and body["error"] == code
        assert set(body) == {"error", "detail", "error_id"}
        assert "hunter2" not in response.text and "/srv/secret" not in response.text
        assert body["detail"].endswith(f"; see the server log for error_id={body['error_id']}")
        logged = [r for r in caplog.records if body["error_id"] in r.getMessage()]
        assert logged and logged[0].exc_info is not None


async def test_the_body_limit_applies_before_decoding() -> None:
    settings = load_settings(overrides={"max_body_size": 10}, environ={})
    async with asgi_client(build_app(make_service(), settings)) as client:
        response = await client.post("/predict", json=[1.0, 2.0, 3.0, 4.0])
        assert response.status_code == 413
        assert response.json()["error"] == "PAYLOAD_TOO_LARGE"
        assert (await client.post("/predict", json=[1])).json() == [1.0]


async def test_settings_reach_the_runners_and_apis() -> None:
    svc = make_service()
    settings = load_settings(
        overrides={"runners": {"echo": {"max_batch_size": 7, "max_latency_ms": 123}},
                   "apis": {"predict": {"timeout_s": 3}}},
        environ={},
    )  # fmt: skip
    app = build_app(svc, settings)
    config = svc.runners[0].predict.settings
    assert (config.max_batch_size, config.max_latency_ms) == (7, 123)
    assert app.state.tiffin.api_timeout("predict") == 3
    assert app.state.tiffin.api_timeout("not_an_array") == 60
    upper = load_settings(environ={"TIFFIN_APIS__PREDICT__TIMEOUT_S": "4"})
    assert build_app(make_service(), upper).state.tiffin.api_timeout("predict") == 4


def test_settings_for_runners_or_apis_the_service_lacks_are_errors() -> None:
    with pytest.raises(InvalidArgument, match="runner 'ech0'"):
        build_app(make_service(), load_settings(overrides={"runners": {"ech0": {}}}, environ={}))
    with pytest.raises(InvalidArgument, match=r"API\(s\) \['predic'\]"):
        build_app(make_service(), load_settings(overrides={"apis": {"predic": {}}}, environ={}))


async def test_metrics_before_and_after_traffic() -> None:
    async with asgi_client(build_app(make_service())) as client:
        text = (await client.get("/metrics")).text
        assert 'route="/predict"' not in text
        assert "# TYPE tiffin_runner_batch_size histogram" in text
        await client.post("/predict", json=[1, 2])
        await client.get("/no-such-route")
        text = (await client.get("/metrics")).text
    assert 'tiffin_http_requests_total{method="POST",route="/predict",status="200"} 1.0' in text
    assert 'tiffin_http_requests_total{method="GET",route="<other>",status="404"} 1.0' in text
    assert 'tiffin_runner_batch_size_count{method="predict",runner="echo"} 1.0' in text
    assert 'tiffin_runner_rows_total{method="predict",runner="echo"} 2.0' in text


async def test_openapi_document_covers_every_descriptor() -> None:
    svc = Service("kinds")
    descriptors = {
        "json_api": JSON(),
        "text_api": Text(),
        "frame_api": PandasDataFrame(orient="records", columns=["a", "b"]),
        "file_api": File(),
        "array_api": NumpyNdarray(dtype="int64", shape=[-1, 3], enforce_shape=True),
        "form_api": Multipart(arr=NumpyNdarray(), note=Text()),
    }
    for name, descriptor in descriptors.items():
        svc.api(input=descriptor, output=JSON(), name=name)(lambda x: x)
    spec = openapi_spec(svc)
    assert spec["openapi"] == "3.1.0"
    operations = [op for path in spec["paths"].values() for op in path.values()]
    assert len({op.get("operationId") for op in operations if "operationId" in op}) == 6
    for name, descriptor in descriptors.items():
        post = spec["paths"][f"/{name}"]["post"]
        content = post["requestBody"]["content"]
        assert set(content) == set(descriptor.request_media_types)
        assert post["x-tiffin-io"]["input"]["type"] == type(descriptor).__name__
        for status in ("400", "413", "415", "500", "503", "504"):
            ref = post["responses"][status]["content"]["application/json"]["schema"]["$ref"]
            assert ref == "#/components/schemas/Error"
    array = spec["paths"]["/array_api"]["post"]["requestBody"]["content"]["application/json"]
    assert array["schema"]["items"]["items"] == {"type": "integer"}
    assert array["schema"]["items"]["maxItems"] == 3
    json.dumps(spec)  # plain JSON all the way down
    async with asgi_client(build_app(svc)) as client:
        assert (await client.get("/docs.json")).json() == json.loads(json.dumps(spec))


def test_json_log_lines() -> None:
    record = logging.LogRecord("tiffin.access", logging.INFO, __file__, 1, "%s", ("x",), None)
    record.access = {"method": "GET", "path": "/livez", "status": 200}
    line = json.loads(JSONFormatter().format(record))
    assert line["logger"] == "tiffin.access" and line["level"] == "info"
    assert line["path"] == "/livez" and "message" not in line
    try:
        raise ValueError("oops")
    except ValueError:
        import sys

        record = logging.LogRecord("tiffin.server", logging.ERROR, __file__, 1, "boom %s", ("id",),
                                   sys.exc_info())
    line = json.loads(JSONFormatter().format(record))
    assert line["message"] == "boom id"
    assert "ValueError: oops" in line["exc_info"]


def test_log_times_formatted_once_a_second_read_as_loggings_own() -> None:
    from tiffin.process.logs import TextFormatter as _Formatter

    ours = _Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    stdlib = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    for created in (1764150000.123, 1764150000.987, 1764150001.5, 1764150001.5, 1764150061.0):
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", None, None)
        record.created = created
        record.msecs = (created - int(created)) * 1000 // 1
        assert ours.format(record) == stdlib.format(record)
        for datefmt in ("%H:%M:%S", "%Y-%m-%dT%H:%M:%S"):
            assert ours.formatTime(record, datefmt) == stdlib.formatTime(record, datefmt)
