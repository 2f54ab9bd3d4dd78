"""An API worker's side of a batchable method in a runner process: one message per loop turn.

The calls an API worker makes while its event loop works through one batch of ready requests
are merged -- same keyword arguments and batch key, as a batch would be, at most
``max_batch_size`` rows -- and sent to the runner process as one call of many rows; the
runner process's dispatcher batches it with the other workers' calls, and the answer is split
again here. This spares the runner process a message, a pickle and a dispatcher entry per
request.

Nothing is held back: the calls of one turn go out at the start of the next, any number of
messages may be in flight, and the runner process does the real batching. With
``max_in_flight`` (the Ray backend, whose every message costs an actor call on both sides), at
most that many messages are out at once: the calls that find them all out wait, and go out
merged when one comes back -- no wait window, and no wait at all below the cap. A call of
``max_batch_size`` rows or more goes alone (the runner process splits it). When a merged
message fails, each of its calls is sent again alone, so an error reaches only the calls it
belongs to -- unless the runner process is unavailable or overloaded, which every call hears
at once. A caller that goes away before its turn ends is never sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from tiffin.exceptions import InvalidArgument, Overloaded, RunnerUnavailable
from tiffin.runner import containers
from tiffin.runner.merging import Call, run_merged, same_options

__all__ = ["Coalescer", "Send"]

#: ``send(payloads, kwargs, calls)``: one message to the runner process, merging ``calls``
Send = Callable[[tuple[Any, ...], dict[str, Any], int], Awaitable[Any]]


def _isolate(exc: Exception) -> bool:
    return not isinstance(exc, Overloaded | RunnerUnavailable)


class Coalescer:
    """Merges one event-loop turn's calls of one method into messages; see the module doc."""

    def __init__(
        self,
        send: Send,
        *,
        name: str,
        input_dim: int,
        output_dim: int,
        max_batch_size: int,
        max_in_flight: int | None = None,
    ) -> None:
        self.send = send
        self.name = name
        self.input_dim = input_dim
        self.output_dim = output_dim
        self.max_batch_size = max_batch_size
        self.max_in_flight = max_in_flight
        self._turn: list[tuple[Hashable, Call]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._scheduled = False

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        if not args:
            raise InvalidArgument(
                f"batchable runner method '{self.name}' needs at least one positional payload"
            )
        dim = self.input_dim
        rows = containers.count_rows(args[0], dim)
        key = (len(args), *(containers.batch_key(arg, dim) for arg in args))
        loop = asyncio.get_running_loop()
        if rows >= self.max_batch_size:
            return await self.send(args, kwargs, 1)
        call = Call(args, kwargs, rows, loop.create_future())
        self._turn.append((key, call))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        try:
            return await call.future
        finally:
            if not call.future.done():
                call.future.cancel()  # the caller went away: its rows are never sent

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._turn = self._turn, []
        groups: list[_Group] = []
        for key, call in pending:
            if call.future.done():
                continue
            group = next((g for g in groups if g.takes(key, call, self.max_batch_size)), None)
            if group is None:
                group = _Group(key, call.kwargs)
                groups.append(group)
            group.calls.append(call)
            group.rows += call.rows
        loop = asyncio.get_running_loop()
        for group in groups:
            if self.max_in_flight is not None and len(self._tasks) >= self.max_in_flight:
                self._turn.extend((group.key, call) for call in group.calls)  # wait for one
                continue
            task = loop.create_task(self._run(group.calls))
            self._tasks.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if self._turn and not self._scheduled:  # calls held back by max_in_flight: go now
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _run(self, calls: list[Call]) -> None:
        await run_merged(
            self.send,
            calls,
            input_dim=self.input_dim,
            output_dim=self.output_dim,
            name=self.name,
            isolate=_isolate,
        )

    async def aclose(self) -> None:
        """Wait for the messages in flight (their callers get their answers or errors)."""
        while self._tasks or self._turn:  # held-back calls go out as messages come back
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            else:
                await asyncio.sleep(0)  # their flush is scheduled


@dataclass(eq=False, slots=True)
class _Group:
    """The calls of one turn that go out as one message."""

    key: Hashable
    kwargs: dict[str, Any]
    calls: list[Call] = field(default_factory=list)
    rows: int = 0

    def takes(self, key: Hashable, call: Call, max_rows: int) -> bool:
        return (
            self.key == key
            and self.rows + call.rows <= max_rows
            and same_options(self.kwargs, call.kwargs)
        )
