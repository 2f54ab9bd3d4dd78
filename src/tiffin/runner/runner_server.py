"""The runner process's side of the wire: serve one runner on a Unix socket.

A runner process loads one runner (a local backend) and answers the API workers' messages
(:mod:`tiffin.runner.wire`): ``call`` runs a method through the runner's own adaptive
dispatcher, so calls from every API worker batch together; ``stats`` returns each method's
batching stats; ``devices`` the GPU memory this process holds; ``ping`` says the process is
up. An error goes back to the call it belongs to,
and the process keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import FrameError, RunnerError
from tiffin.runner import wire
from tiffin.runner.wire import picklable_error

if TYPE_CHECKING:
    from tiffin.runner.runner import Runner

__all__ = ["serve_runner"]

logger = logging.getLogger("tiffin.remote")


async def _handle(runner: Runner, message: Any) -> tuple[str, Any]:
    kind, body = message
    if kind == wire.CALL:
        method_name, args, kwargs, calls = body
        method = runner.methods[method_name]
        try:
            return wire.OK, await method.async_run(*args, **kwargs)
        finally:
            # an API worker merged `calls` callers' calls into this one: count each
            stats = method.local_stats
            if calls > 1 and stats is not None:
                stats.calls += calls - 1
    if kind == wire.STATS:
        return wire.OK, {
            name: method.local_stats.snapshot()
            for name, method in runner.methods.items()
            if method.local_stats is not None
        }
    if kind == wire.DEVICES:
        from tiffin.runner.devices import device_memory

        return wire.OK, device_memory()
    if kind == wire.PING:
        return wire.OK, {"pid": os.getpid(), "ready": runner.backend is not None}
    raise RunnerError(f"unknown message kind {kind!r}")


def _forget(calls: dict[int, asyncio.Task[None]], call_id: int, task: asyncio.Task[None]) -> None:
    if calls.get(call_id) is task:
        del calls[call_id]


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
        calls: dict[int, asyncio.Task[None]] = {}  # by call id: what a cancel message stops
        frames = wire.FrameWriter(writer)

        async def answer(call_id: int, message: Any) -> None:
            try:
                status, value = await _handle(runner, message)
            except BaseException as exc:  # the caller gets it, the process keeps serving
                if isinstance(exc, asyncio.CancelledError):
                    raise
                status, value = wire.ERROR, picklable_error(exc)
            try:
                await frames.send(call_id, (status, value))
            except (ConnectionError, RuntimeError):
                pass  # the API worker went away
            except Exception as exc:  # the answer would not pickle: say so instead of hanging
                error = RunnerError(
                    f"runner {runner.name!r} returned a value that cannot be sent back to the "
                    f"API worker ({type(value).__name__}): {exc}"
                )
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await frames.send(call_id, (wire.ERROR, error))

        async def refuse(error: FrameError) -> None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await frames.send(error.call_id, (wire.ERROR, picklable_error(error)))

        try:
            while True:
                try:
                    call_id, message = await wire.receive(reader)
                except FrameError as error:  # this call's arguments: it alone fails
                    logger.warning("runner %r: %s", runner.name, error)
                    call_id, task = error.call_id, asyncio.create_task(refuse(error))
                else:
                    if isinstance(message, tuple) and message[:1] == (wire.CANCEL,):
                        running = calls.get(call_id)
                        if running is not None:
                            running.cancel()  # queued: dropped; started: runs, unanswered
                        continue
                    task = asyncio.create_task(answer(call_id, message))
                calls[call_id] = task
                task.add_done_callback(functools.partial(_forget, calls, call_id))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the API worker went away; its calls already running finish on their own
        finally:
            writer.close()

    Path(socket_path).unlink(missing_ok=True)
    server = await asyncio.start_unix_server(connection, path=socket_path, limit=wire.STREAM_LIMIT)
    os.chmod(socket_path, 0o600)
    ready()
    async with server:
        await stop.wait()
    logger.info("runner %r (pid %d) stopping", runner.name, os.getpid())
