"""Request metrics are added up in batches: the series read exactly as one observe() each."""

from __future__ import annotations

import asyncio
import math
import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

import tiffin
from tiffin.serving.metrics import LATENCY_BUCKETS, ServerMetrics


def reference(requests: list[tuple[str, str, int, float]]) -> bytes:
    """What prometheus-client shows when each request is observed on its own."""
    registry = CollectorRegistry()
    counter = Counter("tiffin_http_requests", "HTTP requests by route, method and status",
                      ["route", "method", "status"], registry=registry)
    histogram = Histogram("tiffin_http_request_duration_seconds", "HTTP request latency by route",
                          ["route"], buckets=LATENCY_BUCKETS, registry=registry)
    for route, method, status, seconds in requests:
        counter.labels(route, method, str(status)).inc()
        histogram.labels(route).observe(seconds)
    return generate_latest(registry)


def http_lines(text: bytes) -> list[str]:
    return sorted(
        line for line in text.decode().splitlines()
        if line.startswith("tiffin_http_") and "_created" not in line
    )


def test_batched_request_metrics_equal_one_observation_each() -> None:
    rng = random.Random(7)
    routes = ["/predict", "/invocations", "<other>"]
    requests = [
        (rng.choice(routes), rng.choice(["POST", "GET"]), rng.choice([200, 400, 503]),
         rng.choice([0.0, 0.001, 0.0025, 70.0, rng.random() * 3]))  # bounds exactly, and past all
        for _ in range(2500)
    ]
    service = tiffin.Service("m")
    metrics = ServerMetrics(service)

    async def main() -> bytes:
        for request in requests:  # past 1024 pending, the batch is added at once
            metrics.observe_request(*request)
        return metrics.render()[0]  # and what is left, before rendering

    ours, theirs = http_lines(asyncio.run(main())), http_lines(reference(requests))
    assert [line.rsplit(" ", 1)[0] for line in ours] == [line.rsplit(" ", 1)[0] for line in theirs]
    for mine, expected in zip(ours, theirs, strict=True):
        if "_sum{" in mine:  # added in another order: equal up to rounding
            assert math.isclose(float(mine.split()[-1]), float(expected.split()[-1]), rel_tol=1e-12)
        else:
            assert mine == expected


def test_pending_requests_are_added_within_half_a_second_without_a_scrape() -> None:
    service = tiffin.Service("m")
    metrics = ServerMetrics(service)

    async def main() -> float:
        metrics.observe_request("/predict", "POST", 200, 0.003)
        await asyncio.sleep(0.7)
        return metrics.requests.labels("/predict", "POST", "200")._value.get()

    assert asyncio.run(main()) == 1.0


class _Doubler(tiffin.Runnable):
    @tiffin.Runnable.method(batchable=True)
    def double(self, x):
        return x * 2


def test_embedded_runner_figures_add_up_over_the_workers_files(tmp_path) -> None:
    import json
    import os

    import numpy as np

    from tiffin.serving.metrics import STATS_FILE, RunnerCollector, SharedRunnerStats

    runner = tiffin.Runner(_Doubler, name="doubler", embedded=True)
    service = tiffin.Service("m", runners=[runner])
    runner.init_local()
    try:
        async def calls() -> None:
            await asyncio.gather(*(runner.double.async_run(np.ones((1, 2))) for _ in range(5)))

        asyncio.run(calls())
        shared = SharedRunnerStats(service, str(tmp_path))
        shared.write()
        mine = json.loads((tmp_path / STATS_FILE.format(pid=os.getpid())).read_text())
        assert mine["doubler"]["double"]["calls"] == 5
        # another worker's figures (as it wrote them), and a file being replaced (skipped)
        (tmp_path / STATS_FILE.format(pid=1)).write_text(json.dumps(mine))
        (tmp_path / STATS_FILE.format(pid=2)).write_text('{"doubler": {"dou')
        registry = CollectorRegistry()
        registry.register(RunnerCollector(service, shared))
        text = generate_latest(registry).decode()
        assert 'tiffin_runner_calls_total{method="double",runner="doubler"} 10.0' in text
        size_count = 'tiffin_runner_batch_size_count{method="double",runner="doubler"}'
        batches = mine["doubler"]["double"]["batches"]
        assert f"{size_count} {2.0 * batches}" in text
    finally:
        runner.destroy()


class _Echo(tiffin.Runnable):
    @tiffin.Runnable.method
    def echo(self, x):
        return x


def _gpu_lines(text: bytes) -> list[str]:
    return sorted(line for line in text.decode().splitlines() if line.startswith("tiffin_gpu_"))


def test_gpu_memory_gauges_by_process_and_gpu(monkeypatch) -> None:
    """This process's GPU memory and each runner process's (as fetched over the wire), from
    torch's allocator figures; a machine that never used CUDA shows none."""
    from tiffin.runner import devices

    service = tiffin.Service("s", runners=[tiffin.Runner(_Echo, name="echo")])
    if not __import__("torch").cuda.is_available():
        assert _gpu_lines(ServerMetrics(service).render()[0]) == []
    here = {"0": {"allocated": 1024, "reserved": 4096}}
    monkeypatch.setattr(devices, "device_memory", lambda: here)
    runner = service.runners[0]

    class Remote:  # what RemoteRunner.refresh_stats leaves: memory by runner process
        devices = {"echo-0": {"GPU-5c1f": {"allocated": 7, "reserved": 8}}}

    runner.backend = Remote()  # type: ignore[assignment]
    assert _gpu_lines(ServerMetrics(service).render()[0]) == [
        'tiffin_gpu_memory_allocated_bytes{gpu="0",process="local"} 1024.0',
        'tiffin_gpu_memory_allocated_bytes{gpu="GPU-5c1f",process="echo-0"} 7.0',
        'tiffin_gpu_memory_reserved_bytes{gpu="0",process="local"} 4096.0',
        'tiffin_gpu_memory_reserved_bytes{gpu="GPU-5c1f",process="echo-0"} 8.0',
    ]


def test_a_runner_process_answers_for_its_gpu_memory(tmp_path, monkeypatch) -> None:
    """The wire's DEVICES message: a runner process sends its GPU memory to the API worker."""
    from tiffin.runner import devices
    from tiffin.runner.remote import RemoteRunner
    from tiffin.runner.runner_server import serve_runner

    monkeypatch.setattr(devices, "device_memory",
                        lambda: {"1": {"allocated": 3, "reserved": 5}})
    local = tiffin.Runner(_Echo, name="echo")
    local.init_local()
    front = tiffin.Runner(_Echo, name="echo")
    remote = RemoteRunner("echo", [str(tmp_path / "echo.sock")])
    front.attach_remote(remote)

    async def scenario() -> None:
        ready = asyncio.Event()
        server = asyncio.create_task(serve_runner(local, remote.connections[0].path, ready.set))
        await ready.wait()
        await remote.start()
        while not remote.connected:
            await asyncio.sleep(0.01)
        assert await front.echo.async_run(5) == 5
        await front.refresh_remote_stats()
        await remote.aclose()
        server.cancel()
        await asyncio.gather(server, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        local.destroy()
    assert remote.devices == {"echo-0": {"1": {"allocated": 3, "reserved": 5}}}
