"""Runnables and Runners: how a model's methods are called, in-process or (later) remotely.

A :class:`Runnable` is a user- or framework-written class whose methods, marked with
:meth:`Runnable.method`, do the work. A :class:`Runner` owns one instance of it and exposes each
method as ``runner.<method>.run(...)`` (blocking, from any thread) and
``await runner.<method>.async_run(...)`` (from any event loop). Batchable methods go through an
adaptive :class:`~tiffin.batching.Dispatcher`; all calls of one runner execute on one worker
thread, so a model never sees two calls at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, ClassVar

from tiffin.exceptions import InvalidArgument, RunnerError
from tiffin.tag import validate_part

if TYPE_CHECKING:
    from tiffin.batching import BatchStats, Dispatcher
    from tiffin.models import Model
    from tiffin.remote import RemoteRunner

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_SIZE = 1024
DEFAULT_MAX_LATENCY_MS = 5000.0
_METHOD_ATTR = "__tiffin_method__"


@dataclass(frozen=True)
class MethodConfig:
    """How one runnable method is called."""

    batchable: bool = False
    batch_dim: int | tuple[int, int] = 0
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_latency_ms: float = DEFAULT_MAX_LATENCY_MS

    @property
    def input_dim(self) -> int:
        return self.batch_dim[0] if isinstance(self.batch_dim, tuple) else self.batch_dim


class Runnable:
    """Base class of the objects a Runner runs. Subclass it and mark methods::

        class MyRunnable(tiffin.Runnable):
            SUPPORTED_RESOURCES = ("cpu",)
            SUPPORTS_CPU_MULTI_THREADING = True

            def __init__(self):
                self.model = load_something()

            @tiffin.Runnable.method(batchable=True, batch_dim=0)
            def predict(self, batch):
                return self.model.predict(batch)
    """

    SUPPORTED_RESOURCES: ClassVar[tuple[str, ...]] = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING: ClassVar[bool] = False
    methods: ClassVar[dict[str, MethodConfig]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                config = getattr(value, _METHOD_ATTR, None)
                if isinstance(config, MethodConfig):
                    found[attr] = config
        cls.methods = found

    @staticmethod
    def method(
        fn: Callable[..., Any] | None = None,
        *,
        batchable: bool = False,
        batch_dim: int | Sequence[int] = 0,
    ) -> Any:
        """Mark a method as callable through a Runner (usable bare or with options)."""
        config = MethodConfig(batchable=batchable, batch_dim=_batch_dim(batch_dim))

        def mark(func: Callable[..., Any]) -> Callable[..., Any]:
            setattr(func, _METHOD_ATTR, config)
            return func

        return mark(fn) if fn is not None else mark

    @classmethod
    def add_method(
        cls,
        name: str,
        fn: Callable[..., Any],
        *,
        batchable: bool = False,
        batch_dim: int | Sequence[int] = 0,
    ) -> None:
        """Add a method at run time (framework runnables build their methods from signatures)."""
        if not name.isidentifier() or name.startswith("_"):
            raise InvalidArgument(f"runnable method name {name!r} is not a public identifier")
        setattr(cls, name, fn)
        cls.methods = {**cls.methods, name: MethodConfig(batchable, _batch_dim(batch_dim))}


def _batch_dim(value: int | Sequence[int]) -> int | tuple[int, int]:
    if isinstance(value, bool):
        raise InvalidArgument("batch_dim must be an int or a pair (input_dim, output_dim)")
    if isinstance(value, int):
        return value
    dims = tuple(value)
    if len(dims) != 2 or not all(isinstance(d, int) for d in dims):
        raise InvalidArgument("batch_dim must be an int or a pair (input_dim, output_dim)")
    return (int(dims[0]), int(dims[1]))


# -- a shared background loop for blocking callers --------------------------------------------

_bg_lock = threading.Lock()
_bg_loop: asyncio.AbstractEventLoop | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
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


class _Snapshot:
    """Batching figures fetched from another process, read like a BatchStats."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self._snapshot = snapshot
        self.calls = snapshot.get("calls", 0)
        self.rows = snapshot.get("rows", 0)
        self.batches = snapshot.get("batches", 0)

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot


class RunnerMethod:
    """``runner.<name>``: call one runnable method with ``run`` or ``async_run``."""

    def __init__(self, runner: Runner, name: str, config: MethodConfig) -> None:
        self.runner = runner
        self.name = name
        self.config = config
        self._dispatchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Dispatcher] = (
            weakref.WeakKeyDictionary()
        )
        self._stats: BatchStats | None = None
        self._remote_stats: dict[str, Any] | None = None
        self._coalescers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Dispatcher] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def stats(self) -> BatchStats | _Snapshot | None:
        """Batch-size, queue-wait and run-time figures (batchable methods, once called).

        For a runner in its own process these are the figures last fetched from it by
        :meth:`Runner.refresh_remote_stats`.
        """
        return self._stats if self._remote_stats is None else _Snapshot(self._remote_stats)

    def _call_in_worker(self, loop: asyncio.AbstractEventLoop, args: tuple, kwargs: dict) -> Any:
        bound = getattr(self.runner._require_instance(), self.name)
        return loop.run_in_executor(
            self.runner._executor, functools.partial(bound, *args, **kwargs)
        )

    def _dispatcher(self, loop: asyncio.AbstractEventLoop) -> Dispatcher:
        dispatcher = self._dispatchers.get(loop)
        if dispatcher is None:
            from tiffin.batching import BatchStats

            # a dispatcher holds its loop strongly: drop those of loops that have closed
            for old in [old for old in self._dispatchers if old.is_closed()]:
                del self._dispatchers[old]

            if self._stats is None:
                self._stats = BatchStats()

            async def infer(*args: Any, **kwargs: Any) -> Any:
                return await self._call_in_worker(loop, args, kwargs)

            dispatcher = self._new_dispatcher(infer, stats=self._stats)
            self._dispatchers[loop] = dispatcher
        return dispatcher

    def _new_dispatcher(self, infer: Callable[..., Any], **options: Any) -> Dispatcher:
        from tiffin.batching import Dispatcher

        return Dispatcher(
            infer,
            name=f"{self.runner.name}.{self.name}",
            batch_dim=self.config.batch_dim,
            max_batch_size=self.config.max_batch_size,
            max_latency_ms=self.config.max_latency_ms,
            **options,
        )

    def _coalescer(self, loop: asyncio.AbstractEventLoop, remote: RemoteRunner) -> Dispatcher:
        """For a runner in its own process: the calls of one event-loop turn, one message.

        The calls an API worker makes while its event loop works through one batch of ready
        requests are merged (same options and shapes, as a batch would be) and sent to the
        runner process as one call of many rows; the runner process's dispatcher batches it
        with the other workers' calls, and the answer is split again here. This spares the
        runner process a message, a pickle and a dispatcher entry per request. Nothing is held
        back: a merge starts as soon as the loop gets to it, many may be in flight at once, and
        the runner process does the real batching. When a merged call fails, each of its calls
        is sent again alone, so an error reaches only the calls it belongs to -- unless the
        runner process is unavailable or overloaded, which every call hears at once.
        """
        coalescer = self._coalescers.get(loop)
        if coalescer is None:
            from tiffin.batching import current_batch_calls
            from tiffin.exceptions import Overloaded, RunnerUnavailable

            for old in [old for old in self._coalescers if old.is_closed()]:
                del self._coalescers[old]
            name = self.name

            async def send(*args: Any, **kwargs: Any) -> Any:
                return await remote.call(name, args, kwargs, calls=current_batch_calls())

            coalescer = self._new_dispatcher(
                send,
                max_concurrency=1 << 30,
                hold=False,
                isolate=lambda exc: not isinstance(exc, (Overloaded, RunnerUnavailable)),
            )
            self._coalescers[loop] = coalescer
        return coalescer

    async def aclose_dispatchers(self) -> None:
        """Stop the batching loops the running event loop has for this method."""
        loop = asyncio.get_running_loop()
        for table in (self._dispatchers, self._coalescers):
            dispatcher = table.get(loop)
            if dispatcher is not None:
                with contextlib.suppress(Exception):
                    await dispatcher.aclose()

    def close_dispatchers(self) -> None:
        """Stop this method's batching loops (queued callers get an error)."""
        try:
            current = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, dispatcher in [*self._dispatchers.items(), *self._coalescers.items()]:
            if loop.is_closed() or not loop.is_running():
                continue
            if loop is current:
                loop.create_task(dispatcher.aclose())
            else:
                future = asyncio.run_coroutine_threadsafe(dispatcher.aclose(), loop)
                with contextlib.suppress(Exception):
                    future.result(timeout=5)
        self._dispatchers.clear()
        self._coalescers.clear()

    async def async_run(self, *args: Any, **kwargs: Any) -> Any:
        """Run from any event loop; batchable methods are batched with concurrent callers."""
        remote = self.runner._remote
        if remote is not None:
            if self.config.batchable:
                return await self._coalescer(asyncio.get_running_loop(), remote).submit(
                    *args, **kwargs
                )
            return await remote.call(self.name, args, kwargs)
        self.runner._require_instance()
        loop = asyncio.get_running_loop()
        if self.config.batchable:
            return await self._dispatcher(loop).submit(*args, **kwargs)
        return await self._call_in_worker(loop, args, kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run and wait, from any thread (including one that runs an event loop)."""
        remote = self.runner._remote
        if remote is not None:
            with contextlib.suppress(RuntimeError):
                if asyncio.get_running_loop() is remote.loop:
                    raise RunnerError(
                        f"{self.runner.name}.{self.name}.run() would block the server's event "
                        "loop; in an async API function use `await ....async_run(...)`"
                    )
            return remote.call_threadsafe(self.name, args, kwargs)
        self.runner._require_instance()
        future = asyncio.run_coroutine_threadsafe(
            self.async_run(*args, **kwargs), _background_loop()
        )
        return future.result()

    def __repr__(self) -> str:
        return f"<RunnerMethod {self.runner.name}.{self.name} {self.config}>"


class Runner:
    """A runnable class plus how to run it: name, models, batching settings."""

    def __init__(
        self,
        runnable_class: type[Runnable],
        *,
        name: str | None = None,
        models: Sequence[Model] | None = None,
        max_batch_size: int | None = None,
        max_latency_ms: float | None = None,
        method_configs: Mapping[str, Mapping[str, Any]] | None = None,
        runnable_init_params: Mapping[str, Any] | None = None,
        embedded: bool = False,
    ) -> None:
        if not (isinstance(runnable_class, type) and issubclass(runnable_class, Runnable)):
            raise InvalidArgument("Runner needs a subclass of tiffin.Runnable")
        if not runnable_class.methods:
            raise InvalidArgument(
                f"{runnable_class.__name__} has no methods marked with @tiffin.Runnable.method"
            )
        self.runnable_class = runnable_class
        self.name = validate_part(name or runnable_class.__name__.lower(), "runner name")
        self.models = list(models or [])
        self.runnable_init_params = dict(runnable_init_params or {})
        #: with ``--workers N``: loaded in every API worker (batches form per worker, no hop)
        #: instead of in runner processes shared by the workers
        self.embedded = bool(embedded)
        method_configs = dict(method_configs or {})
        unknown = set(method_configs) - set(runnable_class.methods)
        if unknown:
            raise InvalidArgument(
                f"method_configs names unknown method(s) {sorted(unknown)} of runner {self.name!r}"
            )
        self.methods: dict[str, RunnerMethod] = {}
        for method, config in runnable_class.methods.items():
            overrides = {"max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms}
            overrides.update(method_configs.get(method) or {})
            self.methods[method] = RunnerMethod(self, method, _configure(config, overrides))
        self._instance: Runnable | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._remote: RemoteRunner | None = None

    def __getattr__(self, name: str) -> RunnerMethod:
        methods = self.__dict__.get("methods", {})
        if name in methods:
            return methods[name]
        raise AttributeError(
            f"runner {self.__dict__.get('name')!r} has no method {name!r}; "
            f"it has {sorted(methods)}"
        )

    def configure(
        self, *, max_batch_size: int | None = None, max_latency_ms: float | None = None
    ) -> None:
        """Change batching settings of every method (before the runner is first called)."""
        overrides = {"max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms}
        for method in self.methods.values():
            method.config = _configure(method.config, overrides)
            method._dispatchers.clear()

    @property
    def is_initialized(self) -> bool:
        """Loaded here (``init_local``) or attached to its own process (``attach_remote``)."""
        return self._instance is not None or self._remote is not None

    @property
    def is_remote(self) -> bool:
        """Calls go to runner processes (``attach_remote``), not to this process."""
        return self._remote is not None

    @property
    def is_ready(self) -> bool:
        """Able to take calls now: loaded here, or connected to every one of its processes."""
        if self._remote is not None:
            return self._remote.connected
        return self._instance is not None

    def attach_remote(self, remote: RemoteRunner) -> None:
        """Send every call to runner processes through ``remote`` instead of running here."""
        if self._instance is not None:
            raise RunnerError(f"runner {self.name!r} is already initialised in this process")
        self._remote = remote

    async def refresh_remote_stats(self) -> None:
        """Fetch the batching figures of a runner that lives in other processes."""
        if self._remote is None:
            return
        snapshots = await self._remote.stats()
        for name, method in self.methods.items():
            if name in snapshots:
                method._remote_stats = snapshots[name]

    def init_local(self) -> None:
        """Load the runnable in this process (scripts, notebooks, single-process serving)."""
        if self._instance is not None:
            logger.warning("runner %r is already initialised", self.name)
            return
        try:
            instance = self.runnable_class(**self.runnable_init_params)
        except TypeError as exc:
            raise RunnerError(f"cannot initialise runner {self.name!r}: {exc}") from exc
        threads = _cpu_threads(self.runnable_class)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix=f"tiffin-{self.name}",
            initializer=_limit_native_threads,
            initargs=(threads,),
        )
        self._instance = instance

    def destroy(self) -> None:
        """Release the runnable, its batching loops and its worker thread."""
        for method in self.methods.values():
            method.close_dispatchers()
        self._instance = None
        self._remote = None
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def _require_instance(self) -> Runnable:
        if self._instance is None:
            raise RunnerError(
                f"runner {self.name!r} is not initialised: call runner.init_local() in a script "
                "or notebook, or pass it to tiffin.Service(runners=[...]) and serve the service"
            )
        return self._instance

    def __repr__(self) -> str:
        return f"Runner(name={self.name!r}, methods={sorted(self.methods)})"


def _cpu_threads(runnable_class: type[Runnable]) -> int:
    """Native (BLAS/OpenMP) threads for the worker thread.

    One by default: a batch already amortises the model's fixed cost, and extra OpenMP
    threads fight the event loop (and other processes) for the same cores, which shows up as
    long latency tails. ``TIFFIN_RUNNER_THREADS=N`` gives runnables that declare
    ``SUPPORTS_CPU_MULTI_THREADING`` N threads (``0``: every CPU this process may use).
    """
    wanted = os.environ.get("TIFFIN_RUNNER_THREADS", "").strip()
    if not runnable_class.SUPPORTS_CPU_MULTI_THREADING or not wanted:
        return 1
    if not wanted.isdigit():
        raise InvalidArgument(f"TIFFIN_RUNNER_THREADS must be a whole number, got {wanted!r}")
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


def _configure(config: MethodConfig, overrides: Mapping[str, Any]) -> MethodConfig:
    unknown = set(overrides) - {"max_batch_size", "max_latency_ms", "batchable", "batch_dim"}
    if unknown:
        raise InvalidArgument(f"unknown method option(s) {sorted(unknown)}")
    values = {k: v for k, v in overrides.items() if v is not None}
    if "batch_dim" in values:
        values["batch_dim"] = _batch_dim(values["batch_dim"])
    size = values.get("max_batch_size", config.max_batch_size)
    latency = values.get("max_latency_ms", config.max_latency_ms)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise InvalidArgument(f"max_batch_size must be a positive integer, got {size!r}")
    if not isinstance(latency, int | float) or isinstance(latency, bool) or latency <= 0:
        raise InvalidArgument(f"max_latency_ms must be a positive number, got {latency!r}")
    return replace(config, **values)
