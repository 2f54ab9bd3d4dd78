"""Every wait bounded, overload answered: a sync API whose model hangs answers 504 at its
timeout and leaves the server answering; a runner process that restarts is a 503 to come back
to (Retry-After) on the APIs and on /invocations (in process); a body that trickles in is a
504 at the timeout and requests past ``max_concurrent_requests`` a 503 at once (a real server
and raw sockets)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

import tiffin
from tests.test_serving_support import (
    asgi_client,
    running,
    save_iris_model,
    server_env,
    start_tiffin,
    store_at,
)
from tiffin.config import load_settings
from tiffin.exceptions import RunnerUnavailable
from tiffin.io import JSON
from tiffin.serving.app import build_app
from tiffin.serving.model_service import build_service

pytestmark = pytest.mark.filterwarnings(
    "ignore:X (has|does not have valid) feature names:UserWarning"
)


class Hung(tiffin.Runnable):
    """A model that never answers until the test lets it."""

    release = threading.Event()

    @tiffin.Runnable.method(batchable=False)
    def predict(self, x: Any) -> Any:
        type(self).release.wait(30)
        return x


async def _until(done: Callable[[], bool], guard_s: float = 30) -> None:
    """Poll ``done()``; the bound only guards against a hang (a busy machine may be slow)."""
    deadline = time.monotonic() + guard_s
    while not done():
        assert time.monotonic() < deadline, "not done within the hang guard"
        await asyncio.sleep(0.02)


@pytest.mark.anyio
async def test_a_sync_api_over_a_hung_model_is_a_504_at_its_timeout_and_nothing_hangs() -> None:
    runner = tiffin.Runner(Hung, name="hung")
    svc = tiffin.Service("hung", runners=[runner])

    freed: list[float] = []

    @svc.api(input=JSON(), output=JSON())
    def predict(value: Any) -> Any:
        try:
            return runner.predict.run(value)  # blocks a thread: the deadline must free it
        except TimeoutError:
            freed.append(time.monotonic())
            raise

    @svc.api(input=JSON(), output=JSON())
    def echo(value: Any) -> Any:
        return value

    Hung.release.clear()
    settings = load_settings(overrides={"api_timeout_s": 0.5}, environ={})
    try:
        async with asgi_client(build_app(svc, settings)) as client:
            # the model never answers: any answer at all is the deadline's (wait_for only
            # guards against a hang; nothing here bounds the machine's speed)
            first = await asyncio.wait_for(client.post("/predict", json=1), 30)
            assert first.status_code == 504 and first.json()["error"] == "TIMEOUT"
            await _until(lambda: bool(freed))  # the thread gave up too: none left blocked
            later = await asyncio.wait_for(
                asyncio.gather(*(client.post("/predict", json=i) for i in range(8))), 30
            )
            assert {r.status_code for r in later} <= {200, 504}
            timed_out = 1 + sum(r.status_code == 504 for r in later)
            await _until(lambda: len(freed) >= timed_out)
            assert len(freed) == timed_out  # every thread gave up at its request's deadline
            echo_answer = await asyncio.wait_for(client.post("/echo", json=7), 30)
            assert echo_answer.json() == 7  # the thread pool was not used up by the hung calls
            Hung.release.set()
    finally:
        Hung.release.set()


class Restarting:
    """A backend whose runner process is down (what RemoteRunner raises meanwhile)."""

    ready = True

    async def call(self, method: Any, args: Any, kwargs: Any) -> Any:
        raise RunnerUnavailable("runner 'iris' is restarting (its process died)")

    def call_blocking(self, method: Any, args: Any, kwargs: Any) -> Any:
        raise RunnerUnavailable("runner 'iris' is restarting (its process died)")

    async def aclose_loop(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tiffin.frameworks import mlflow as tiffin_mlflow

    root: Path = tmp_path_factory.mktemp("overload")
    return tiffin_mlflow.import_model(
        "iris", save_iris_model(root / "iris"), store=store_at(root / "home")
    )


@pytest.mark.anyio
async def test_a_runner_that_is_restarting_is_a_503_with_retry_after_everywhere(iris: Any) -> None:
    svc = build_service(iris)
    runner = svc.runners[0]
    runner.attach_remote(Restarting())  # type: ignore[arg-type]

    @svc.api(input=JSON(), output=JSON())
    def sync_rows(rows: Any) -> Any:
        return runner.predict.run(rows)

    row = [5.1, 3.5, 1.4, 0.2]
    async with asgi_client(build_app(svc)) as client:
        for path in ("/predict", "/sync_rows"):
            response = await client.post(path, json=[row])
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            assert response.json()["error"] == "RUNNER_UNAVAILABLE"
        response = await client.post("/invocations", json={"inputs": [row]})
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
        assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"


# -- a real server, raw sockets --------------------------------------------------------------

SERVICE = """
import asyncio
import tiffin
from tiffin.io import JSON

svc = tiffin.Service("slow")


@svc.api(input=JSON(), output=JSON())
async def echo(value):
    return value
"""


TRICKLE_TIMEOUT_S = 6.0


def _trickle(url: str, path: str, results: list[tuple[int, dict[str, Any], float]]) -> None:
    """POST ``path`` announcing 100 bytes, then send one every 0.1 s until an answer comes."""
    host, port = url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=15) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     "Content-Length: 100\r\n\r\n[".encode())  # fmt: skip
        sock.settimeout(0.1)
        received = b""
        while b"\r\n\r\n" not in received and time.monotonic() - started < 60:
            try:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                received += chunk
            except TimeoutError:
                sock.sendall(b" ")  # a byte per 0.1 s: never the whole body
        head, _, body = received.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))  # fmt: skip
        sock.settimeout(5)
        while len(body) < length:
            body += sock.recv(65536)
    status = int(head.split(b" ")[1])
    results.append((status, orjson.loads(body), time.monotonic() - started))


@pytest.mark.slow
def test_a_trickling_body_is_a_504_at_the_timeout_and_past_the_limit_a_503_at_once(
    tmp_path: Path, tiffin_home: Path
) -> None:
    (tmp_path / "svc.py").write_text(SERVICE)
    env = server_env(tiffin_home, TIFFIN_MAX_CONCURRENT_REQUESTS="2")
    # a timeout long enough for a loaded machine to get the probe in while both trickle
    args = ["serve", "svc.py:svc", "--api-timeout", str(TRICKLE_TIMEOUT_S)]
    with running(start_tiffin(args, cwd=tmp_path, env=env, log=tmp_path / "log")) as server:
        results: list[tuple[int, dict[str, Any], float]] = []
        senders = [threading.Thread(target=_trickle, args=(server.url, "/echo", results))
                   for _ in range(2)]  # fmt: skip
        for sender in senders:
            sender.start()
        deadline = time.monotonic() + TRICKLE_TIMEOUT_S - 1  # (the senders' timeout)
        while True:  # once both are in the pipeline, their bodies trickling, one more is refused
            started = time.monotonic()
            refused = httpx.post(server.url + "/echo", json=1, timeout=30)
            if refused.status_code == 503 or started > deadline:
                break
            time.sleep(0.02)
        # refused at once, by order not by the clock: both senders were still trickling (no
        # answer yet) when the refusal came; a probe that waited for a slot would have waited
        # for a sender's timeout answer first
        assert not results
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["error"] == "OVERLOADED"
        assert "max_concurrent_requests" in refused.json()["detail"]
        assert httpx.get(server.url + "/livez").status_code == 200  # probes are not counted
        for sender in senders:
            sender.join(20)
        assert len(results) == 2
        for status, body, elapsed in results:
            assert status == 504 and body["error"] == "TIMEOUT"
            assert elapsed >= TRICKLE_TIMEOUT_S - 0.1, elapsed  # not before its timeout
        assert httpx.post(server.url + "/echo", json=1, timeout=10).json() == 1
