"""The ingress's runner backend: calls go to a runner deployment through a Ray Serve handle.

:class:`RayRunner` is the third :class:`~tiffin.runner.runner.Backend` (after ``local`` and
``remote``). Rules:

* Calls of a batchable method are merged per event-loop turn by a
  :class:`~tiffin.runner.coalescer.Coalescer` (one handle call carries every caller's rows),
  at most ``max_in_flight`` handle calls out at once (the others wait for one to come back and
  go merged); the replica's own adaptive dispatcher then batches calls from every ingress
  replica.
* A replica answers ``("ok", value)`` or ``("error", exception)``: the model's and tiffin's
  errors reach the caller as they were raised (a 400 stays a 400).
* Ray's own failures are tiffin's: a replica that died during the call, or none available,
  is :class:`~tiffin.exceptions.RunnerUnavailable` (503, retry); a full queue
  (``max_queued_requests``) is :class:`~tiffin.exceptions.Overloaded`. No call waits past its
  request's deadline: the pipeline's timeout cancels it, and a blocking ``run()`` waits no
  longer than the deadline either.
* Batching figures come from the application's stats deployment (see
  :mod:`~tiffin.ray.replica_stats`), fetched on each ``/metrics``.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import Overloaded, RunnerError, RunnerUnavailable, TiffinError
from tiffin.runner.coalescer import Coalescer
from tiffin.runner.runner import RemoteStats, call_on_loop
from tiffin.runner.wire import ERROR, OK

if TYPE_CHECKING:
    from tiffin.ray.replica_stats import ReplicaCollector
    from tiffin.runner.runner import Runner, RunnerMethod

__all__ = ["RayRunner", "translate"]


def translate(exc: BaseException, runner: str) -> BaseException:
    """A Ray failure as the tiffin error a client should see (others unchanged)."""
    if isinstance(exc, TiffinError):
        return exc
    name = type(exc).__name__
    names = {cls.__name__ for cls in type(exc).__mro__}
    if "BackPressureError" in names:
        return Overloaded(f"runner {runner!r} has too many queued calls; retry shortly")
    if names & {"RayActorError", "ActorDiedError", "ActorUnavailableError",
                "DeploymentUnavailableError", "ReplicaUnavailableError", "RayTaskError",
                "WorkerCrashedError", "ObjectLostError"}:  # fmt: skip
        return RunnerUnavailable(
            f"runner {runner!r} replica failed during the call ({name}); it is being "
            "replaced, retry shortly"
        )
    return exc


class RayRunner:
    """The ingress's handle on one runner deployment; see the module docstring."""

    def __init__(
        self,
        name: str,
        handle: Any,
        stats: Any = None,
        collector: ReplicaCollector | None = None,
        *,
        max_in_flight: int | None = None,
    ) -> None:
        self.name = name
        self.max_in_flight = max_in_flight
        self.handle = handle
        self.stats_handle = stats
        self.collector = collector
        self.loop: asyncio.AbstractEventLoop | None = None
        self.messages = 0
        self._coalescers: dict[
            str, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Coalescer]
        ] = {}

    @property
    def ready(self) -> bool:
        return True  # Serve routes each call to a ready replica, or holds it until one is

    async def call_method(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, calls: int = 1
    ) -> Any:
        self.messages += 1
        try:
            status, value = await self.handle.call.remote(method, args, kwargs, calls)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise translate(exc, self.name) from exc
        if status == OK:
            return value
        if status == ERROR and isinstance(value, BaseException):
            raise value
        raise RunnerError(f"runner {self.name!r} answered {status!r}")

    def _coalescer(self, method: RunnerMethod, loop: asyncio.AbstractEventLoop) -> Coalescer:
        table = self._coalescers.setdefault(method.name, weakref.WeakKeyDictionary())
        coalescer = table.get(loop)
        if coalescer is None:
            name = method.name

            async def send(payloads: tuple[Any, ...], kwargs: dict[str, Any], calls: int) -> Any:
                return await self.call_method(name, payloads, kwargs, calls=calls)

            settings = method.settings
            coalescer = table[loop] = Coalescer(
                send, name=f"{self.name}.{name}", input_dim=settings.input_dim,
                output_dim=settings.output_dim, max_batch_size=settings.max_batch_size,
                max_in_flight=self.max_in_flight,
            )  # fmt: skip
        return coalescer

    async def call(
        self, method: RunnerMethod, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        if method.settings.batchable and method.settings.max_batch_size > 1:
            loop = asyncio.get_running_loop()
            return await self._coalescer(method, loop).submit(*args, **kwargs)
        return await self.call_method(method.name, args, kwargs)

    def call_blocking(
        self, method: RunnerMethod, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """From a sync API function's thread: run on the ingress's event loop and wait."""
        return call_on_loop(
            self.loop,
            lambda: self.call(method, args, kwargs),
            f"{self.name}.{method.name}",
            lambda: RunnerUnavailable(f"runner {self.name!r} is not started yet; retry shortly"),
        )

    async def refresh_stats(self, runner: Runner) -> None:
        """Every replica's figures from the stats deployment: summed into each method's
        ``remote_stats``, and per replica into the collector."""
        if self.stats_handle is None:
            return
        from tiffin.ray.replica_stats import summed

        book = await asyncio.wait_for(self.stats_handle.collect.remote(), 5)
        if self.collector is not None:
            self.collector.book = book
        for name, snap in summed(book).get(runner.name, {}).items():
            if name in runner.methods:
                runner.methods[name].remote_stats = RemoteStats(snap)

    async def aclose_loop(self) -> None:
        loop = asyncio.get_running_loop()
        for table in self._coalescers.values():
            coalescer = table.pop(loop, None)
            if coalescer is not None:
                await coalescer.aclose()

    def close(self) -> None:
        self._coalescers.clear()
