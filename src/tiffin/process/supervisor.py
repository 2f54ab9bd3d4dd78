"""``--workers N``: a process tree that shares runners across API workers and survives faults.

The parent (this module's :class:`Supervisor`) holds the address (each API worker listens on
a socket of its own, see :mod:`tiffin.process.listeners`), starts one process per runner (or
``runners.<name>.workers`` of them) and N API worker processes
(:mod:`tiffin.process.workers`), and watches them all:

* API workers run the service's HTTP app; each runner call goes over a Unix socket to the
  runner's process (see :mod:`tiffin.runner.remote`), where one dispatcher batches calls from
  every worker together.
* A process that dies (killed, segfault, out of memory) is started again; callers in flight to
  a dead runner get a 503 at once, ``/readyz`` answers 503 until it is back, the event is
  logged and counted (``tiffin_process_restarts_total``).
* SIGTERM or SIGINT: API workers stop accepting and drain in-flight requests (bounded by the
  grace period), then runner processes stop, and the parent exits 0.
* GPUs: runner process i of a runner that may use a GPU sees only GPU i mod n of the n this
  machine shows (``CUDA_VISIBLE_DEVICES``, :func:`~tiffin.device_settings.gpu_for_process`);
  a runner asked for a GPU the machine does not have stops the start in one line.

Only this layer (:mod:`tiffin.process`) starts processes.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from tiffin.config import MULTIPROC_ENV, ServeSettings
from tiffin.device_settings import CPU, gpu_for_process, visible_gpus
from tiffin.process.listeners import Listeners
from tiffin.process.logs import configure_logging
from tiffin.process.workers import (
    RUNNER_STOP,
    ServiceSource,
    api_worker_main,
    runner_main,
    worker_cpus,
)
from tiffin.runner.devices import count_gpus
from tiffin.runner.runner import check_runner_device
from tiffin.serving.service import Service

__all__ = ["GRACE_S", "Child", "ServiceSource", "Supervisor", "serve_workers"]

logger = logging.getLogger("tiffin.supervisor")
_CTX = multiprocessing.get_context("spawn")
GRACE_S = 30.0
_RESTART_BACKOFF_S = (0.1, 0.5, 1.0, 2.0, 5.0)


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
        gpus: list[str] | None = None  # the GPUs to share out, counted once when needed
        for runner in service.runners:
            if runner.embedded:
                continue  # loaded by each API worker itself
            check_runner_device(runner)
            overrides = self.settings.runners.get(runner.name)
            count = overrides.workers if overrides is not None and overrides.workers else 1
            if gpus is None and runner.supports_gpu and runner.device != CPU:
                gpus = visible_gpus(os.environ)
                if gpus is None:  # CUDA_VISIBLE_DEVICES unset: torch counts them
                    gpus = [str(gpu) for gpu in range(count_gpus())]
            for index in range(count):
                path = str(self.workdir / f"{runner.name}-{index}.sock")
                runner_sockets.setdefault(runner.name, []).append(path)
                ready = _CTX.Event()
                gpu = gpu_for_process(runner.device, index, gpus or []) if (
                    runner.supports_gpu) else None
                self.children.append(
                    Child("runner", f"tiffin-runner-{runner.name}-{index}", runner_main,
                          (self.source, runner.name, path, settings_json, ready, gpu), ready)
                )
                if gpu is not None:
                    logger.info("runner process %s-%d sees GPU %s", runner.name, index, gpu)
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

            service.apply_settings(self.settings)
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
    configure_logging(settings.log_level, settings.log_format)
    return Supervisor(source, settings, workers).run()
