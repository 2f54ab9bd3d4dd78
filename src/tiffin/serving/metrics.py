"""Prometheus metrics of a server: requests by route and status, latency, the runners'
batching figures (batch size, queue wait, run time), read from each dispatcher's stats, and
the GPU memory each process running a model holds (allocated and reserved, per GPU; none
until a model uses CUDA)."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from tiffin.config import MULTIPROC_ENV
from tiffin.runner.stats import add_snapshots

if TYPE_CHECKING:
    from tiffin.serving.service import Service

__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "STATS_FILE",
    "DeviceCollector",
    "RunnerCollector",
    "ServerMetrics",
    "SharedRunnerStats",
]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


#: the file where an API worker leaves its embedded runners' figures for the others
STATS_FILE = "runner-stats-{pid}.json"


class SharedRunnerStats:
    """``--workers N`` with embedded runners (loaded in every API worker): the batching
    figures of all the workers, shared through files in the multiprocess directory.

    Each worker writes its own figures to ``runner-stats-<pid>.json`` whenever it adds up its
    request counts (half a second after a request at most, or every 1024 requests), renders
    /metrics or stops; /metrics adds every other worker's file to the worker's own live
    figures. A dead worker's file stays, so its counts stay in the totals (as
    prometheus-client keeps a dead process's counters); a later process that happens to get
    the same pid takes the file over.
    """

    def __init__(self, service: Service, directory: str) -> None:
        self.service = service
        self.directory = Path(directory)

    def own(self) -> dict[str, dict[str, Any]]:
        """``{runner: {method: snapshot}}`` of the runners loaded in this process."""
        return {
            runner.name: {
                name: method.local_stats.snapshot()
                for name, method in runner.methods.items()
                if method.local_stats is not None
            }
            for runner in self.service.runners
            if runner.embedded
        }

    def write(self) -> None:
        own = self.own()
        if not any(own.values()):
            return
        path = self.directory / STATS_FILE.format(pid=os.getpid())
        temporary = path.with_suffix(".tmp")
        with contextlib.suppress(OSError):  # a full disk costs the figures, not the request
            temporary.write_text(json.dumps(own))
            os.replace(temporary, path)

    def others(self) -> dict[str, dict[str, Any]]:
        """The other workers' figures (written by them), added up."""
        mine = STATS_FILE.format(pid=os.getpid())
        total: dict[str, dict[str, Any]] = {}
        for path in self.directory.glob(STATS_FILE.format(pid="*")):
            if path.name == mine:
                continue
            try:
                theirs = json.loads(path.read_text())
            except (OSError, ValueError):
                continue  # gone or being replaced: the next scrape has it
            for runner, methods in theirs.items():
                into = total.setdefault(runner, {})
                for method, snap in methods.items():
                    into[method] = add_snapshots(into[method], snap) if method in into else snap
        return total


class RunnerCollector(Collector):
    """Translates every batchable runner method's BatchStats into Prometheus families."""

    def __init__(self, service: Service, shared: SharedRunnerStats | None = None) -> None:
        self.service = service
        self.shared = shared

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Any] = {
            "batch_rows": HistogramMetricFamily(
                "tiffin_runner_batch_size", "Rows per batch sent to the model",
                labels=["runner", "method"],
            ),
            "queue_wait_seconds": HistogramMetricFamily(
                "tiffin_runner_queue_wait_seconds", "Time a call waited before its batch started",
                labels=["runner", "method"],
            ),
            "run_time_seconds": HistogramMetricFamily(
                "tiffin_runner_batch_run_seconds", "Time the model took per batch",
                labels=["runner", "method"],
            ),
        }
        counters = {
            key: CounterMetricFamily(f"tiffin_runner_{key}", text, labels=["runner", "method"])
            for key, text in (
                ("calls", "Calls submitted to the batching queue"),
                ("rows", "Rows submitted to the batching queue"),
                ("batches", "Model calls made (batches, and runs isolating a failure)"),
                ("isolation_runs", "Model calls made to find the calls at fault in a failed batch"),
                ("overloaded", "Calls refused because they waited past max_latency_ms"),
                ("failed_batches", "Model calls that raised"),
                ("isolated_calls", "Calls of failed batches run again to find the calls at fault"),
                ("cancelled", "Calls whose caller went away before their batch started"),
            )
        }
        others = self.shared.others() if self.shared is not None else {}
        for runner in self.service.runners:
            for method in runner.methods.values():
                stats = method.stats
                theirs = others.get(runner.name, {}).get(method.name)
                snap: dict[str, Any]
                if stats is None:
                    if theirs is None:
                        continue
                    snap = theirs
                else:
                    snap = stats.snapshot()
                    if theirs is not None:
                        snap = add_snapshots(snap, theirs)
                labels = [runner.name, method.name]
                for key, family in families.items():
                    hist = snap[key]
                    buckets = [(_le(bound), float(count)) for bound, count in hist["buckets"]]
                    family.add_metric(labels, buckets, hist["sum"])
                for key, counter in counters.items():
                    counter.add_metric(labels, snap[key])
        yield from families.values()
        yield from counters.values()


class DeviceCollector(Collector):
    """GPU memory by process and GPU: this process's (``process="local"``: runners loaded
    here) and each runner process's, as last fetched with the batching figures."""

    def __init__(self, service: Service, local: Any = None) -> None:
        from tiffin.runner.devices import device_memory

        self.service = service
        self.local = local or device_memory

    def collect(self) -> Iterator[Metric]:
        allocated = GaugeMetricFamily(
            "tiffin_gpu_memory_allocated_bytes", "GPU memory held by tensors, per process and GPU",
            labels=["process", "gpu"],
        )
        reserved = GaugeMetricFamily(
            "tiffin_gpu_memory_reserved_bytes",
            "GPU memory reserved by PyTorch's caching allocator, per process and GPU",
            labels=["process", "gpu"],
        )
        by_process: dict[str, dict[str, dict[str, int]]] = {"local": self.local()}
        for runner in self.service.runners:
            by_process.update(getattr(runner.backend, "devices", None) or {})
        for process, gpus in by_process.items():
            for gpu, memory in gpus.items():
                allocated.add_metric([process, gpu], memory["allocated"])
                reserved.add_metric([process, gpu], memory["reserved"])
        yield allocated
        yield reserved


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class ServerMetrics:
    """One registry per app, so two apps in one process never share series."""

    def __init__(self, service: Service) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "tiffin_http_requests", "HTTP requests by route, method and status",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "tiffin_http_request_duration_seconds", "HTTP request latency by route",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        directory = os.environ.get(MULTIPROC_ENV)
        embedded = any(runner.embedded for runner in service.runners)
        self.shared = SharedRunnerStats(service, directory) if directory and embedded else None
        self.runner_collector = RunnerCollector(service, self.shared)
        self.registry.register(self.runner_collector)
        self.device_collector = DeviceCollector(service)
        self.registry.register(self.device_collector)

        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # requests observed since the last flush: (route, method, status, seconds)
        self._pending: list[tuple[str, str, int, float]] = []
        self._bounds = [float(b) for b in LATENCY_BUCKETS]

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request. Requests are added up in batches (:meth:`flush`): at once past
        1024, half a second after the first of a batch, and before /metrics is rendered."""
        pending = self._pending
        if not pending:
            try:
                asyncio.get_running_loop().call_later(0.5, self.flush)
            except RuntimeError:  # no event loop here: count it now
                pending.append((route, method, status, seconds))
                self.flush()
                return
        pending.append((route, method, status, seconds))
        if len(pending) >= 1024:
            self.flush()

    def flush(self) -> None:
        """Add the pending requests to the Prometheus series: one increment per series and
        bucket instead of a locked increment per request and a scan of the buckets (and write
        this worker's embedded runners' figures out for the others)."""
        if self.shared is not None:
            self.shared.write()
        pending, self._pending = self._pending, []
        if not pending:
            return
        counts: dict[tuple[str, str, int], int] = {}
        latencies: dict[str, tuple[list[int], list[float]]] = {}
        bounds = self._bounds
        for route, method, status, seconds in pending:
            key = (route, method, status)
            counts[key] = counts.get(key, 0) + 1
            by_route = latencies.get(route)
            if by_route is None:
                by_route = latencies[route] = ([0] * (len(bounds) + 1), [0.0])
            by_route[0][bisect.bisect_left(bounds, seconds)] += 1
            by_route[1][0] += seconds
        for key, count in counts.items():
            self._child(key)[0].inc(count)
        for route, (buckets, total) in latencies.items():
            histogram = self.latency.labels(route)
            # prometheus-client keeps cumulative buckets itself: add each observation once,
            # to the first bucket whose bound holds it (as observe() does)
            cells = getattr(histogram, "_buckets", None)
            if cells is None or len(cells) != len(buckets) or not hasattr(histogram, "_sum"):
                for r, _m, _s, seconds in pending:  # a prometheus-client without them
                    if r == route:
                        histogram.observe(seconds)
                continue
            histogram._sum.inc(total[0])
            for cell, count in zip(cells, buckets, strict=True):
                if count:
                    cell.inc(count)

    def _child(self, key: tuple[str, str, int]) -> tuple[Any, Any]:
        # labels() builds and looks up its key under a lock each time: keep the children
        children = self._children.get(key)
        if children is None:
            route, method, status = key
            children = (self.requests.labels(route, method, str(status)),
                        self.latency.labels(route))
            self._children[key] = children
        return children

    def render(self) -> tuple[bytes, str]:
        self.flush()
        if not os.environ.get(MULTIPROC_ENV):
            return generate_latest(self.registry), CONTENT_TYPE
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(self.runner_collector)
        registry.register(self.device_collector)
        return generate_latest(registry), CONTENT_TYPE
