"""The three Ray Serve deployments of a tiffin application (imports Ray: load it lazily).

* :class:`TiffinIngress` runs tiffin's own ASGI app (:func:`~tiffin.serving.app.build_app`:
  the same routes, IO descriptors, MLflow protocol, auth and metrics as ``tiffin serve``), its
  runners attached to :class:`~tiffin.ray.backend.RayRunner` backends; with ``direct_port``
  set it serves that app on its own port too (:mod:`tiffin.ray.direct`).
* :class:`TiffinRunner` loads one runner (a local backend: tiffin's adaptive dispatcher and
  worker thread) and answers ``call`` with ``("ok", value)`` or ``("error", exception)``.
* :class:`TiffinStats` keeps the runner replicas' batching figures for ``/metrics``.

Each replica builds its service from the :class:`~tiffin.ray.spec.AppSpec` it is given; the
classes are module-level under names of their own so Ray pickles them by reference. Serve
calls an ingress's app builder with no arguments after the constructor, so the constructor
leaves the app it built in a per-process slot that :func:`_built_app` takes it from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import ray
from ray import serve

from tiffin.ray.backend import RayRunner
from tiffin.ray.replica_stats import HEARTBEAT_S, REPORT_AFTER_S, ReplicaCollector, StatsBook
from tiffin.ray.spec import AppSpec, load_service
from tiffin.runner.wire import ERROR, OK, picklable_error

__all__ = ["TiffinIngress", "TiffinRunner", "TiffinStats"]

logger = logging.getLogger("tiffin.ray")

#: the app the ingress constructor built, until Serve's wrapper asks for it
_PENDING: list[Any] = []


def _built_app() -> Any:
    return _PENDING.pop()


class _Ingress:
    def __init__(
        self,
        spec: dict[str, Any],
        runners: dict[str, Any],
        stats: Any,
        in_flight: dict[str, int] | None = None,
    ) -> None:
        from tiffin.serving.app import build_app

        service, settings = load_service(AppSpec(**spec))
        collector = ReplicaCollector()
        backends = []
        for runner in service.runners:
            backend = RayRunner(runner.name, runners[runner.name], stats, collector,
                                max_in_flight=(in_flight or {}).get(runner.name))  # fmt: skip
            runner.attach_remote(backend)
            backends.append(backend)

        def capture_loop() -> None:  # sync API functions' run() needs the app's loop
            loop = asyncio.get_running_loop()
            for backend in backends:
                backend.loop = loop

        service.startup_hooks.insert(0, capture_loop)
        # a start-up that fails (a direct port taken) fails the replica: Serve says so
        app = build_app(service, settings, load_before_serving=True)
        self._direct: Any = None
        if settings.ray.direct_port is not None:  # the app runs the hooks when it starts
            from tiffin.ray.direct import DirectHTTP

            direct = DirectHTTP(settings, settings.ray.direct_host, settings.ray.direct_port)
            service.startup_hooks.append(lambda: direct.start(app))  # listens last
            # stops listening first, while the app still answers what it has taken
            app.state.tiffin.stop_first.append(direct.stop)
            self._direct = direct
        app.state.tiffin.metrics.registry.register(collector)
        _PENDING.append(app)

    async def check_health(self) -> None:
        """Serve's health check: a direct listener that stopped by itself fails it (Serve
        then replaces the replica)."""
        if self._direct is not None and self._direct.failed():
            raise RuntimeError("this replica's direct HTTP server stopped")


class _Runner:
    async def __init__(self, spec: dict[str, Any], runner_name: str, stats: Any) -> None:  # type: ignore[misc]  # Serve awaits it
        service, _settings = load_service(AppSpec(**spec))
        self.runner = next(r for r in service.runners if r.name == runner_name)
        # the model loads on a thread of its own, as in tiffin serve: the replica's event loop
        # (Serve's own work runs on it too, spec.REPLICA_ENV) keeps turning meanwhile
        await asyncio.to_thread(self.runner.init_local)
        self.stats = stats
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.node = ray.get_runtime_context().get_node_id()
        self._reporter: asyncio.Task[None] | None = None
        logger.info("runner %r replica %s loaded on node %s", runner_name, self.replica, self.node)

    def _snapshots(self) -> dict[str, dict[str, Any]]:
        return {
            name: method.local_stats.snapshot()
            for name, method in self.runner.methods.items()
            if method.local_stats is not None
        }

    def _ensure_reporter(self) -> None:
        if self._reporter is None or self._reporter.done():
            self._reporter = asyncio.get_running_loop().create_task(self._report_loop())

    async def _report_loop(self) -> None:
        last: dict[str, Any] | None = None
        sent = 0.0
        while True:
            snapshots = self._snapshots()
            now = time.monotonic()
            if snapshots != last or now - sent >= HEARTBEAT_S:
                try:
                    await self.stats.report.remote(
                        self.runner.name, self.replica, self.node, snapshots
                    )
                    last, sent = snapshots, now
                except Exception as exc:  # the stats deployment restarting: try again later
                    logger.debug("runner %r: could not report figures: %s", self.runner.name, exc)
            await asyncio.sleep(REPORT_AFTER_S)

    async def call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], calls: int = 1
    ) -> tuple[str, Any]:
        self._ensure_reporter()
        runner_method = self.runner.methods[method]
        try:
            return OK, await runner_method.async_run(*args, **kwargs)
        except Exception as exc:  # the caller gets it; the replica keeps serving
            return ERROR, picklable_error(exc)
        finally:
            # the ingress merged `calls` callers' calls into this one: count each
            stats = runner_method.local_stats
            if calls > 1 and stats is not None:
                stats.calls += calls - 1

    async def check_health(self) -> None:
        self._ensure_reporter()

    def __del__(self) -> None:
        reporter = getattr(self, "_reporter", None)
        if reporter is not None:
            reporter.cancel()
        runner = getattr(self, "runner", None)
        if runner is None:
            return
        with contextlib.suppress(Exception):  # a last report: its figures stay in the sums
            self.stats.report.remote(runner.name, self.replica, self.node, self._snapshots(), True)
        runner.destroy()


class _Stats:
    def __init__(self) -> None:
        self.book = StatsBook()

    async def report(
        self, runner: str, replica: str, node: str, methods: dict[str, Any], final: bool = False
    ) -> None:
        self.book.report(runner, replica, node, methods, final)

    async def collect(self) -> dict[str, Any]:
        return self.book.collect()


# Ray names a deployment's class after the class it wraps: the classes above keep their own
# module-level names, so that Ray pickles them (and _built_app, and the slot) by reference
TiffinIngress = serve.deployment(serve.ingress(_built_app)(_Ingress), max_ongoing_requests=1000)
TiffinRunner = serve.deployment(_Runner)
TiffinStats = serve.deployment(
    _Stats, num_replicas=1, max_ongoing_requests=1000, ray_actor_options={"num_cpus": 0}
)
