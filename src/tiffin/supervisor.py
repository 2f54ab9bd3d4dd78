"""``--workers N``: a process tree that shares runners across API workers and survives faults.

The parent (this module's :class:`Supervisor`) holds the address (each API worker listens on
a socket of its own, see :mod:`tiffin.listeners`), starts one process per runner (or
``runners.<name>.workers`` of them) and N API worker processes, and watches them all:

* API workers run the service's HTTP app; each runner call goes over a Unix socket to the
  runner's process (see :mod:`tiffin.remote`), where one dispatcher batches calls from every
  worker together.
* A process that dies (killed, segfault, out of memory) is started again; callers in flight to
  a dead runner get a 503 at once, ``/readyz`` answers 503 until it is back, the event is
  logged and counted (``tiffin_process_restarts_total``).
* SIGTERM or SIGINT: API workers stop accepting and drain in-flight requests (bounded by the
  grace period), then runner processes stop, and the parent exits 0.

This is the one module besides :mod:`tiffin.serve` that starts processes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiffin.config import ServeSettings
from tiffin.listeners import Listeners
from tiffin.service import Service

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

logger = logging.getLogger("tiffin.supervisor")
_CTX = multiprocessing.get_context("spawn")
GRACE_S = 30.0
_RESTART_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # the same name tiffin.metrics reads
RUNNER_STOP = signal.SIGUSR1  # how the supervisor stops a runner process


@dataclass(frozen=True)
class ServiceSource:
    """How a child process rebuilds the service: a ``module:attr`` target or a model tag."""

    target: str | None = None
    model_tag: str | None = None
    batching: bool = True
    cwd: str = field(default_factory=os.getcwd)

    def load(self) -> Service:
        if self.model_tag is not None:
            from tiffin import models
            from tiffin.model_service import build_service

            return build_service(models.get(self.model_tag), batching=self.batching)
        from tiffin.serve import resolve_service

        assert self.target is not None
        return resolve_service(self.target, cwd=self.cwd)


def _exit_with_parent(stop_signal: int) -> None:
    """If the supervisor dies (even by SIGKILL), stop too instead of lingering as an orphan."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), stop_signal)

    threading.Thread(target=watch, name="tiffin-parent-watch", daemon=True).start()


def _child_logging(settings: ServeSettings) -> None:
    from tiffin.serve import configure_logging

    configure_logging(settings.log_level, settings.log_format)


def runner_main(
    source: ServiceSource, runner_name: str, socket_path: str, settings_json: str, ready: Any
) -> None:
    """A runner process: load one runner, serve it on ``socket_path`` until SIGTERM."""
    import asyncio

    from tiffin.remote import serve_runner
    from tiffin.server import _configure_runners

    # the parent decides when runners stop (after the API workers have drained)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    _exit_with_parent(RUNNER_STOP)
    settings = ServeSettings.model_validate_json(settings_json)
    _child_logging(settings)
    service = source.load()
    _configure_runners(service, settings)
    runner = next(r for r in service.runners if r.name == runner_name)
    started = time.perf_counter()
    runner.init_local()
    # as the API process does once loaded (tiffin.server): the ~10^5 objects of the frameworks
    # and the model live as long as the process, and a full collection walking them stalled
    # every call in this process for ~100 ms (the p99 of serve --workers under load)
    gc.freeze()
    logger.info(
        "runner %r loaded in %.2fs (pid %d)", runner.name, time.perf_counter() - started,
        os.getpid(),
    )
    try:
        # the event loop uvicorn's "auto" picks for the API workers: uvloop when it is installed
        with asyncio.Runner(loop_factory=_loop_factory()) as loop_runner:
            loop_runner.run(serve_runner(runner, socket_path, ready.set, stop_signal=RUNNER_STOP))
    finally:
        runner.destroy()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def worker_cpus(pin: bool | None, workers: int, runner_processes: int = 0) -> list[int] | None:
    """The CPU each API worker is pinned to, by index; None to leave them to the scheduler.

    ``pin`` None (the default) pins only when the API workers are the only busy processes
    (every runner embedded) and there is one per CPU this process may use (its affinity: a
    container's cpuset, ``taskset``, or the whole machine): the workers then have those CPUs
    to themselves, and pinned they stop trading places and caches. On two cores shared with
    the load generator, ``--workers 2`` with embedded runners served 9% more requests pinned
    (16,200-17,600 -> 18,100-18,500 req/s) with a lower p99 (7-8 -> 5-6 ms); with a runner
    process beside them it made no measurable difference, and pinned workers could not make
    room for it. With fewer workers than CPUs, or a CPU quota instead of a cpuset, the
    scheduler knows better. ``True`` pins worker i to the i-th allowed CPU (round robin);
    ``False`` never.
    """
    if pin is False or not hasattr(os, "sched_getaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if pin is None and (runner_processes or len(allowed) != workers):
        return None
    return [allowed[index % len(allowed)] for index in range(workers)]


def api_worker_main(
    source: ServiceSource,
    settings_json: str,
    runner_sockets: dict[str, list[str]],
    cpu: int | None,
    listener: socket.socket,
) -> None:
    """An API worker: the service's HTTP app with every runner attached to its processes."""
    import asyncio

    import uvicorn

    from tiffin.remote import RemoteRunner
    from tiffin.serve import _uvicorn_options, exit_zero_after_graceful_stop
    from tiffin.server import build_app

    _exit_with_parent(signal.SIGTERM)
    if cpu is not None:  # before any thread starts: they all inherit it
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, {cpu})
    settings = ServeSettings.model_validate_json(settings_json)
    _child_logging(settings)
    service = source.load()
    remotes = []
    for runner in service.runners:
        if runner.name not in runner_sockets:
            continue  # embedded: this worker loads it when the app starts
        remote = RemoteRunner(runner.name, runner_sockets[runner.name])
        runner.attach_remote(remote)
        remotes.append(remote)

    async def start_remotes() -> None:
        for remote in remotes:
            await remote.start()
        deadline = time.monotonic() + 30  # runner processes are up: connecting takes ms
        while not all(r.connected for r in remotes) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    async def stop_remotes() -> None:
        for remote in remotes:
            await remote.aclose()

    service.startup_hooks.insert(0, start_remotes)
    service.shutdown_hooks.append(stop_remotes)
    # embedded runners load here; meanwhile this worker's socket does not listen, so the
    # kernel gives its connections to the workers that serve (tiffin.listeners)
    app = build_app(service, settings, load_before_serving=True)
    options = _uvicorn_options(settings)
    options.pop("host"), options.pop("port")
    server = uvicorn.Server(uvicorn.Config(app, **options))
    state = app.state.tiffin

    def stop(exc: BaseException) -> None:  # loading failed: exit, the supervisor restarts us
        server.should_exit = True

    state.on_fatal = stop
    with exit_zero_after_graceful_stop():
        server.run(sockets=[listener])
    if state.load_error is not None:
        sys.exit(3)


@dataclass
class Child:
    """One process the supervisor keeps running."""

    role: str  # "runner" or "api"
    name: str
    target: Any
    args: tuple[Any, ...]
    ready: Any = None  # a runner's Event, set once it listens
    #: an API worker's listening socket, made fresh for each start (tiffin.listeners)
    listen: Callable[[], socket.socket] | None = None
    process: BaseProcess | None = None
    restarts: int = 0
    started_at: float = 0.0

    def start(self) -> None:
        listener = self.listen() if self.listen is not None else None
        args = self.args if listener is None else (*self.args, listener)
        try:
            self.process = _CTX.Process(target=self.target, args=args, name=self.name)
            self.process.start()
        finally:
            if listener is not None:
                listener.close()  # the worker has its own copy now
        self.started_at = time.monotonic()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


class Supervisor:
    """Starts and watches the runner processes and API workers of one service."""

    def __init__(self, source: ServiceSource, settings: ServeSettings, workers: int) -> None:
        self.source = source
        self.settings = settings
        self.workers = workers
        self.stopping = False
        self.workdir = Path(tempfile.mkdtemp(prefix="tiffin-"))  # mode 0700
        self.children: list[Child] = []
        self._restart_counter: Any = None

    def _plan(self, service: Service, listeners: Listeners) -> None:
        settings_json = self.settings.model_dump_json()
        runner_sockets: dict[str, list[str]] = {}
        for runner in service.runners:
            if runner.embedded:
                continue  # loaded by each API worker itself
            overrides = self.settings.runners.get(runner.name)
            count = overrides.workers if overrides is not None and overrides.workers else 1
            for index in range(count):
                path = str(self.workdir / f"{runner.name}-{index}.sock")
                runner_sockets.setdefault(runner.name, []).append(path)
                ready = _CTX.Event()
                self.children.append(
                    Child("runner", f"tiffin-runner-{runner.name}-{index}", runner_main,
                          (self.source, runner.name, path, settings_json, ready), ready)
                )
        processes = sum(len(paths) for paths in runner_sockets.values())
        cpus = worker_cpus(self.settings.pin_workers, self.workers, processes)
        if cpus is not None:
            logger.info("API workers pinned to CPUs %s", cpus)
        for index in range(self.workers):
            cpu = cpus[index] if cpus is not None else None
            self.children.append(
                Child("api", f"tiffin-api-{index}", api_worker_main,
                      (self.source, settings_json, runner_sockets, cpu),
                      listen=listeners.for_worker)
            )

    def _count_restart(self, child: Child) -> None:
        if self._restart_counter is None:
            from prometheus_client import Counter

            self._restart_counter = Counter(
                "tiffin_process_restarts", "Server processes restarted after they died",
                ["role", "name"],
            )
        self._restart_counter.labels(child.role, child.name).inc()

    def _handle_signal(self, signum: int, frame: Any) -> None:
        if not self.stopping:
            logger.info("received %s: draining API workers, then stopping runners",
                        signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        """Run until SIGTERM/SIGINT; the exit status for the command."""
        metrics_dir = self.workdir / "metrics"
        metrics_dir.mkdir()
        # before prometheus-client is imported here (it reads this once); children inherit it
        previous_env = os.environ.get(MULTIPROC_ENV)
        os.environ[MULTIPROC_ENV] = str(metrics_dir)
        previous: dict[int, Any] = {}
        listeners: Listeners | None = None
        try:
            service = self.source.load()  # names and counts only: nothing is loaded here
            from tiffin.server import _configure_runners

            _configure_runners(service, self.settings)
            listeners = Listeners(self.settings.host, self.settings.port)
            previous = {sig: signal.signal(sig, self._handle_signal)
                        for sig in (signal.SIGTERM, signal.SIGINT)}
            self._plan(service, listeners)
            runners = [c for c in self.children if c.role == "runner"]
            for child in runners:
                child.start()
            if not self._wait_for_runners(runners):
                return self._shutdown(code=1)
            try:
                for child in self.children:
                    if child.role == "api":
                        child.start()
            except OSError as exc:
                logger.error("could not start the API workers: %s", exc)
                return self._shutdown(code=1)
            logger.info(
                "serving %r on http://%s:%d with %d API worker(s) and runner processes %s",
                service.name, self.settings.host, listeners.port, self.workers,
                [c.name for c in self.children if c.role == "runner"],
            )
            self._watch()
            return self._shutdown()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if listeners is not None:
                listeners.close()
            shutil.rmtree(self.workdir, ignore_errors=True)
            if previous_env is None:
                os.environ.pop(MULTIPROC_ENV, None)
            else:
                os.environ[MULTIPROC_ENV] = previous_env

    def _wait_for_runners(self, runners: list[Child]) -> bool:
        """API workers start once every runner process listens (so none serves 503s)."""
        for child in runners:
            while not child.ready.wait(0.2):
                assert child.process is not None
                if self.stopping:
                    return False
                if not child.process.is_alive():
                    logger.error(
                        "runner process %s exited with code %s while loading; see the log "
                        "above", child.name, child.process.exitcode,
                    )
                    return False
        return True

    def _watch(self) -> None:
        while not self.stopping:
            sentinels: dict[Any, Child] = {
                c.process.sentinel: c for c in self.children if c.process is not None
            }
            ready = multiprocessing.connection.wait(list(sentinels), timeout=0.5)
            for sentinel in ready:
                child = sentinels[sentinel]
                if self.stopping:
                    break
                self._restart(child)

    def _restart(self, child: Child) -> None:
        assert child.process is not None
        code = child.process.exitcode
        child.process.join(0)
        if child.role == "api":
            with contextlib.suppress(Exception):
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(child.process.pid)
        lived = time.monotonic() - child.started_at
        if lived > 30:
            child.restarts = 0
        delay = _RESTART_BACKOFF_S[min(child.restarts, len(_RESTART_BACKOFF_S) - 1)]
        logger.warning(
            "%s process %s (pid %s) died with exit code %s after %.1fs; restarting in %.1fs",
            child.role, child.name, child.process.pid, code, lived, delay,
        )
        self._count_restart(child)
        child.restarts += 1
        time.sleep(delay)
        if not self.stopping:
            if child.ready is not None:
                child.ready.clear()
            try:
                child.start()
            except OSError as exc:  # e.g. its listening socket: the next round tries again
                child.started_at = time.monotonic()  # so the back-off grows
                logger.error("could not restart %s: %s", child.name, exc)

    def _shutdown(self, code: int = 0) -> int:
        api = [c for c in self.children if c.role == "api" and c.alive]
        for child in api:
            assert child.process is not None and child.process.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S + 5
        for child in api:
            assert child.process is not None
            child.process.join(max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                logger.warning("API worker %s did not drain in time; killing it", child.name)
                child.process.kill()
                child.process.join(5)
        runners = [c for c in self.children if c.role == "runner" and c.alive]
        for child in runners:
            assert child.process is not None and child.process.pid is not None
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.process.pid, RUNNER_STOP)
        for child in runners:
            assert child.process is not None
            child.process.join(10)
            if child.process.is_alive():
                child.process.kill()
                child.process.join(5)
        logger.info("stopped")
        return code


def serve_workers(source: ServiceSource, settings: ServeSettings, workers: int) -> int:
    """Serve with ``workers`` API processes sharing runner processes; the exit status."""
    from tiffin.serve import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    return Supervisor(source, settings, workers).run()
