"""Request metrics are added up in batches: the series read exactly as one observe() each."""

from __future__ import annotations

import asyncio
import math
import random

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

import tiffin
from tiffin.metrics import LATENCY_BUCKETS, ServerMetrics


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
