"""Runners in their own processes: the runner-process server and the API workers' client.

A runner process loads one runner, listens on a Unix socket, and runs every call through the
runner's own adaptive dispatcher, so calls from all API workers batch together. An API worker
holds a :class:`RemoteRunner` per runner: one multiplexed connection per runner process,
reconnected in the background; when a runner process dies, every call in flight to it fails
at once with :class:`~tiffin.exceptions.RunnerUnavailable` (HTTP 503), and new calls fail fast
until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiffin import transport
from tiffin.batch_stats import add_snapshots
from tiffin.exceptions import RunnerError, RunnerUnavailable

if TYPE_CHECKING:
    from tiffin.runner import Runner

logger = logging.getLogger("tiffin.remote")

CALL, STATS, PING = "call", "stats", "ping"
OK, ERROR = "ok", "err"


# -- the runner process ------------------------------------------------------------------------


async def _handle(runner: Runner, message: Any) -> tuple[str, Any]:
    kind, body = message
    if kind == CALL:
        method_name, args, kwargs, calls = body
        method = runner.methods[method_name]
        try:
            return OK, await method.async_run(*args, **kwargs)
        finally:
            # an API worker merged `calls` callers' calls into this one: count each
            stats = method.stats
            if calls > 1 and stats is not None:
                stats.calls += calls - 1
    if kind == STATS:
        return OK, {
            name: method.stats.snapshot()
            for name, method in runner.methods.items()
            if method.stats is not None
        }
    if kind == PING:
        return OK, {"pid": os.getpid(), "ready": runner.is_initialized}
    raise ValueError(f"unknown message kind {kind!r}")


async def serve_runner(
    runner: Runner,
    socket_path: str,
    ready: Callable[[], None],
    *,
    stop_signal: int = signal.SIGTERM,
) -> None:
    """Serve ``runner`` (already initialised) on ``socket_path`` until ``stop_signal``.

    Ctrl-C (and a SIGTERM sent to the whole process group, as systemd does) reaches runner
    processes too; under a supervisor they must outlive the API workers' drain, so the
    supervisor passes its own stop signal and every other one is ignored here.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in {signal.SIGINT, signal.SIGTERM} - {stop_signal}:
        loop.add_signal_handler(sig, lambda: None)
    loop.add_signal_handler(stop_signal, stop.set)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks: set[asyncio.Task[None]] = set()
        frames = transport.FrameWriter(writer)

        async def answer(call_id: int, message: Any) -> None:
            try:
                status, value = await _handle(runner, message)
            except BaseException as exc:  # the caller gets it, the process keeps serving
                if isinstance(exc, asyncio.CancelledError):
                    raise
                status, value = ERROR, transport.picklable_error(exc)
            try:
                await frames.send((call_id, status, value))
            except (ConnectionError, RuntimeError):
                pass  # the API worker went away
            except Exception as exc:  # the answer would not pickle: say so instead of hanging
                error = RunnerError(
                    f"runner {runner.name!r} returned a value that cannot be sent back to the "
                    f"API worker ({type(value).__name__}): {exc}"
                )
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await frames.send((call_id, ERROR, error))

        try:
            while True:
                call_id, message = await transport.receive(reader)
                task = asyncio.create_task(answer(call_id, message))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the API worker went away; its calls already running finish on their own
        finally:
            writer.close()

    Path(socket_path).unlink(missing_ok=True)
    server = await asyncio.start_unix_server(
        connection, path=socket_path, limit=transport.STREAM_LIMIT
    )
    os.chmod(socket_path, 0o600)
    ready()
    async with server:
        await stop.wait()
    logger.info("runner %r (pid %d) stopping", runner.name, os.getpid())


# -- the API worker's side -----------------------------------------------------------------------


class _Endpoint:
    """One connection to one runner process, multiplexing calls by id."""

    def __init__(self, owner: RemoteRunner, path: str) -> None:
        self.owner = owner
        self.path = path
        self.writer: transport.FrameWriter | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count()
        self.task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self.writer is not None

    async def run(self) -> None:
        delay = 0.05
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(
                    self.path, limit=transport.STREAM_LIMIT
                )
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            delay = 0.05
            self.writer = transport.FrameWriter(writer)
            try:
                while True:
                    call_id, status, value = await transport.receive(reader)
                    future = self.pending.pop(call_id, None)
                    if future is None or future.done():
                        continue
                    if status == OK:
                        future.set_result(value)
                    else:
                        future.set_exception(value)
            except (asyncio.IncompleteReadError, ConnectionError, OSError):
                pass
            finally:
                self.writer = None
                writer.close()
                self._fail_pending()

    def _fail_pending(self) -> None:
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(
                    RunnerUnavailable(
                        f"runner {self.owner.name!r} process went away during the call; "
                        "it is being restarted, retry shortly"
                    )
                )

    async def request(self, message: Any) -> Any:
        writer = self.writer
        if writer is None:
            raise self.owner.unavailable()
        call_id = next(self.ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        try:
            await writer.send((call_id, message))
            return await future
        except (ConnectionError, RuntimeError) as exc:
            raise self.owner.unavailable() from exc
        finally:
            self.pending.pop(call_id, None)


class RemoteRunner:
    """The API worker's handle on a runner's processes (one endpoint per process)."""

    def __init__(self, name: str, socket_paths: list[str]) -> None:
        self.name = name
        self.endpoints = [_Endpoint(self, path) for path in socket_paths]
        self.loop: asyncio.AbstractEventLoop | None = None
        self._turn = itertools.count()
        self.messages = 0  # calls sent to the runner processes (after merging)

    def unavailable(self) -> RunnerUnavailable:
        return RunnerUnavailable(
            f"runner {self.name!r} is not available (its process is starting or restarting); "
            "retry shortly"
        )

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        for endpoint in self.endpoints:
            endpoint.task = asyncio.create_task(endpoint.run(), name=f"tiffin-remote-{self.name}")

    async def aclose(self) -> None:
        for endpoint in self.endpoints:
            if endpoint.task is not None:
                endpoint.task.cancel()
                await asyncio.gather(endpoint.task, return_exceptions=True)
            endpoint._fail_pending()

    @property
    def connected(self) -> bool:
        return all(endpoint.connected for endpoint in self.endpoints)

    def _pick(self) -> _Endpoint:
        live = [e for e in self.endpoints if e.connected]
        if not live:
            raise self.unavailable()
        # the least busy process; ties in turn, so idle processes share the load
        turn = next(self._turn)
        return min(live, key=lambda e: (len(e.pending), (self.endpoints.index(e) - turn) % len(
            self.endpoints)))

    async def call(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, calls: int = 1
    ) -> Any:
        """Run ``method`` in a runner process; ``calls``: how many callers' calls it merges."""
        self.messages += 1
        return await self._pick().request((CALL, (method, args, kwargs, calls)))

    def call_threadsafe(self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Blocking call from a thread that is not the API worker's event loop."""
        if self.loop is None:
            raise self.unavailable()
        future = asyncio.run_coroutine_threadsafe(self.call(method, args, kwargs), self.loop)
        return future.result()

    async def stats(self) -> dict[str, dict[str, Any]]:
        """Each method's batching figures, summed over the runner's processes."""
        merged: dict[str, dict[str, Any]] = {}
        for endpoint in self.endpoints:
            if not endpoint.connected:
                continue
            try:
                snapshot = await asyncio.wait_for(endpoint.request((STATS, None)), 2)
            except (RunnerUnavailable, TimeoutError):
                continue
            for method, snap in snapshot.items():
                merged[method] = add_snapshots(merged[method], snap) if method in merged else snap
        return merged
