"""Every runner replica's batching figures, gathered for the ingress's ``/metrics``.

A Ray deployment handle reaches one replica per call, so the ingress cannot ask each replica
for its figures. Instead each runner replica reports its snapshot (:class:`~tiffin.runner.
stats.BatchStats`) to one small stats deployment of the application: within a second of a
change, and every few seconds anyway as a heartbeat. The ingress reads the book on each
scrape and shows the figures per replica (``tiffin_replica_*``, labelled with runner,
method, replica and node) and summed per runner method (the usual ``tiffin_runner_*``).

Rules of the :class:`StatsBook`:

* A replica that stops (its last report says so) or stays silent past ``retire_after``
  seconds (killed) leaves the per-replica series; its last figures stay in the sums, so the
  summed counters never go down while replicas come and go.
* Figures are as fresh as the last report: a scrape may lag the replicas by about a second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tiffin.runner.stats import add_snapshots

__all__ = ["HEARTBEAT_S", "REPORT_AFTER_S", "ReplicaCollector", "StatsBook", "summed"]

#: a replica reports this soon after its figures change...
REPORT_AFTER_S = 0.5
#: ...and this often when they do not (so a silent replica is known to be gone)
HEARTBEAT_S = 5.0
_RETIRE_AFTER_S = 30.0

#: runner -> method -> snapshot
Snapshots = dict[str, dict[str, dict[str, Any]]]


def _add(into: dict[str, dict[str, Any]], methods: dict[str, dict[str, Any]]) -> None:
    for method, snap in methods.items():
        into[method] = add_snapshots(into[method], snap) if method in into else snap


class StatsBook:
    """What the stats deployment keeps: live replicas' last reports, retired replicas' sums."""

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, retire_after: float = _RETIRE_AFTER_S
    ) -> None:
        self.clock = clock
        self.retire_after = retire_after
        #: (runner, replica) -> (node, last seen, {method: snapshot})
        self.live: dict[tuple[str, str], tuple[str, float, dict[str, dict[str, Any]]]] = {}
        #: runner -> method -> the summed last figures of replicas that are gone
        self.retired: Snapshots = {}

    def report(
        self, runner: str, replica: str, node: str, methods: dict[str, dict[str, Any]],
        final: bool = False,
    ) -> None:  # fmt: skip
        if final:
            self.live.pop((runner, replica), None)
            _add(self.retired.setdefault(runner, {}), methods)
            return
        self.live[(runner, replica)] = (node, self.clock(), methods)

    def _retire_silent(self) -> None:
        now = self.clock()
        for key, (_node, seen, methods) in list(self.live.items()):
            if now - seen > self.retire_after:
                del self.live[key]
                _add(self.retired.setdefault(key[0], {}), methods)

    def collect(self) -> dict[str, Any]:
        """``{"replicas": [{runner, replica, node, methods}], "retired": {runner: {...}}}``."""
        self._retire_silent()
        replicas = [
            {"runner": runner, "replica": replica, "node": node, "methods": methods}
            for (runner, replica), (node, _seen, methods) in sorted(self.live.items())
        ]
        return {"replicas": replicas, "retired": self.retired}


def summed(book: dict[str, Any]) -> Snapshots:
    """Each runner method's figures over its live and retired replicas."""
    total: Snapshots = {}
    for runner, methods in book.get("retired", {}).items():
        _add(total.setdefault(runner, {}), methods)
    for replica in book.get("replicas", []):
        _add(total.setdefault(replica["runner"], {}), replica["methods"])
    return total


_HISTOGRAMS = (
    ("batch_rows", "batch_size", "Rows per batch sent to the model, per replica"),
    ("queue_wait_seconds", "queue_wait_seconds", "Time a call waited for its batch, per replica"),
    ("run_time_seconds", "batch_run_seconds", "Time the model took per batch, per replica"),
)
_COUNTERS = (
    ("calls", "Calls submitted to the replica's batching queue"),
    ("rows", "Rows submitted to the replica's batching queue"),
    ("batches", "Model calls the replica made"),
    ("overloaded", "Calls the replica refused past max_latency_ms"),
    ("failed_batches", "Model calls that raised"),
    ("cancelled", "Calls whose caller went away before their batch started"),
)
_LABELS = ["runner", "method", "replica", "node"]


class ReplicaCollector(Collector):
    """``tiffin_replica_*`` families from the last book the ingress fetched."""

    def __init__(self) -> None:
        self.book: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        histograms = {
            key: HistogramMetricFamily(f"tiffin_replica_{name}", text, labels=_LABELS)
            for key, name, text in _HISTOGRAMS
        }
        counters = {
            key: CounterMetricFamily(f"tiffin_replica_{key}", text, labels=_LABELS)
            for key, text in _COUNTERS
        }
        for replica in self.book.get("replicas", []):
            for method, snap in replica["methods"].items():
                labels = [replica["runner"], method, replica["replica"], replica["node"]]
                for key, family in histograms.items():
                    hist = snap[key]
                    buckets = [
                        ("+Inf" if bound == float("inf") else repr(float(bound)), float(count))
                        for bound, count in hist["buckets"]
                    ]
                    family.add_metric(labels, buckets, hist["sum"])
                for key, counter in counters.items():
                    counter.add_metric(labels, snap.get(key, 0))
        yield from histograms.values()
        yield from counters.values()
