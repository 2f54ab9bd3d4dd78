"""The one request pipeline (tiffin.serving.pipeline) of the APIs and /invocations: the same
answers whatever middleware is configured and whichever way a request arrives (the app's short
path or Starlette's router), and each step's rule on its own (in process)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
from starlette.applications import Starlette

import tiffin
from tests.test_serving_support import IRIS_COLUMNS, save_iris_model, store_at
from tiffin.config import ServeSettings, load_settings
from tiffin.exceptions import InvalidArgument, Overloaded, RunnerError
from tiffin.io import JSON, Text
from tiffin.io.base import OFFLOAD_BYTES
from tiffin.serving.app import build_app
from tiffin.serving.errors import error_response, mlflow_error_response
from tiffin.serving.pipeline import InFlight, pipeline

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:X (has|does not have valid) feature names:UserWarning"),
]

JSON_TYPE = "application/json"
ORIGIN = "https://ui.example"
CONFIGS = {
    "none": {},
    "auth": {"api_key": "k3y"},
    "cors": {"cors_origins": [ORIGIN]},
    "auth+cors": {"api_key": "k3y", "cors_origins": [ORIGIN]},
}


@pytest.fixture(scope="module")
def mlflow_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tiffin.frameworks import mlflow as tiffin_mlflow

    root: Path = tmp_path_factory.mktemp("pipeline")
    return tiffin_mlflow.import_model(
        "iris", save_iris_model(root / "iris"), store=store_at(root / "home"),
        signatures={"predict": {"batchable": True}},
    )  # fmt: skip


def make_service(model: Any) -> tiffin.Service:
    runner = model.to_runner()
    svc = tiffin.Service("piped", runners=[runner])

    @svc.api(input=JSON(), output=JSON())
    async def rows(value: Any) -> Any:
        if value == "overload":
            raise Overloaded("the queue is full", retry_after=2.4)
        if value == "fail":
            raise RuntimeError("the model broke")
        return (await runner.predict.async_run(np.asarray(value))).tolist()

    @svc.api(input=JSON(), output=JSON())
    async def slow(value: Any) -> Any:
        await asyncio.sleep(30)  # past its deadline

    return svc


def split(rows: Any) -> dict[str, Any]:
    return {"dataframe_split": {"columns": IRIS_COLUMNS, "data": rows}}


ROW = [5.1, 3.5, 1.4, 0.2]
REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/rows", {"json": [ROW]}),
    ("/rows", {"content": b"[[1, 2", "headers": {"content-type": JSON_TYPE}}),
    ("/rows", {"content": b"1,2", "headers": {"content-type": "text/csv"}}),
    ("/rows", {"content": b"[" + b"1," * 3000 + b"1]", "headers": {"content-type": JSON_TYPE}}),
    ("/rows", {"json": "fail"}),
    ("/rows", {"json": "overload"}),
    ("/slow", {"json": 1}),
    ("/invocations", {"json": split([ROW])}),
    ("/invocations", {"content": b"{", "headers": {"content-type": JSON_TYPE}}),
    ("/invocations", {"content": b"x", "headers": {"content-type": "text/plain"}}),
    ("/invocations", {"json": split([ROW]), "headers": {"content-type": "application/json; x=1"}}),
    ("/invocations", {"json": {"dataframe_records": [{"a": 1}]}}),
    ("/invocations", {"json": split([ROW] * 400)}),
]
_ID = re.compile(r"[0-9a-f]{16}")


@contextlib.asynccontextmanager
async def clients(
    config: str, model: Any
) -> AsyncIterator[tuple[Any, httpx.AsyncClient, httpx.AsyncClient]]:
    """The app, a client on it, and a client on the same app through Starlette's router."""
    settings = load_settings(overrides={"max_body_size": 4096, "apis": {"slow": {"timeout_s": 0.2}},
                                        **CONFIGS[config]}, environ={})  # fmt: skip
    app = build_app(make_service(model), settings)

    async def via_router(scope: Any, receive: Any, send: Any) -> None:
        await Starlette.__call__(app, scope, receive, send)

    async with app.router.lifespan_context(app):
        while not (app.state.tiffin.ready or app.state.tiffin.load_error):
            await asyncio.sleep(0.005)
        assert app.state.tiffin.ready, app.state.tiffin.load_error
        async with (
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as a,
            httpx.AsyncClient(transport=httpx.ASGITransport(app=via_router),
                              base_url="http://t") as b,
        ):  # fmt: skip
            yield app, a, b


async def answers(client: httpx.AsyncClient, config: str, caplog: Any) -> list[Any]:
    headers = {}
    if "auth" in config:
        headers["Authorization"] = "Bearer k3y"
    if "cors" in config:
        headers["Origin"] = ORIGIN
    seen = []
    for path, kwargs in REQUESTS:
        caplog.clear()
        sent = {**kwargs, "headers": {**kwargs.get("headers", {}), **headers}}
        response = await client.post(path, **sent)
        assert (response.headers.get("access-control-allow-origin") == ORIGIN) == (
            "cors" in config
        ), path
        access = [r.access for r in caplog.records if r.name == "tiffin.access"]
        [line] = access
        line = {k: _ID.sub("ID", str(v)) for k, v in line.items() if k != "duration_ms"}
        seen.append(
            (
                response.status_code,
                response.headers.get("retry-after"),
                response.headers["content-type"],
                _ID.sub("ID", response.text),
                line,
            )
        )
    return seen


_reference: dict[str, list[Any]] = {}


@pytest.mark.parametrize("config", list(CONFIGS))
async def test_the_same_answers_whatever_the_middleware_and_the_way_in(
    config: str, mlflow_model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with clients(config, mlflow_model) as (app, short, router):
        got = await answers(short, config, caplog)
        # auth and CORS are checks on the short path: Starlette's middleware stack never ran
        assert app.middleware_stack is None
        assert await answers(router, config, caplog) == got
        assert app.middleware_stack is not None
    if "none" not in _reference:
        async with clients("none", mlflow_model) as (_, short, _router):
            _reference["none"] = await answers(short, "none", caplog)
    assert got == _reference["none"]
    statuses = [status for status, *_ in got]
    assert statuses == [200, 400, 415, 413, 500, 503, 504, 200, 400, 415, 415, 400, 413]
    assert got[5][1] == "2"  # Overloaded: Retry-After
    # a server-side failure's id reaches the access log (and only such a failure has one)
    assert [status for status, *_, line in got if "error_id" in line] == [500]


async def test_a_401_comes_before_cors_and_preflights_are_answered_and_logged(
    mlflow_model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with clients("auth+cors", mlflow_model) as (_app, short, _router):
        for path in ("/rows", "/invocations"):
            caplog.clear()
            response = await short.post(path, json=[ROW], headers={"Origin": ORIGIN})
            assert response.status_code == 401
            assert "access-control-allow-origin" not in response.headers
            preflight = await short.options(path, headers={
                "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})  # fmt: skip
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == ORIGIN
            access = [r.access for r in caplog.records if r.name == "tiffin.access"]
            assert [(a["method"], a["path"], a["status"]) for a in access] == [
                ("POST", path, 401), ("OPTIONS", path, 200)]  # fmt: skip


# -- the steps, one by one -------------------------------------------------------------------


def _state(ready: bool = True, limit: int = 100, **settings: Any) -> Any:
    return SimpleNamespace(
        ready=ready, settings=ServeSettings(max_body_size=limit, **settings), in_flight=InFlight()
    )


def _scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": "/x", "headers": list(headers)}


def _receive(*chunks: bytes) -> Any:
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]  # fmt: skip
    read: list[int] = []

    async def receive() -> dict[str, Any]:
        read.append(1)
        return messages.pop(0)

    receive.read = read  # type: ignore[attr-defined]
    return receive


def _pipe(state: Any = None, **kwargs: Any) -> Any:
    async def call(value: Any) -> Any:
        return value

    options: dict[str, Any] = {
        "where": "API 'x'", "decode": lambda body, content_type: body.decode(), "call": call,
        "encode": Text().to_response, "timeout": 5.0,
        "not_ready": lambda: Text().to_response("not ready", 503), "errors": error_response,
    }  # fmt: skip
    options.update(kwargs)
    return pipeline(state or _state(), **options)


async def test_not_ready_and_a_refused_content_type_answer_before_the_body_is_read() -> None:
    receive = _receive(b"hello")
    response = await _pipe(_state(ready=False))(_scope(), receive)
    assert (response.status_code, response.body) == (503, b"not ready")
    seen: list[Any] = []

    def check(content_type: str | None) -> Any:
        seen.append(content_type)
        return Text().to_response("refused", 415) if content_type != "text/ok" else "text/fine"

    response = await _pipe(check=check)(_scope((b"content-type", b"text/no")), receive)
    assert response.status_code == 415
    assert receive.read == []  # type: ignore[attr-defined]
    decoded: list[Any] = []
    pipe = _pipe(check=check, decode=lambda body, ct: decoded.append((body, ct)) or "ok")
    response = await pipe(_scope((b"content-type", b"text/ok")), receive)
    assert response.status_code == 200 and decoded == [(b"hello", "text/fine")]
    assert seen == ["text/no", "text/ok"]


async def test_the_body_limit_by_header_and_by_count() -> None:
    pipe = _pipe(_state(limit=10))
    declared = await pipe(_scope((b"content-length", b"11")), _receive(b"x" * 11))
    assert declared.status_code == 413 and b"of 11 bytes" in declared.body
    streamed = await pipe(_scope(), _receive(b"x" * 6, b"x" * 6))
    assert streamed.status_code == 413 and b"request body is over" in streamed.body
    bad = await pipe(_scope((b"content-length", b"1x")), _receive(b"x"))
    assert bad.status_code == 400 and b"invalid Content-Length" in bad.body
    ok = await pipe(_scope((b"content-length", b"10")), _receive(b"x" * 4, b"y" * 6))
    assert (ok.status_code, ok.body) == (200, b"xxxxyyyyyy")


async def test_large_bodies_decode_in_a_worker_thread_small_ones_inline() -> None:
    threads: list[str] = []

    def decode(body: bytes, content_type: str | None) -> int:
        threads.append(threading.current_thread().name)
        return len(body)

    pipe = _pipe(_state(limit=OFFLOAD_BYTES), decode=decode, encode=JSON().to_response)
    small = await pipe(_scope(), _receive(b"x" * (OFFLOAD_BYTES - 1)))
    large = await pipe(_scope(), _receive(b"x" * OFFLOAD_BYTES))
    assert small.body == str(OFFLOAD_BYTES - 1).encode()
    assert large.body == str(OFFLOAD_BYTES).encode()
    assert threads[0] == threading.current_thread().name != threads[1]


async def test_the_deadline_is_a_504_and_the_calls_own_timeouterror_is_not() -> None:
    async def slow(value: Any) -> Any:
        await asyncio.sleep(30)

    async def own(value: Any) -> Any:
        raise TimeoutError("the database did not answer")

    for errors, expected in ((error_response, b'"TIMEOUT"'), (_mlflow_shape, b"DEADLINE_EXCEEDED")):
        response = await _pipe(call=slow, timeout=0.05, errors=errors)(_scope(), _receive(b""))
        assert response.status_code == 504 and expected in response.body
        response = await _pipe(call=own, errors=errors)(_scope(), _receive(b""))
        assert response.status_code in (400, 500) and b"error_id" in response.body


def _mlflow_shape(exc: BaseException, *, where: str, scope: Any) -> Any:
    from mlflow.exceptions import MlflowException

    return mlflow_error_response(exc, where=where, scope=scope, mlflow_exception=MlflowException)


def _mlflow_exception() -> BaseException:
    from mlflow.exceptions import MlflowException

    return MlflowException.invalid_parameter_value("column 'x' is missing")


@pytest.mark.parametrize(
    ("make", "tiffin_answer", "mlflow_answer"),
    [
        (lambda: InvalidArgument("no good"), (400, "BAD_REQUEST", False), (400, "BAD_REQUEST")),
        (
            lambda: Overloaded("full", retry_after=0.2),
            (503, "OVERLOADED", False),
            (503, "TEMPORARILY_UNAVAILABLE"),
        ),
        (lambda: RunnerError("died"), (500, "INTERNAL_ERROR", True), (500, "INTERNAL_ERROR")),
        (lambda: ValueError("boom"), (500, "INTERNAL_ERROR", True), (400, "BAD_REQUEST")),
        (lambda: b"\xff".decode(), (500, "INTERNAL_ERROR", True), (400, "BAD_REQUEST")),
        (_mlflow_exception, (400, "BAD_REQUEST", False), (400, "INVALID_PARAMETER_VALUE")),
    ],
)
async def test_each_error_in_each_shape(
    make: Any, tiffin_answer: tuple[int, str, bool], mlflow_answer: tuple[int, str]
) -> None:
    def decode(body: bytes, content_type: str | None) -> Any:
        result = make()
        if isinstance(result, BaseException):
            raise result
        return result

    scope = _scope()
    response = await _pipe(decode=decode)(scope, _receive(b"x"))
    body = orjson.loads(response.body)
    status, code, logged = tiffin_answer
    assert (response.status_code, body["error"]) == (status, code)
    assert ("error_id" in body) == logged == ("tiffin.error_id" in scope)
    if status == 503:
        assert response.headers["retry-after"] == "1"
    response = await _pipe(decode=decode, errors=_mlflow_shape)(_scope(), _receive(b"x"))
    body = orjson.loads(response.body)
    assert set(body) == {"error_code", "message"}
    assert (response.status_code, body["error_code"]) == mlflow_answer
    if mlflow_answer[0] == 503:
        assert response.headers["retry-after"] == "1"


# -- decode limits, the offload threshold, the deadline from the headers, capacity -------------


async def test_the_settings_decode_limits_reach_the_decode_inline_and_in_its_thread() -> None:
    """Set for each request from the settings, seen by an inline decode and by one in the
    worker thread (a large body), and reset when the request is done."""
    from tiffin.io.limits import DECODE_LIMITS, DecodeLimits

    seen: list[tuple[Any, str]] = []

    def decode(body: bytes, content_type: str | None) -> int:
        seen.append((DECODE_LIMITS.get(), threading.current_thread().name))
        return len(body)

    state = _state(limit=1 << 20, max_decoded_cells=123, max_columns=7, max_image_pixels=99)
    pipe = _pipe(state, decode=decode, encode=JSON().to_response)
    assert (await pipe(_scope(), _receive(b"x"))).status_code == 200
    assert (await pipe(_scope(), _receive(b"x" * (1 << 19)))).status_code == 200
    expected = DecodeLimits(max_decoded_cells=123, max_columns=7, max_image_pixels=99)
    (inline, here), (offloaded, there) = seen
    assert inline == offloaded == expected
    assert here == threading.current_thread().name != there
    assert DECODE_LIMITS.get() is None  # not left behind in the caller's context


async def test_bodies_from_256_kib_decode_in_a_worker_thread() -> None:
    threads: list[str] = []

    def decode(body: bytes, content_type: str | None) -> int:
        threads.append(threading.current_thread().name)
        return len(body)

    pipe = _pipe(_state(limit=1 << 20), decode=decode, encode=JSON().to_response)
    await pipe(_scope(), _receive(b"x" * (256 * 1024 - 1)))
    await pipe(_scope(), _receive(b"x" * (256 * 1024)))
    assert OFFLOAD_BYTES == 256 * 1024
    assert threads[0] == threading.current_thread().name != threads[1]


async def test_a_body_too_large_once_decoded_names_the_setting_in_both_shapes() -> None:
    from tiffin.exceptions import DecodedTooLarge

    def decode(body: bytes, content_type: str | None) -> Any:
        raise DecodedTooLarge("the table has 60,000 columns, over max_columns=10,000",
                              setting="max_columns")  # fmt: skip

    response = await _pipe(decode=decode)(_scope(), _receive(b"x"))
    assert response.status_code == 413
    assert orjson.loads(response.body) == {
        "error": "PAYLOAD_TOO_LARGE", "setting": "max_columns",
        "detail": "the table has 60,000 columns, over max_columns=10,000",
    }  # fmt: skip
    response = await _pipe(decode=decode, errors=_mlflow_shape)(_scope(), _receive(b"x"))
    body = orjson.loads(response.body)
    assert response.status_code == 413 and "max_columns" in body["message"]


async def test_the_deadline_counts_from_the_headers_and_covers_reading_the_body() -> None:
    """A body that never finishes arriving is a 504 at the timeout, in both shapes."""

    async def trickle() -> dict[str, Any]:
        await asyncio.sleep(0.01)
        return {"type": "http.request", "body": b"x", "more_body": True}

    for errors, code in ((error_response, b'"TIMEOUT"'), (_mlflow_shape, b"DEADLINE_EXCEEDED")):
        pipe = _pipe(_state(limit=1 << 20), timeout=0.2, errors=errors)
        started = asyncio.get_running_loop().time()
        response = await asyncio.wait_for(pipe(_scope(), trickle), 5)
        assert response.status_code == 504 and code in response.body
        assert 0.2 <= asyncio.get_running_loop().time() - started < 2


async def test_the_deadline_covers_a_slow_decode_too() -> None:
    release = threading.Event()

    def decode(body: bytes, content_type: str | None) -> Any:
        release.wait(5)  # a large body's decode, in its thread
        return 1

    pipe = _pipe(_state(limit=1 << 20), decode=decode, timeout=0.2)
    try:
        response = await asyncio.wait_for(pipe(_scope(), _receive(b"x" * OFFLOAD_BYTES)), 4)
    finally:
        release.set()
    assert response.status_code == 504


async def test_a_blocking_call_gets_the_request_deadline() -> None:
    import time

    from tiffin.runner.runner import REQUEST_DEADLINE

    seen: list[Any] = []

    async def call(value: Any) -> Any:
        seen.append(REQUEST_DEADLINE.get())
        return "ok"

    before = time.monotonic()
    await _pipe(call=call, timeout=3.0, blocking=True)(_scope(), _receive(b"x"))
    await _pipe(call=call, timeout=3.0)(_scope(), _receive(b"x"))
    blocking, not_blocking = seen
    assert before + 3.0 <= blocking <= time.monotonic() + 3.0
    assert not_blocking is None and REQUEST_DEADLINE.get() is None


async def test_past_max_concurrent_requests_a_503_at_once_before_the_body_is_read() -> None:
    release = asyncio.Event()

    async def call(value: Any) -> Any:
        await release.wait()
        return value

    shapes = ((error_response, "OVERLOADED"), (_mlflow_shape, "TEMPORARILY_UNAVAILABLE"))
    for errors, code in shapes:
        state = _state(max_concurrent_requests=2)
        pipe = _pipe(state, call=call, errors=errors)
        held = [asyncio.ensure_future(pipe(_scope(), _receive(b"held"))) for _ in range(2)]
        await asyncio.sleep(0.05)
        unread = _receive(b"more")
        refused = await asyncio.wait_for(pipe(_scope(), unread), 1)
        assert refused.status_code == 503 and unread.read == []  # type: ignore[attr-defined]
        assert refused.headers["retry-after"] == "1"
        body = orjson.loads(refused.body)
        assert code in (body.get("error"), body.get("error_code"))
        assert "max_concurrent_requests" in (body.get("detail") or body.get("message"))
        release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert state.in_flight.count == 0
        assert (await pipe(_scope(), _receive(b"again"))).body == b"again"
        release.clear()


async def test_a_restarting_runner_is_a_503_with_retry_after_in_both_shapes() -> None:
    from tiffin.exceptions import RunnerUnavailable

    async def call(value: Any) -> Any:
        raise RunnerUnavailable("runner 'iris' is restarting")

    response = await _pipe(call=call)(_scope(), _receive(b"x"))
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert orjson.loads(response.body)["error"] == "RUNNER_UNAVAILABLE"
    response = await _pipe(call=call, errors=_mlflow_shape)(_scope(), _receive(b"x"))
    assert response.status_code == 503 and response.headers["retry-after"] == "1"
    assert orjson.loads(response.body)["error_code"] == "TEMPORARILY_UNAVAILABLE"


async def test_a_server_side_failure_keeps_its_text_in_the_log_in_both_shapes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 500, or a model that raised on /invocations: the class and the error id, never the
    exception's text (paths, data, secrets), which the log has under that id."""

    async def call(value: Any) -> Any:
        raise ValueError("cannot read /srv/secret/features.db as admin:hunter2")

    async def fails(value: Any) -> Any:
        raise RunnerError("the runner failed: hunter2 leaked")

    for failing in (call, fails):
        for errors in (error_response, _mlflow_shape):
            response = await _pipe(call=failing, errors=errors)(_scope(), _receive(b"x"))
            body = orjson.loads(response.body)
            assert response.status_code in (400, 500)
            assert b"hunter2" not in response.body and b"/srv/secret" not in response.body
            error_id = _ID.search(body.get("detail") or body["message"]).group(0)  # type: ignore[union-attr]
            logged = [r for r in caplog.records if error_id in r.getMessage()]
            assert logged and "hunter2" in repr(logged[0].exc_info[1])  # type: ignore[index]
