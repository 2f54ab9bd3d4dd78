"""The remote backend: an API worker's handle on a runner that lives in runner processes.

:class:`RemoteRunner` holds one multiplexed connection per runner process (calls matched by
id, see :mod:`tiffin.runner.wire`), reconnected in the background. Calls to a batchable
method go through a :class:`~tiffin.runner.coalescer.Coalescer` (one message per event-loop
turn), others straight to the least busy process. When a runner process dies, every call in
flight to it fails at once with :class:`~tiffin.exceptions.RunnerUnavailable` (HTTP 503), and
new calls fail fast until it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import FrameError, RunnerError, RunnerUnavailable
from tiffin.runner import wire
from tiffin.runner.coalescer import Coalescer
from tiffin.runner.runner import RemoteStats, call_on_loop
from tiffin.runner.stats import add_snapshots

if TYPE_CHECKING:
    from tiffin.runner.runner import Runner, RunnerMethod

__all__ = ["RemoteRunner"]


class _Connection:
    """One connection to one runner process, multiplexing calls by id."""

    def __init__(self, owner: RemoteRunner, path: str) -> None:
        self.owner = owner
        self.path = path
        self.writer: wire.FrameWriter | None = None
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ids = itertools.count()
        self.task: asyncio.Task[None] | None = None
        self.telling: set[asyncio.Task[None]] = set()  # cancel messages on their way

    @property
    def connected(self) -> bool:
        return self.writer is not None

    async def run(self) -> None:
        delay = 0.05
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(
                    self.path, limit=wire.STREAM_LIMIT
                )
            except OSError:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
                continue
            delay = 0.05
            self.writer = wire.FrameWriter(writer)
            try:
                while True:
                    try:
                        call_id, (status, value) = await wire.receive(reader)
                    except FrameError as error:  # this call's answer: it alone fails
                        call_id, status, value = error.call_id, wire.ERROR, error
                    future = self.pending.pop(call_id, None)
                    if future is None or future.done():
                        continue
                    if status == wire.OK:
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
            await writer.send(call_id, message)
            return await future
        except (ConnectionError, RuntimeError) as exc:
            raise self.owner.unavailable() from exc
        except asyncio.CancelledError:
            if future.cancelled() or not future.done():  # the caller went away: drop the call
                self._tell(writer, call_id, (wire.CANCEL, None))
            raise
        finally:
            self.pending.pop(call_id, None)

    def _tell(self, writer: wire.FrameWriter, call_id: int, message: Any) -> None:
        """Send ``message`` without waiting for it (a cancelled caller cannot wait)."""

        async def send() -> None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await writer.send(call_id, message)

        task = asyncio.get_running_loop().create_task(send())
        self.telling.add(task)
        task.add_done_callback(self.telling.discard)


class RemoteRunner:
    """The API worker's handle on a runner's processes (one connection per process)."""

    def __init__(self, name: str, socket_paths: list[str]) -> None:
        self.name = name
        self.connections = [_Connection(self, path) for path in socket_paths]
        self.loop: asyncio.AbstractEventLoop | None = None
        self._turn = itertools.count()
        self.messages = 0  # calls sent to the runner processes (after merging)
        #: GPU memory by runner process (``<runner>-<index>``), then by GPU, as last fetched
        self.devices: dict[str, dict[str, dict[str, int]]] = {}
        #: method name -> event loop -> its coalescer
        self._coalescers: dict[
            str, weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Coalescer]
        ] = {}

    def unavailable(self) -> RunnerUnavailable:
        return RunnerUnavailable(
            f"runner {self.name!r} is not available (its process is starting or restarting); "
            "retry shortly"
        )

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        for connection in self.connections:
            connection.task = asyncio.create_task(
                connection.run(), name=f"tiffin-remote-{self.name}"
            )

    async def aclose(self) -> None:
        for connection in self.connections:
            if connection.task is not None:
                connection.task.cancel()
                await asyncio.gather(connection.task, return_exceptions=True)
            connection._fail_pending()

    @property
    def connected(self) -> bool:
        return all(connection.connected for connection in self.connections)

    def _pick(self) -> _Connection:
        live = [e for e in self.connections if e.connected]
        if not live:
            raise self.unavailable()
        # the least busy process; ties in turn, so idle processes share the load
        turn = next(self._turn)
        return min(
            live,
            key=lambda e: (
                len(e.pending),
                (self.connections.index(e) - turn) % len(self.connections),
            ),
        )

    async def call_method(
        self, method: str, args: tuple[Any, ...], kwargs: dict[str, Any], *, calls: int = 1
    ) -> Any:
        """Run ``method`` in a runner process; ``calls``: how many callers' calls it merges."""
        self.messages += 1
        return await self._pick().request((wire.CALL, (method, args, kwargs, calls)))

    async def _stats(self) -> dict[str, dict[str, Any]]:
        """Each method's batching stats, summed over the runner's processes."""
        merged: dict[str, dict[str, Any]] = {}
        for connection in self.connections:
            if not connection.connected:
                continue
            try:
                snapshot = await asyncio.wait_for(connection.request((wire.STATS, None)), 2)
            except (RunnerUnavailable, TimeoutError):
                continue
            for method, snap in snapshot.items():
                merged[method] = add_snapshots(merged[method], snap) if method in merged else snap
        return merged

    async def refresh_stats(self, runner: Runner) -> None:
        """Fetch every method's batching stats into ``runner.<method>.remote_stats``, and each
        process's GPU memory into :attr:`devices`."""
        snapshots = await self._stats()
        for name, method in runner.methods.items():
            if name in snapshots:
                method.remote_stats = RemoteStats(snapshots[name])
        devices: dict[str, dict[str, dict[str, int]]] = {}
        for index, connection in enumerate(self.connections):
            if not connection.connected:
                continue
            try:
                memory = await asyncio.wait_for(connection.request((wire.DEVICES, None)), 2)
            except (RunnerUnavailable, TimeoutError, RunnerError):
                continue
            if memory:
                devices[f"{self.name}-{index}"] = memory
        self.devices = devices

    # -- the Backend protocol (tiffin.runner.runner) --------------------------------------

    @property
    def ready(self) -> bool:
        return self.connected

    def _coalescer(self, method: RunnerMethod, loop: asyncio.AbstractEventLoop) -> Coalescer:
        table = self._coalescers.setdefault(method.name, weakref.WeakKeyDictionary())
        coalescer = table.get(loop)
        if coalescer is None:
            name = method.name

            async def send(payloads: tuple[Any, ...], kwargs: dict[str, Any], calls: int) -> Any:
                return await self.call_method(name, payloads, kwargs, calls=calls)

            settings = method.settings
            coalescer = table[loop] = Coalescer(
                send,
                name=f"{self.name}.{name}",
                input_dim=settings.input_dim,
                output_dim=settings.output_dim,
                max_batch_size=settings.max_batch_size,
            )
        return coalescer

    async def call(
        self, method: RunnerMethod, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if method.settings.batchable:
            return await self._coalescer(method, asyncio.get_running_loop()).submit(*args, **kwargs)
        return await self.call_method(method.name, args, kwargs)

    def call_blocking(
        self, method: RunnerMethod, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Blocking call from a thread that is not the API worker's event loop."""
        return call_on_loop(
            self.loop,
            lambda: self.call_method(method.name, args, kwargs),
            f"{self.name}.{method.name}",
            self.unavailable,
        )

    async def aclose_loop(self) -> None:
        loop = asyncio.get_running_loop()
        for table in self._coalescers.values():
            coalescer = table.pop(loop, None)
            if coalescer is not None:
                await coalescer.aclose()

    def close(self) -> None:
        self._coalescers.clear()
