"""``tiffin.Runner``: a runnable class, how to run it, and where its calls go.

A :class:`Runner` owns a :class:`~tiffin.runner.runnable.Runnable` class and its settings
(name, models, one :class:`~tiffin.batch_settings.BatchSettings` per method). Each method is
``runner.<method>``, a :class:`RunnerMethod` with ``run(...)`` (blocking, from any thread) and
``await async_run(...)`` (from any event loop).

Calls go to the runner's *backend*, which is one of two, or none yet:

* :class:`~tiffin.runner.local.LocalBackend` (``init_local()``): the runnable lives in this
  process; batchable methods go through an adaptive dispatcher, and every call runs on the
  backend's one worker thread, so a model never sees two calls at once.
* :class:`~tiffin.runner.remote.RemoteRunner` (``attach_remote(...)``): the runnable lives in
  runner processes; calls travel over Unix sockets (an API worker under ``--workers N``).

``embedded`` is not a backend but a deployment choice: under ``--workers N`` an embedded
runner gets a local backend in every API worker instead of runner processes.

``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) and ``precision`` say where a runnable
that supports them runs (:mod:`tiffin.device_settings`): ``device`` defaults to ``auto`` for
a runnable that lists ``"nvidia.com/gpu"`` in ``SUPPORTED_RESOURCES``, to ``cpu`` otherwise;
asking a CPU-only runnable for a GPU, or for a precision its ``__init__`` does not take, is
refused when the runner is made or configured.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

from tiffin.device_settings import AUTO, CPU, GPU_RESOURCE, check_device, check_precision
from tiffin.exceptions import InvalidArgument, RunnerError
from tiffin.runner.runnable import Runnable, placement_parameters
from tiffin.tag import validate_part

if TYPE_CHECKING:
    from tiffin.batch_settings import BatchSettings
    from tiffin.config import RunnerSettings
    from tiffin.runner.stats import BatchStats
    from tiffin.store.models import Model

__all__ = [
    "REQUEST_DEADLINE",
    "Backend",
    "RemoteStats",
    "Runner",
    "RunnerMethod",
    "call_on_loop",
    "check_runner_device",
    "wait_result",
]

logger = logging.getLogger("tiffin.runner")

#: The ``time.monotonic()`` by which the request being served must be answered; the server
#: sets it for every request, and a blocking ``run()`` (a sync API function's call, in a
#: worker thread) waits no longer than that. None: no deadline (scripts, notebooks).
REQUEST_DEADLINE: ContextVar[float | None] = ContextVar("tiffin_request_deadline", default=None)


def wait_result(
    future: concurrent.futures.Future[Any], loop: asyncio.AbstractEventLoop, what: str
) -> Any:
    """``future`` (of a coroutine on ``loop``)'s result, waiting no longer than the request's
    deadline: past it the call is given up -- once this returns, a queued call has left its
    queue -- and a TimeoutError frees the thread."""
    deadline = REQUEST_DEADLINE.get()
    timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()  # the coroutine's task is cancelled on its loop, a turn later
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_turns(2), loop).result(timeout=5)
        raise TimeoutError(f"{what} did not finish before the request's deadline") from None


def call_on_loop(
    loop: asyncio.AbstractEventLoop | None,
    call: Callable[[], Coroutine[Any, Any, Any]],
    what: str,
    unavailable: Callable[[], Exception],
) -> Any:
    """``call()``'s result, run on the server's event loop ``loop`` from another thread (a sync
    API function's): refused on that loop itself (it would block it), ``unavailable()`` while
    there is no loop yet, and bounded by the request's deadline (:func:`wait_result`)."""
    with contextlib.suppress(RuntimeError):
        if asyncio.get_running_loop() is loop:
            raise RunnerError(
                f"{what}.run() would block the server's event loop; in an async API function "
                "use `await ....async_run(...)`"
            )
    if loop is None:
        raise unavailable()
    future = asyncio.run_coroutine_threadsafe(call(), loop)
    return wait_result(future, loop, f"runner method '{what}'")


async def _turns(count: int) -> None:
    """Let ``count`` turns of the running loop go by (a cancellation lands meanwhile)."""
    for _ in range(count):
        await asyncio.sleep(0)


class Backend(Protocol):
    """Where a runner's calls run: in this process, or in runner processes."""

    @property
    def ready(self) -> bool:
        """Able to take calls now."""

    async def call(
        self, method: RunnerMethod, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``method`` from the running event loop."""

    def call_blocking(
        self, method: RunnerMethod, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run ``method`` and wait, from a thread."""

    async def aclose_loop(self) -> None:
        """Stop what this backend runs on the running event loop (its batching loops)."""

    def close(self) -> None:
        """Release everything; queued calls get an error."""


class RemoteStats:
    """Batching stats fetched from runner processes, read like a :class:`BatchStats`."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self._snapshot = snapshot
        self.calls = snapshot.get("calls", 0)
        self.rows = snapshot.get("rows", 0)
        self.batches = snapshot.get("batches", 0)

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot


class RunnerMethod:
    """``runner.<name>``: call one runnable method with ``run`` or ``async_run``."""

    def __init__(self, runner: Runner, name: str, settings: BatchSettings) -> None:
        self.runner = runner
        self.name = name
        self.settings = settings
        #: batching stats of this process's dispatchers (a local backend makes it on first use)
        self.local_stats: BatchStats | None = None
        #: the last stats fetched from runner processes (a remote backend sets it)
        self.remote_stats: RemoteStats | None = None

    @property
    def stats(self) -> BatchStats | RemoteStats | None:
        """Batch-size, queue-wait and run-time figures (batchable methods, once called).

        For a runner in its own processes these are the figures last fetched from them by
        :meth:`Runner.refresh_remote_stats`.
        """
        return self.remote_stats if self.remote_stats is not None else self.local_stats

    async def async_run(self, *args: Any, **kwargs: Any) -> Any:
        """Run from any event loop; batchable methods are batched with concurrent callers."""
        return await self.runner.require_backend().call(self, args, kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run and wait, from any thread (including one that runs an event loop)."""
        return self.runner.require_backend().call_blocking(self, args, kwargs)

    async def aclose_dispatchers(self) -> None:
        """Stop the batching loops the running event loop has for this runner."""
        if self.runner.backend is not None:
            await self.runner.backend.aclose_loop()

    def __repr__(self) -> str:
        return f"<RunnerMethod {self.runner.name}.{self.name} {self.settings}>"


class Runner:
    """A runnable class plus how to run it: name, models, batch settings, backend."""

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
        device: str | None = None,
        precision: str | None = None,
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
        for method, settings in runnable_class.methods.items():
            overrides = {"max_batch_size": max_batch_size, "max_latency_ms": max_latency_ms}
            overrides.update(method_configs.get(method) or {})
            self.methods[method] = RunnerMethod(self, method, settings.with_overrides(**overrides))
        self._device: str | None = None
        self._precision: str | None = None
        self.set_placement(device=device, precision=precision)
        #: where calls go: None until init_local() or attach_remote()
        self.backend: Backend | None = None

    def __getattr__(self, name: str) -> RunnerMethod:
        methods = self.__dict__.get("methods", {})
        if name in methods:
            return methods[name]
        raise AttributeError(
            f"runner {self.__dict__.get('name')!r} has no method {name!r}; it has {sorted(methods)}"
        )

    # -- settings -------------------------------------------------------------------------

    @property
    def supports_gpu(self) -> bool:
        """Whether the runnable may run on a GPU (``"nvidia.com/gpu"`` in its resources)."""
        return GPU_RESOURCE in self.runnable_class.SUPPORTED_RESOURCES

    @property
    def device(self) -> str:
        """The device setting: as given, else ``auto`` for a GPU-capable runnable, else ``cpu``."""
        if self._device is not None:
            return self._device
        return AUTO if self.supports_gpu else CPU

    @property
    def precision(self) -> str | None:
        return self._precision

    def set_placement(self, *, device: str | None = None, precision: str | None = None) -> None:
        """Set ``device`` and ``precision`` (``None`` leaves one as it is); checked here."""
        if device is not None:
            device = check_device(device)
            if device not in (AUTO, CPU) and not self.supports_gpu:
                raise InvalidArgument(
                    f"runner {self.name!r} runs on the CPU only ({self.runnable_class.__name__}"
                    f".SUPPORTED_RESOURCES = {self.runnable_class.SUPPORTED_RESOURCES}), but "
                    f"device {device!r} was asked for"
                )
            self._device = device
        if precision is not None:
            precision = check_precision(precision)
            if "precision" not in placement_parameters(self.runnable_class):
                raise InvalidArgument(
                    f"runner {self.name!r} has no precision setting: "
                    f"{self.runnable_class.__name__}.__init__ takes no 'precision'"
                )
            self._precision = precision

    def configure(
        self, *, max_batch_size: int | None = None, max_latency_ms: float | None = None
    ) -> None:
        """Change batching settings of every method (before the runner is first called)."""
        for method in self.methods.values():
            method.settings = method.settings.with_overrides(
                max_batch_size=max_batch_size, max_latency_ms=max_latency_ms
            )

    def apply_settings(self, settings: RunnerSettings) -> None:
        """Apply the server's ``runners.<name>`` settings (config file, environment)."""
        self.configure(
            max_batch_size=settings.max_batch_size, max_latency_ms=settings.max_latency_ms
        )
        self.set_placement(device=settings.device, precision=settings.precision)
        if settings.embedded is not None:
            self.embedded = settings.embedded
        if self.embedded and settings.workers is not None:
            raise InvalidArgument(
                f"runner {self.name!r} is embedded (loaded in every API worker), so it has no "
                "processes for its workers setting to count: drop one of the two"
            )

    # -- backends -------------------------------------------------------------------------

    @property
    def is_ready(self) -> bool:
        """Able to take calls now: loaded here, or connected to every one of its processes."""
        return self.backend is not None and self.backend.ready

    def init_local(self) -> None:
        """Load the runnable in this process (scripts, notebooks, single-process serving)."""
        from tiffin.runner.local import LocalBackend

        if self.backend is not None:
            logger.warning("runner %r is already initialised", self.name)
            return
        self.backend = LocalBackend(self)

    def attach_remote(self, remote: Backend) -> None:
        """Send every call to runner processes through ``remote`` instead of running here."""
        if self.backend is not None:
            raise RunnerError(f"runner {self.name!r} is already initialised in this process")
        self.backend = remote

    async def refresh_remote_stats(self) -> None:
        """Fetch the batching stats of a runner that lives in other processes."""
        refresh = getattr(self.backend, "refresh_stats", None)
        if refresh is not None:
            await refresh(self)

    def require_backend(self) -> Backend:
        if self.backend is None:
            raise RunnerError(
                f"runner {self.name!r} is not initialised: call runner.init_local() in a script "
                "or notebook, or pass it to tiffin.Service(runners=[...]) and serve the service"
            )
        return self.backend

    def destroy(self) -> None:
        """Release the runnable, its batching loops and its worker thread."""
        backend, self.backend = self.backend, None
        if backend is not None:
            backend.close()

    def __repr__(self) -> str:
        return f"Runner(name={self.name!r}, methods={sorted(self.methods)})"


def check_runner_device(runner: Runner) -> None:
    """Refuse at start-up a runner asked for a device this process cannot give it."""
    from tiffin.runner.devices import check_available

    check_available(
        runner.device, supports_gpu=runner.supports_gpu, what=f"runner {runner.name!r}"
    )
