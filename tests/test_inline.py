"""A cheap batch runs on the event loop itself (no thread hop), an expensive one on the runner's
worker thread, and never two calls on one model at once (tiffin.runner.local)."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

import tiffin
from tiffin.runner import local


class Probe(tiffin.Runnable):
    """Records the thread of every call and how many ran at once; ``hold`` blocks until the
    test opens the gate."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.running = 0
        self.most = 0
        self.lock = threading.Lock()
        self.started = threading.Event()
        self.gate = threading.Event()

    def _enter(self) -> None:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        self.threads.append(threading.current_thread().name)

    def _leave(self) -> None:
        with self.lock:
            self.running -= 1

    @tiffin.Runnable.method(batchable=True)
    def double(self, x):
        self._enter()
        try:
            return x * 2
        finally:
            self._leave()

    @tiffin.Runnable.method
    def hold(self):
        self._enter()
        try:
            self.started.set()
            assert self.gate.wait(30)
            return "held"
        finally:
            self._leave()


def runner() -> tiffin.Runner:
    r = tiffin.Runner(Probe, name="probe")
    r.init_local()
    return r


async def calls(r: tiffin.Runner, n: int) -> None:
    for i in range(n):
        out = await r.double.async_run(np.array([[i]]))
        assert out.tolist() == [[2 * i]]


def test_cheap_batches_run_on_the_event_loop_once_timed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "INLINE_BELOW_S", 60.0)  # every batch counts as cheap
    r = runner()
    probe = r.backend.instance
    asyncio.run(calls(r, local.INLINE_AFTER + 5))
    loop_thread = threading.current_thread().name
    # the first INLINE_AFTER calls are timed on the worker, the rest run where the loop runs
    assert all(t != loop_thread for t in probe.threads[: local.INLINE_AFTER])
    assert probe.threads[local.INLINE_AFTER :] == [loop_thread] * 5


def test_expensive_batches_stay_on_the_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local, "INLINE_BELOW_S", 0.0)  # nothing is cheap enough
    r = runner()
    probe = r.backend.instance
    asyncio.run(calls(r, local.INLINE_AFTER + 5))
    assert threading.current_thread().name not in probe.threads
    assert len(probe.threads) == local.INLINE_AFTER + 5


def test_a_model_busy_on_the_worker_is_never_entered_inline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(local, "INLINE_BELOW_S", 60.0)
    r = runner()
    probe = r.backend.instance

    async def main() -> None:
        await calls(r, local.INLINE_AFTER)
        held = asyncio.ensure_future(r.hold.async_run())
        await asyncio.to_thread(probe.started.wait, 30)
        batch = asyncio.ensure_future(r.double.async_run(np.array([[7]])))
        await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert not batch.done()  # it waits for the model, on the worker thread
        probe.gate.set()
        assert await held == "held"
        assert (await batch).tolist() == [[14]]

    asyncio.run(main())
    assert probe.most == 1


def test_a_lone_request_runs_its_model_inline_even_when_it_is_not_cheap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """In a server, a call the cost model expects under INLINE_ALONE_BELOW_S runs on the event
    loop while its request is the only one in flight; beside another request, on the worker."""
    from tests.test_serving_support import asgi_client
    from tiffin.config import load_settings
    from tiffin.io import JSON
    from tiffin.serving.app import build_app

    monkeypatch.setattr(local, "INLINE_BELOW_S", 0.0)  # nothing is cheap enough on its own
    monkeypatch.setattr(local, "INLINE_ALONE_BELOW_S", 60.0)
    r = tiffin.Runner(Probe, name="probe")
    svc = tiffin.Service("lone", runners=[r])

    @svc.api(input=JSON(), output=JSON())
    async def double(value: list[list[int]]) -> list[list[int]]:
        return (await r.double.async_run(np.asarray(value))).tolist()

    app = build_app(svc, load_settings(environ={}))
    loop_thread = threading.current_thread().name

    async def main() -> None:
        async with asgi_client(app) as client:
            for i in range(local.INLINE_AFTER + 3):
                assert (await client.post("/double", json=[[i]])).json() == [[2 * i]]
            assert isinstance(r.backend, local.LocalBackend)
            probe = r.backend.instance
            assert isinstance(probe, Probe)
            assert all(t != loop_thread for t in probe.threads[: local.INLINE_AFTER])
            assert probe.threads[local.INLINE_AFTER :] == [loop_thread] * 3
            gate = app.state.tiffin.in_flight
            gate.count += 1  # another request in a pipeline meanwhile
            try:
                assert (await client.post("/double", json=[[5]])).json() == [[10]]
            finally:
                gate.count -= 1
            assert probe.threads[-1] != loop_thread
            assert (await client.post("/double", json=[[6]])).json() == [[12]]
            assert probe.threads[-1] == loop_thread

    asyncio.run(main())
