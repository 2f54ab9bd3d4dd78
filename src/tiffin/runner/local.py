"""The local backend: a runner's runnable loaded in this process.

One instance of the runnable, one worker thread that runs every call on it, and per event loop
one adaptive
:class:`~tiffin.runner.batching.Dispatcher` per batchable method. Blocking ``run()`` callers
(any thread) go through a shared background event loop. A model never sees two calls at once:
every call holds the backend's model lock. A batch the dispatcher finds cheap enough runs on the
event loop itself when that lock is free (``inline``): one the method's own cost model (the
model's time alone, per rows, over its recent calls) expects under :data:`INLINE_BELOW_S`, where
handing it to the thread and back would cost as much as the model -- or under
:data:`INLINE_ALONE_BELOW_S` when it is the only request its server has in flight (``alone``,
set by the server): nothing else then waits for the loop, and the hand-off (~0.2 ms of context
switches and cold caches on one CPU) is all a lone request would gain from the thread.

The worker thread's native pools (OpenMP, BLAS) use one thread unless the runnable declares
``SUPPORTS_CPU_MULTI_THREADING`` and ``TIFFIN_RUNNER_THREADS`` asks for more: a batch already
amortises the model's fixed cost, and extra OpenMP threads fight the event loop (and other
processes) for the same cores, which shows up as long latency tails.

The runner's ``device`` setting is resolved here, before the runnable is made
(:func:`~tiffin.runner.devices.resolve_device`: a GPU that is not there is a one-line error);
a runnable whose ``__init__`` takes ``device`` / ``precision`` gets them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import InvalidArgument, Overloaded, RunnerError
from tiffin.runner import containers
from tiffin.runner.batching import BUSY, Dispatcher
from tiffin.runner.devices import resolve_device
from tiffin.runner.hold import CostModel
from tiffin.runner.runnable import placement_parameters
from tiffin.runner.runner import wait_result
from tiffin.runner.stats import BatchStats

if TYPE_CHECKING:
    from tiffin.runner.runnable import Runnable
    from tiffin.runner.runner import Runner, RunnerMethod

__all__ = ["LocalBackend", "background_loop", "native_threads"]

RUNNER_THREADS_ENV = "TIFFIN_RUNNER_THREADS"
#: a batch the model is expected to run in less than this (seconds) runs inline
INLINE_BELOW_S = 0.001
#: ... once this many of the method's calls were timed
INLINE_AFTER = 8
#: a batch expected under this runs inline too when ``alone()`` says no other request waits
INLINE_ALONE_BELOW_S = 0.02

_bg_lock = threading.Lock()
_bg_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """One daemon thread running an event loop, serving ``.run()`` callers from any thread."""
    global _bg_loop
    with _bg_lock:
        if _bg_loop is None or _bg_loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(
                target=loop.run_forever, name="tiffin-runner-loop", daemon=True
            ).start()
            _bg_loop = loop
        return _bg_loop


class LocalBackend:
    """The runnable of ``runner``, loaded here; see the module docstring."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner
        #: the device the runnable runs on: "cpu" or "cuda:N"
        self.device = resolve_device(
            runner.device, supports_gpu=runner.supports_gpu, what=f"runner {runner.name!r}"
        )
        params = dict(runner.runnable_init_params)
        accepted = placement_parameters(runner.runnable_class)
        if "device" in accepted:
            params.setdefault("device", self.device)
        if "precision" in accepted and runner.precision is not None:
            params.setdefault("precision", runner.precision)
        try:
            self.instance: Runnable = runner.runnable_class(**params)
        except TypeError as exc:
            raise RunnerError(f"cannot initialise runner {runner.name!r}: {exc}") from exc
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"tiffin-{runner.name}",
            initializer=_limit_native_threads,
            initargs=(native_threads(runner.runnable_class),),
        )
        self._model_lock = threading.Lock()
        self._costs: dict[str, CostModel] = {}  # per method: the model's own time
        #: whether the call at hand is the only request its server has in flight (the server
        #: sets it; None: never assumed)
        self.alone: Callable[[], bool] | None = None
        self._native_limited: set[int] = set()  # threads whose native pools are limited
        #: method name -> event loop -> its dispatcher
        self._dispatchers: dict[
            str, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Dispatcher]
        ] = {}

    @property
    def ready(self) -> bool:
        return True

    def _locked(
        self,
        bound: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timed: tuple[Any, int] = (None, 0),
    ) -> Any:
        """``bound(*args, **kwargs)`` under the model lock; ``timed``: (cost model, rows) to
        add its time to, or (None, 0)."""
        with self._model_lock:
            started = time.perf_counter()
            result = bound(*args, **kwargs)
            cost, rows = timed
            if cost is not None:
                cost.add(rows, time.perf_counter() - started)
            return result

    def _in_worker(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], rows: int = 0
    ) -> Any:
        bound = getattr(self.instance, method)
        timed = (self._costs.get(method), rows)
        return asyncio.get_running_loop().run_in_executor(
            self.executor, self._locked, bound, args, kwargs, timed
        )

    def _inline(self, method: str, rows: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``method`` on ``rows`` run here, on the event loop's thread, when its cost model
        expects it to be cheap and the model is free; else BUSY."""
        cost = self._costs[method]
        if cost.runs < INLINE_AFTER:
            return BUSY
        expected, alone = cost.predict(rows), self.alone
        if expected >= INLINE_BELOW_S and not (
            expected < INLINE_ALONE_BELOW_S and alone is not None and alone()
        ):
            return BUSY
        if not self._model_lock.acquire(blocking=False):
            return BUSY
        try:
            thread = threading.get_ident()
            if thread not in self._native_limited:  # as in the worker thread
                _limit_native_threads(native_threads(self.runner.runnable_class))
                self._native_limited.add(thread)
            started = time.perf_counter()
            result = getattr(self.instance, method)(*args, **kwargs)
            cost.add(rows, time.perf_counter() - started)
            return result
        finally:
            self._model_lock.release()

    def dispatcher(self, method: RunnerMethod, loop: asyncio.AbstractEventLoop) -> Dispatcher:
        """``method``'s dispatcher on ``loop`` (made on first use)."""
        table = self._dispatchers.get(method.name)
        if table is None:
            table = self._dispatchers[method.name] = weakref.WeakKeyDictionary()
        dispatcher = table.get(loop)
        if dispatcher is None:
            # a dispatcher holds its loop strongly: drop those of loops that have closed
            for old in [old for old in table if old.is_closed()]:
                del table[old]
            if method.local_stats is None:
                method.local_stats = BatchStats()
            name = method.name

            settings = method.settings
            self._costs.setdefault(name, CostModel())
            dim = settings.input_dim

            async def infer(*args: Any, **kwargs: Any) -> Any:
                rows = containers.count_rows(args[0], dim) if args else 0
                return await self._in_worker(name, args, kwargs, rows)

            def inline(rows: int, *args: Any, **kwargs: Any) -> Any:
                return self._inline(name, rows, args, kwargs)

            dispatcher = Dispatcher(
                infer,
                name=f"{self.runner.name}.{name}",
                batch_dim=settings.batch_dim,
                max_batch_size=settings.max_batch_size,
                max_latency_ms=settings.max_latency_ms,
                stats=method.local_stats,
                inline=inline,
            )
            table[loop] = dispatcher
        return dispatcher

    async def call(
        self, method: RunnerMethod, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if method.settings.batchable:
            loop = asyncio.get_running_loop()
            return await self.dispatcher(method, loop).submit(*args, **kwargs)
        return await self._call_alone(method, args, kwargs)

    async def _call_alone(
        self, method: RunnerMethod, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """A call of a method that is not batchable: FIFO on the worker thread, with the same
        queue deadline as a batchable one (``max_latency_ms`` to start, else Overloaded), and
        a caller that goes away before it starts takes it out of the queue."""
        bound = getattr(self.instance, method.name)
        ticket = _Ticket()

        def run() -> Any:
            with ticket.lock:
                if ticket.abandoned:
                    return None
                ticket.started = True
            return self._locked(bound, args, kwargs)

        future = asyncio.get_running_loop().run_in_executor(self.executor, run)
        try:
            done, _ = await asyncio.wait([future], timeout=method.settings.max_latency_ms / 1000)
        except asyncio.CancelledError:
            ticket.abandon()
            future.cancel()
            raise
        if not done and ticket.abandon():
            future.cancel()
            raise Overloaded(
                f"runner method '{self.runner.name}.{method.name}' is overloaded: a call waited "
                f"{method.settings.max_latency_ms:g} ms (max_latency_ms) without starting; "
                "retry shortly, add capacity, or raise max_latency_ms"
            )
        return await future  # it started: it runs to the end, however long it takes

    def call_blocking(
        self, method: RunnerMethod, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        loop = background_loop()
        future = asyncio.run_coroutine_threadsafe(self.call(method, args, kwargs), loop)
        return wait_result(future, loop, f"runner method '{self.runner.name}.{method.name}'")

    async def aclose_loop(self) -> None:
        loop = asyncio.get_running_loop()
        for table in self._dispatchers.values():
            dispatcher = table.pop(loop, None)
            if dispatcher is not None:
                with contextlib.suppress(Exception):
                    await dispatcher.aclose()

    def close(self) -> None:
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for table in self._dispatchers.values():
            for loop, dispatcher in list(table.items()):
                if loop.is_closed() or not loop.is_running():
                    continue
                if loop is current:
                    loop.create_task(dispatcher.aclose())
                else:
                    future = asyncio.run_coroutine_threadsafe(dispatcher.aclose(), loop)
                    with contextlib.suppress(Exception):
                        future.result(timeout=5)
        self._dispatchers.clear()
        self.executor.shutdown(wait=False, cancel_futures=True)


class _Ticket:
    """Whether a queued call has started, or was given up before it could."""

    __slots__ = ("abandoned", "lock", "started")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.started = False
        self.abandoned = False

    def abandon(self) -> bool:
        """Give the call up unless it started; whether it was given up."""
        with self.lock:
            if not self.started:
                self.abandoned = True
            return self.abandoned


def native_threads(runnable_class: type[Runnable]) -> int:
    """Native (BLAS/OpenMP) threads for the worker thread: 1, or what ``TIFFIN_RUNNER_THREADS``
    gives a runnable that declares ``SUPPORTS_CPU_MULTI_THREADING`` (``0``: every CPU this
    process may use)."""
    wanted = os.environ.get(RUNNER_THREADS_ENV, "").strip()
    if not runnable_class.SUPPORTS_CPU_MULTI_THREADING or not wanted:
        return 1
    if not wanted.isdigit():
        raise InvalidArgument(f"{RUNNER_THREADS_ENV} must be a whole number, got {wanted!r}")
    if int(wanted) > 0:
        return int(wanted)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _limit_native_threads(threads: int) -> None:
    """Runs in the worker thread: OpenMP's thread count is per calling thread, so set it here.

    Without it, OpenMP-backed models (HistGradientBoosting, ...) start a thread per core from
    the worker and can run ten times slower on a busy or CPU-pinned machine.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl comes with scikit-learn; without it, nothing to limit
        return
    threadpool_limits(limits=threads)
