"""``tiffin serve`` end to end: one real server process per module, on a free loopback port,
talked to over HTTP; bad input of every kind, health, metrics, docs, settings and hooks."""

from __future__ import annotations

import asyncio
import io
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.test_serving_support import ServerProcess, server_env, start_tiffin, wait_until

pytestmark = pytest.mark.slow

SERVICE = '''
import asyncio
import logging
import os
import time

import numpy as np

import tiffin
from tiffin.io import JSON, NumpyNdarray

log = logging.getLogger("e2e")
# E2E_HOLD=<dir>: the test decides when things happen, by creating files in <dir>
HOLD = os.environ.get("E2E_HOLD")


def hold(name):
    """Say so in HOLD/<name>-held, then wait for HOLD/<name>-go."""
    open(os.path.join(HOLD, f"{name}-held"), "a").close()
    deadline = time.monotonic() + 120
    while not os.path.exists(os.path.join(HOLD, f"{name}-go")):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} was never let go")
        time.sleep(0.01)


class Doubler(tiffin.Runnable):
    def __init__(self):
        if HOLD:
            hold("load")  # a model that takes a moment to load: until the test says so
        log.warning("doubler loaded")

    @tiffin.Runnable.method(batchable=True)
    def predict(self, x):
        if (x < 0).any():
            raise ValueError("negative values break this model")
        if HOLD and (x == 4242).any():
            hold("doubler")  # a batch that lasts until the test says so
        time.sleep(0.005)
        return x * 2


class Sleeper(tiffin.Runnable):
    @tiffin.Runnable.method(batchable=True)
    def predict(self, x):
        if HOLD and (x < 0).any():
            hold("sleeper")  # a batch that lasts until the test says so
        else:
            time.sleep(float(x.max()))
        return x


doubler = tiffin.Runner(Doubler, name="doubler")
sleeper = tiffin.Runner(Sleeper, name="sleeper")
svc = tiffin.Service("e2e", runners=[doubler, sleeper])


@svc.on_startup
def started():
    log.warning("startup hook ran; doubler initialised: %s", doubler.backend is not None)


@svc.on_shutdown
async def stopped():
    log.warning("shutdown hook ran")


@svc.api(
    input=NumpyNdarray(dtype="float32", shape=[-1, 2], enforce_dtype=True, enforce_shape=True),
    output=NumpyNdarray(),
)
def double(arr):
    """Twice the input, through the batching runner (a sync API, as on the page)."""
    return doubler.predict.run(arr)


@svc.api(input=NumpyNdarray(dtype="float32"), output=NumpyNdarray(), route="/v1/twice",
         name="twice")
async def twice_async(arr):
    return await doubler.predict.async_run(arr)


@svc.api(input=JSON(), output=JSON())
def fail(obj):
    raise RuntimeError("the user function broke")


@svc.api(input=JSON(), output=JSON())
async def nap(obj):
    await asyncio.sleep(obj["seconds"])
    return obj


@svc.api(input=JSON(), output=JSON())
def slow_sync(obj):
    time.sleep(obj["seconds"])
    return obj


@svc.api(input=NumpyNdarray(dtype="float64"), output=NumpyNdarray())
async def busy(arr):
    return await sleeper.predict.async_run(arr)
'''

CONFIG = """
api_timeout_s: 1.5
log_format: json
runners:
  sleeper:
    max_latency_ms: 100
  doubler:
    max_latency_ms: 600000
apis:
  twice:
    timeout_s: 600
  busy:
    timeout_s: 600
"""


def _wait_for(path: Path, what: str, timeout: float = 60) -> None:
    """Until ``path`` exists (a generous bound: a slow machine is no failure)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{what}: no {path.name} within {timeout} s"
        time.sleep(0.01)


async def _until(condition: Any, what: str, timeout: float = 60) -> None:
    """Until ``condition()`` is true, letting the event loop's requests go on meanwhile."""
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.01)


async def _exists(path: Path) -> bool:
    return path.exists()


def _hold(server: ServerProcess) -> Path:
    """The module server's E2E_HOLD directory."""
    return server.log.parent / "hold"


def post_json(server: ServerProcess, route: str, body: Any, **kwargs: Any) -> httpx.Response:
    return httpx.post(server.url + route, content=json.dumps(body), timeout=10,
                      headers={"content-type": "application/json"}, **kwargs)


def assert_error(response: httpx.Response, status: int, *words: str) -> dict[str, Any]:
    """A JSON error body {"error", "detail"} with ``status`` whose detail has ``words``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) >= {"error", "detail"}, body
    for word in words:
        assert word in body["detail"], (word, body)
    return body


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``tiffin serve service.py:svc --config tiffin.yaml`` plus a TIFFIN_* variable and a
    CLI flag; records what /livez, /readyz and an API said while the runners loaded."""
    root = tmp_path_factory.mktemp("serve-e2e")
    (root / "service.py").write_text(SERVICE)
    (root / "tiffin.yaml").write_text(CONFIG)
    (root / "hold").mkdir()
    env = server_env(root / "home", TIFFIN_APIS__NAP__TIMEOUT_S="0.5", E2E_HOLD=str(root / "hold"))
    srv = start_tiffin(
        ["serve", "service.py:svc", "--config", "tiffin.yaml", "--max-body-size", "4096"],
        cwd=root, env=env, log=root / "server.log", ready="/livez",
    )  # fmt: skip
    try:
        _wait_for(root / "hold" / "load-held", "the doubler loading")
        srv.loading = {  # type: ignore[attr-defined]
            "readyz": httpx.get(srv.url + "/readyz").status_code,
            "healthz": httpx.get(srv.url + "/healthz").status_code,
            "api": httpx.post(srv.url + "/double", json=[[1, 2]]),
        }
        (root / "hold" / "load-go").touch()
        wait_until(srv, "/readyz", timeout=60)
        yield srv
    finally:
        srv.stop()


# -- the service works ---------------------------------------------------------------------


def test_sync_and_async_apis_answer_through_the_runner(server: ServerProcess) -> None:
    response = post_json(server, "/double", [[1, 2], [3, 4.5]])
    assert response.status_code == 200, response.text
    assert response.json() == [[2.0, 4.0], [6.0, 9.0]]
    response = post_json(server, "/v1/twice", [1, 2, 3])
    assert response.status_code == 200, response.text
    assert response.json() == [2.0, 4.0, 6.0]


def test_npy_in_and_npy_out(server: ServerProcess) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([[1.5, -0.5]], dtype=np.float32))
    response = httpx.post(
        server.url + "/double", content=buffer.getvalue(),
        headers={"content-type": "application/octet-stream",
                 "accept": "application/octet-stream"},
    )  # fmt: skip
    assert response.status_code == 500  # -0.5 is negative: this model raises
    np.save(buffer := io.BytesIO(), np.array([[1.5, 0.5]], dtype=np.float32))
    response = httpx.post(
        server.url + "/double", content=buffer.getvalue(),
        headers={"content-type": "application/octet-stream",
                 "accept": "application/octet-stream"},
    )  # fmt: skip
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    out = np.load(io.BytesIO(response.content))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[3.0, 1.0]])


def test_concurrent_calls_are_batched_and_each_gets_its_own_rows(server: ServerProcess) -> None:
    def figures(metrics: str) -> list[float]:
        """The doubler's calls, rows and batches so far (none before its first call: this
        test may be the module's first to call it)."""
        return [
            _sample(metrics, f"tiffin_runner_{name}_total", missing=0.0, runner="doubler")
            for name in ("calls", "rows", "batches")
        ]

    calls, rows, batches = figures(httpx.get(server.url + "/metrics").text)
    held = _hold(server)

    async def main() -> tuple[httpx.Response, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            # one call holds the model; 40 concurrent calls queue up behind it meanwhile
            first = asyncio.ensure_future(client.post("/v1/twice", json=[[4242, 0]]))
            await _until(lambda: _exists(held / "doubler-held"), "the first batch")
            rest = [
                asyncio.ensure_future(client.post("/v1/twice", json=[[i, i + 0.5]]))
                for i in range(40)
            ]

            async def queued() -> bool:
                metrics = (await client.get("/metrics")).text
                return figures(metrics)[1] >= rows + 41

            await _until(queued, "40 calls in the batching queue")
            (held / "doubler-go").touch()
            return await first, await asyncio.gather(*rest)

    first, responses = asyncio.run(main())
    assert first.status_code == 200 and first.json() == [[8484.0, 0.0]]
    assert [r.status_code for r in responses] == [200] * 40
    assert [r.json() for r in responses] == [[[2.0 * i, 2.0 * i + 1]] for i in range(40)]
    after = figures(httpx.get(server.url + "/metrics").text)
    assert after[:2] == [calls + 41, rows + 41]
    assert after[2] - batches == 2, "the 40 queued calls ran as one batch"


def test_readyz_was_503_while_the_runners_loaded_and_livez_answered(
    server: ServerProcess,
) -> None:
    loading = server.loading  # type: ignore[attr-defined]
    assert loading["readyz"] == 503
    assert loading["healthz"] == 503
    assert_error(loading["api"], 503, "loading")
    assert loading["api"].headers["retry-after"] == "1"
    assert httpx.get(server.url + "/readyz").status_code == 200
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/livez").text == "ok\n"


def test_runners_load_before_the_startup_hook(server: ServerProcess) -> None:
    logs = server.wait_for_log("startup hook ran")
    assert logs.index("doubler loaded") < logs.index("startup hook ran")
    assert "doubler initialised: True" in logs


# -- bad input, each over HTTP -------------------------------------------------------------


def test_malformed_json_is_400(server: ServerProcess) -> None:
    response = httpx.post(server.url + "/double", content=b"[[1, 2",
                          headers={"content-type": "application/json"})
    assert_error(response, 400, "not valid JSON")


def test_empty_body_is_400(server: ServerProcess) -> None:
    response = httpx.post(server.url + "/double", content=b"",
                          headers={"content-type": "application/json"})
    assert_error(response, 400, "empty")


def test_wrong_content_type_is_415(server: ServerProcess) -> None:
    response = httpx.post(server.url + "/double", content=b"1,2",
                          headers={"content-type": "text/csv"})
    body = assert_error(response, 415, "text/csv", "application/json")
    assert body["error"] == "UNSUPPORTED_MEDIA_TYPE"


def test_wrong_dtype_is_400_naming_both(server: ServerProcess) -> None:
    response = post_json(server, "/double", [["a", "b"]])
    assert_error(response, 400, "dtype <U1", "float32")


def test_wrong_shape_is_400_naming_both(server: ServerProcess) -> None:
    response = post_json(server, "/double", [[1, 2, 3]])
    assert_error(response, 400, "(1, 3)", "(-1, 2)")


def test_ragged_array_is_400(server: ServerProcess) -> None:
    response = post_json(server, "/double", [[1, 2], [3]])
    assert_error(response, 400, "ragged", "row [1] has 1 element")


def test_body_over_the_limit_is_413(server: ServerProcess) -> None:
    big = json.dumps([[1.0, 2.0]] * 600).encode()  # over the --max-body-size of 4096
    assert len(big) > 4096
    response = httpx.post(server.url + "/double", content=big,
                          headers={"content-type": "application/json"})
    assert_error(response, 413, "4096")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        for _ in range(10):
            yield big[:1000]

    response = httpx.post(server.url + "/double", content=chunks(),
                          headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "4096")
    assert post_json(server, "/double", [[1, 2]]).status_code == 200


def test_unknown_route_is_404_json(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/no/such/route")
    body = assert_error(response, 404, "/no/such/route", "POST /double")
    assert body["error"] == "NOT_FOUND"
    assert_error(httpx.post(server.url + "/predictt", json=[1]), 404)


def test_wrong_method_is_405_json(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/double")
    body = assert_error(response, 405, "GET", "POST")
    assert body["error"] == "METHOD_NOT_ALLOWED"
    assert response.headers["allow"] == "POST"
    assert_error(httpx.post(server.url + "/metrics"), 405)


def test_exception_in_the_api_function_is_500_with_a_logged_error_id(
    server: ServerProcess,
) -> None:
    response = post_json(server, "/fail", {"x": 1})
    body = assert_error(response, 500, "RuntimeError", body_id := response.json()["error_id"])
    assert body["error"] == "INTERNAL_ERROR"
    logs = server.wait_for_log(body_id)
    assert "the user function broke" in logs  # the traceback is in the log, not the body
    assert "the user function broke" not in response.text
    # the access log line of that request carries the id too
    logs = server.wait_for_log(f'"error_id":"{body_id}"')
    access = [json.loads(line) for line in logs.splitlines()
              if line.startswith("{") and '"logger":"tiffin.access"' in line]
    assert any(entry.get("error_id") == body_id and entry["status"] == 500 for entry in access)
    assert post_json(server, "/double", [[1, 2]]).status_code == 200


def test_exception_in_the_model_is_500_and_the_next_request_succeeds(
    server: ServerProcess,
) -> None:
    response = post_json(server, "/double", [[-1, 2]])
    body = assert_error(response, 500, "ValueError")
    assert "negative values break this model" in server.wait_for_log(body["error_id"])
    response = post_json(server, "/double", [[1, 2]])
    assert response.status_code == 200
    assert response.json() == [[2.0, 4.0]]


def test_request_past_its_timeout_is_504(server: ServerProcess) -> None:
    started = time.monotonic()
    response = post_json(server, "/nap", {"seconds": 30})  # apis.nap.timeout_s=0.5 (env)
    assert_error(response, 504, "0.5 s")
    assert time.monotonic() - started < 25  # before the 30 s nap would have ended
    response = post_json(server, "/slow_sync", {"seconds": 3})  # api_timeout_s=1.5 (file)
    assert_error(response, 504, "1.5 s")
    assert post_json(server, "/nap", {"seconds": 0}).status_code == 200


def test_overload_past_max_latency_is_503_with_retry_after(server: ServerProcess) -> None:
    held = _hold(server)

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            first = asyncio.ensure_future(client.post("/busy", json=[-1.0]))
            # the first batch runs (until the test lets it go) before the others come
            await _until(lambda: _exists(held / "sleeper-held"), "the first batch")
            rest = await asyncio.gather(*(client.post("/busy", json=[0.01]) for _ in range(5)))
            (held / "sleeper-go").touch()
            return [await first, *rest]

    responses = asyncio.run(main())
    assert responses[0].status_code == 200
    for response in responses[1:]:  # queued behind it past max_latency_ms=100
        body = assert_error(response, 503, "max_latency_ms")
        assert body["error"] == "OVERLOADED"
        assert int(response.headers["retry-after"]) >= 1
    assert post_json(server, "/busy", [0.0]).status_code == 200


def test_every_error_body_is_json(server: ServerProcess) -> None:
    cases = [
        httpx.post(server.url + "/double", content=b"{", headers={"content-type": "x/y"}),
        httpx.put(server.url + "/double"),
        httpx.get(server.url + "/static/swagger-ui/nope.js"),
        httpx.post(server.url + "/double", content=b"[[1,2]]",
                   headers={"content-type": "application/json; charset=latin-1"}),
    ]
    for response in cases:
        assert response.status_code >= 400
        assert set(response.json()) >= {"error", "detail"}, response.text


# -- health, metrics, docs, logs -----------------------------------------------------------


def _sample(metrics: str, name: str, *, missing: float | None = None, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (``missing`` when
    there are none yet, if given; else there must be some)."""
    total, found = 0.0, False
    for line in metrics.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
            found = True
    if not found and missing is not None:
        return missing
    assert found, f"no sample {name} {labels} in:\n{metrics}"
    return total


def test_metrics_count_requests_by_route_and_status_and_show_the_batcher(
    server: ServerProcess,
) -> None:
    before = httpx.get(server.url + "/metrics").text
    # none yet where this test is the first of its worker's to call /double (xdist's order)
    ok_before = _sample(
        before, "tiffin_http_requests_total", missing=0.0, route="/double", status="200"
    )
    for _ in range(3):
        assert post_json(server, "/double", [[1, 2]]).status_code == 200
    assert post_json(server, "/double", [[1, 2, 3]]).status_code == 400
    response = httpx.get(server.url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    metrics = response.text
    assert _sample(metrics, "tiffin_http_requests_total", route="/double", status="200") == (
        ok_before + 3
    )
    assert _sample(metrics, "tiffin_http_requests_total", route="/double", status="400") >= 1
    assert _sample(metrics, "tiffin_http_request_duration_seconds_count", route="/double") >= 4
    assert _sample(metrics, "tiffin_http_request_duration_seconds_bucket", route="/double",
                   le="+Inf") >= 4
    for family in ("tiffin_runner_batch_size", "tiffin_runner_queue_wait_seconds",
                   "tiffin_runner_batch_run_seconds"):
        assert _sample(metrics, family + "_count", runner="doubler", method="predict") >= 3
    assert _sample(metrics, "tiffin_runner_rows_total", runner="doubler") >= 3


def test_docs_json_is_openapi_3_1_with_schemas_from_the_descriptors(
    server: ServerProcess,
) -> None:
    spec = httpx.get(server.url + "/docs.json").json()
    assert spec["openapi"] == "3.1.0"
    assert spec["info"]["title"] == "e2e"
    assert set(spec["paths"]) >= {"/double", "/v1/twice", "/fail", "/nap", "/busy",
                                  "/livez", "/readyz", "/metrics"}
    double = spec["paths"]["/double"]["post"]
    assert double["operationId"] == "double"
    assert double["summary"].startswith("Twice the input")
    schema = double["requestBody"]["content"]["application/json"]["schema"]
    assert schema["type"] == "array"
    assert schema["items"]["maxItems"] == 2  # shape [-1, 2], enforced
    assert schema["items"]["items"] == {"type": "number"}
    assert "application/octet-stream" in double["requestBody"]["content"]
    assert {"400", "413", "415", "500", "503", "504"} <= set(double["responses"])
    assert spec["components"]["schemas"]["Error"]["required"] == ["error", "detail"]


def test_swagger_ui_page_uses_local_assets(server: ServerProcess) -> None:
    for path in ("/", "/docs"):
        page = httpx.get(server.url + path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "static/swagger-ui/swagger-ui-bundle.js" in page.text
        assert "docs.json" in page.text
        assert "http://" not in page.text and "https://" not in page.text
    bundle = httpx.get(server.url + "/static/swagger-ui/swagger-ui-bundle.js")
    assert bundle.status_code == 200
    assert len(bundle.content) > 100_000
    assert httpx.get(server.url + "/static/swagger-ui/swagger-ui.css").status_code == 200


def test_access_log_is_one_json_object_per_request(server: ServerProcess) -> None:
    assert post_json(server, "/v1/twice", [7]).status_code == 200
    logs = server.wait_for_log('"path":"/v1/twice"')
    entries = [json.loads(line) for line in logs.splitlines() if line.startswith("{")]
    access = [e for e in entries if e["logger"] == "tiffin.access" and e["path"] == "/v1/twice"]
    entry = access[-1]
    assert entry["method"] == "POST" and entry["status"] == 200
    assert entry["client"] == "127.0.0.1"
    assert isinstance(entry["duration_ms"], float)
    assert {"time", "level"} <= set(entry)


def test_shutdown_runs_the_hook_and_exits_cleanly(tmp_path: Path) -> None:
    (tmp_path / "service.py").write_text(SERVICE)
    srv = start_tiffin(["serve", "service.py:svc"], cwd=tmp_path,
                       env=server_env(tmp_path / "home"), log=tmp_path / "log")
    assert post_json(srv, "/double", [[1, 2]]).status_code == 200
    assert srv.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it handled
    logs = srv.logs()
    assert "shutdown hook ran" in logs
    assert "Traceback" not in logs
    assert "Task was destroyed" not in logs


# -- the page's "Build Prediction Service" section, as written ------------------------------

PAGE_SERVICE = '''
import tiffin
import mlflow
import torch

mnist_runner = tiffin.mlflow.get('mlflow_pytorch_mnist:latest').to_runner()

svc = tiffin.Service('mlflow_pytorch_mnist', runners=[ mnist_runner ])

input_spec = tiffin.io.NumpyNdarray(
    dtype="float32",
    shape=[-1, 1, 28, 28],
    enforce_shape=True,
    enforce_dtype=True,
)

@svc.api(input=input_spec, output=tiffin.io.NumpyNdarray())
def predict(input_arr):
    return mnist_runner.predict.run(input_arr)
'''


def test_the_pages_prediction_service_over_http(tmp_path: Path) -> None:
    """The page's service file, word for word with tiffin for bentoml, on an MNIST-shaped
    PyTorch model logged with MLflow and imported into the store."""
    import mlflow
    import torch

    from tiffin.frameworks import mlflow as tiffin_mlflow

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()
    images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    # MLflow 3 exports pt2 with the example's batch size baked in; pickle keeps it free
    mlflow.pytorch.save_model(model, str(tmp_path / "mnist"), input_example=images[:1],
                              serialization_format="pickle", pip_requirements=["torch"])
    from tests.test_serving_support import store_at

    tiffin_mlflow.import_model("mlflow_pytorch_mnist", tmp_path / "mnist",
                               store=store_at(tmp_path / "home"))
    (tmp_path / "service.py").write_text(PAGE_SERVICE)
    srv = start_tiffin(["serve", "service:svc"], cwd=tmp_path,
                       env=server_env(tmp_path / "home"), log=tmp_path / "log")
    try:
        response = post_json(srv, "/predict", images.tolist())
        assert response.status_code == 200, response.text
        with torch.no_grad():
            expected = model(torch.from_numpy(images)).numpy()
        np.testing.assert_allclose(np.array(response.json()), expected, rtol=1e-5, atol=1e-6)
        assert_error(post_json(srv, "/predict", images[0].tolist()), 400, "shape (1, 28, 28)")
        response = httpx.post(srv.url + "/invocations", json={"inputs": images.tolist()})
        assert response.status_code == 200, response.text
        np.testing.assert_allclose(np.array(response.json()["predictions"]), expected,
                                   rtol=1e-5, atol=1e-6)
    finally:
        srv.stop()


def test_a_service_whose_runner_cannot_load_exits_non_zero(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text(
        "import tiffin\n"
        "class Broken(tiffin.Runnable):\n"
        "    def __init__(self):\n"
        "        raise RuntimeError('weights are missing')\n"
        "    @tiffin.Runnable.method\n"
        "    def predict(self, x):\n"
        "        return x\n"
        "svc = tiffin.Service('broken', runners=[tiffin.Runner(Broken)])\n"
    )
    srv = start_tiffin(["serve", "broken.py:svc"], cwd=tmp_path, ready=None,
                       env=server_env(tmp_path / "home"), log=tmp_path / "log")
    try:
        assert srv.proc.wait(timeout=90) == 1
    finally:
        srv.stop()
    assert "tiffin: error: the service failed to start: RuntimeError: weights are missing" in (
        srv.logs()
    )


def test_reload_serves_the_edited_file(tmp_path: Path) -> None:
    source = (
        "import tiffin\nfrom tiffin.io import JSON\nsvc = tiffin.Service('live')\n"
        "@svc.api(input=JSON(), output=JSON())\ndef app_version(x):\n    return {VERSION}\n"
    )
    work = tmp_path / "work"  # the watched tree: the server's own log stays outside it
    (work / "app").mkdir(parents=True)
    path = work / "app" / "live.py"
    path.write_text(source.replace("{VERSION}", "1"))
    srv = start_tiffin(["serve", "app/live.py:svc", "--reload"], cwd=work,
                       env=server_env(tmp_path / "home"), log=tmp_path / "log")
    try:
        assert post_json(srv, "/app_version", {}).json() == 1
        # a different length as well as content: Python trusts a .pyc whose source has the same
        # size and mtime second, and this edit comes within a second of the first write
        edited = source.replace("{VERSION}", "22")
        deadline = time.monotonic() + 60
        next_write = 0.0
        while time.monotonic() < deadline:
            # uvicorn's watcher may not be watching yet when the server first answers: an
            # edit made before it is missed, so write again (same text) every second
            if time.monotonic() >= next_write:
                path.write_text(edited)
                next_write = time.monotonic() + 1.0
            try:
                if post_json(srv, "/app_version", {}).json() == 22:
                    break
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.2)
        else:
            raise AssertionError("the edit was not served:\n" + srv.logs()[-2000:])
    finally:
        srv.stop()
