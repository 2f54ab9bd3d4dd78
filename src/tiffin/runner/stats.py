"""What a batching dispatcher counts: counters and Prometheus-style histograms in plain Python.

:class:`BatchStats` is read with :meth:`BatchStats.snapshot`; the server's ``/metrics`` turns
the snapshot into Prometheus families, and runner processes send it to API workers as is.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any

__all__ = ["SECONDS_BUCKETS", "SIZE_BUCKETS", "BatchStats", "Buckets", "add_snapshots"]

# Bucket upper bounds, Prometheus style (a +Inf bucket is implied).
SIZE_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(14))  # 1 .. 8192 rows
SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class Buckets:
    """Counts of values by bucket, read as a cumulative histogram (Prometheus semantics: bucket
    ``le`` counts values ``<= le``); plain Python, not a prometheus-client metric."""

    __slots__ = ("_counts", "bounds", "count", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self._counts = [0] * (len(self.bounds) + 1)
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def snapshot(self) -> dict[str, Any]:
        """``{"buckets": [(le, cumulative count), ..., (inf, count)], "count", "sum"}``."""
        running = 0
        buckets: list[tuple[float, int]] = []
        for bound, count in zip((*self.bounds, math.inf), self._counts, strict=True):
            running += count
            buckets.append((bound, running))
        return {"buckets": buckets, "count": self.count, "sum": self.sum}


class BatchStats:
    """What one dispatcher did, cumulative since it was made; read it with :meth:`snapshot`.

    Counters: ``calls`` and ``rows`` submitted; ``batches``: model calls made (each batch, and
    each run that isolates a failure), of which ``isolation_runs`` isolated failures;
    ``failed_batches``: model calls that raised; ``isolated_calls``: calls of failed batches
    that were run again to find the calls at fault (:mod:`~tiffin.runner.isolation`);
    ``overloaded`` calls (answered past max_latency_ms); ``cancelled`` calls.
    Buckets: ``batch_rows`` (rows per model call), ``queue_wait`` (seconds a call waited for its
    batch to start) and ``run_time`` (seconds per model call in ``infer`` that succeeded).
    """

    def __init__(self) -> None:
        self.calls = 0
        self.rows = 0
        self.batches = 0
        self.isolation_runs = 0
        self.failed_batches = 0
        self.isolated_calls = 0
        self.overloaded = 0
        self.cancelled = 0
        self.batch_rows = Buckets(SIZE_BUCKETS)
        self.queue_wait = Buckets(SECONDS_BUCKETS)
        self.run_time = Buckets(SECONDS_BUCKETS)

    def snapshot(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "rows": self.rows,
            "batches": self.batches,
            "isolation_runs": self.isolation_runs,
            "failed_batches": self.failed_batches,
            "isolated_calls": self.isolated_calls,
            "overloaded": self.overloaded,
            "cancelled": self.cancelled,
            "batch_rows": self.batch_rows.snapshot(),
            "queue_wait_seconds": self.queue_wait.snapshot(),
            "run_time_seconds": self.run_time.snapshot(),
        }


def add_snapshots(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Sum two :meth:`BatchStats.snapshot` results (counters, and histograms with the same
    buckets): one method's figures over several processes."""
    out: dict[str, Any] = {}
    for key, value in a.items():
        other = b.get(key)
        if isinstance(value, dict) and isinstance(other, dict):
            out[key] = {
                "buckets": [
                    (bound, count + other_count)
                    for (bound, count), (_, other_count) in zip(
                        value["buckets"], other["buckets"], strict=True
                    )
                ],
                "count": value["count"] + other["count"],
                "sum": value["sum"] + other["sum"],
            }
        elif isinstance(value, int | float) and isinstance(other, int | float):
            out[key] = value + other
        else:
            out[key] = value
    return out
