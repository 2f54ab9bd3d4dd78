"""The FIFO of calls waiting for a batch: a :class:`~tiffin.runner.batching.Dispatcher`'s queue.

* An :class:`Entry` is one queued call (or one chunk of an oversize call); ``seq`` is its
  submission order, which the queue keeps, even for entries put back (:meth:`CallQueue.put_back`).
* A batch is the head, then the entries with its batch key and options, in order, while they
  fit in its rows; the others keep their places.
* Leaving is lazy: an entry taken out (discarded, taken, expired) stays in the deque, skipped,
  until it reaches the front; ``rows`` counts only the entries still queued.
* Deadlines: entries leave, oldest first, once they have been queued ``limit`` seconds.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import Overloaded
from tiffin.runner import containers
from tiffin.runner.isolation import Isolation, Step
from tiffin.runner.merging import Call, same_options

if TYPE_CHECKING:
    from tiffin.runner.hold import HoldTracker

__all__ = ["CallQueue", "Entry", "Run", "chunks", "next_run", "overloaded"]


@dataclass(eq=False, slots=True)
class Entry(Call):
    """One queued call (or one chunk of an oversize call)."""

    key: Hashable = None
    enqueued: float = 0.0
    seq: int = 0  # submission order, which the queue keeps
    queued: bool = True  # read and written by CallQueue only
    struck: bool = False  # rode a failed isolation step: never rides again


def overloaded(name: str, waited: float, max_latency_ms: float, drain: float) -> Overloaded:
    """The error of a call that waited ``waited`` seconds, past ``max_latency_ms``, with a
    queue that takes ``drain`` seconds to empty (its ``Retry-After``)."""
    retry_after = float(max(1, math.ceil(drain)))
    return Overloaded(
        f"runner method '{name}' is overloaded: a call waited {waited * 1000:.0f} ms in its "
        f"batching queue without its batch starting, past max_latency_ms={max_latency_ms:g}; "
        f"the server has more work than it can serve, retry after {retry_after:g} s (or add "
        "capacity, or raise max_latency_ms)",
        retry_after=retry_after,
    )


def chunks(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    rows: int,
    size: int,
    dim: int,
    key: Hashable,
    now: float,
    seq: Iterator[int],
    future: Callable[[], Any],
) -> list[Entry]:
    """The entries of one call of ``rows`` rows: itself, or consecutive chunks of at most
    ``size`` rows (cut along ``dim``) when it holds more; ``future()`` makes each one's."""
    if rows <= size:
        return [Entry(args, kwargs, rows, future(), key, now, next(seq))]
    sizes = [size] * (rows // size) + ([rows % size] if rows % size else [])
    pieces = [containers.split(arg, sizes, dim) for arg in args]
    return [
        Entry(tuple(p[i] for p in pieces), kwargs, n, future(), key, now, next(seq))
        for i, n in enumerate(sizes)
    ]


@dataclass(eq=False, slots=True)
class Run:
    """One model call: a batch from the queue, or an isolation step with passengers."""

    calls: list[Entry]
    rows: int
    taken: list[Entry]  # those taken from the queue
    taken_rows: int
    step: Step[Entry] | None = None


class CallQueue:
    """The FIFO of waiting entries and the ``rows`` still queued. Leaving is lazy: a discarded
    entry stays in the deque, skipped, until it reaches the front."""

    __slots__ = ("_entries", "rows")

    def __init__(self) -> None:
        self._entries: deque[Entry] = deque()
        self.rows = 0

    def append(self, entry: Entry) -> None:
        self._entries.append(entry)
        self.rows += entry.rows

    def discard(self, entry: Entry) -> None:
        """Take ``entry`` out of the queue, if it is still in it."""
        if entry.queued:
            entry.queued = False
            self.rows -= entry.rows

    def head(self) -> Entry | None:
        """The oldest entry still queued."""
        entries = self._entries
        while entries and not entries[0].queued:
            entries.popleft()
        return entries[0] if entries else None

    def take_batch(self, max_rows: int, riders: bool = False) -> list[Entry]:
        """The head, then the entries with its batch key, in order, while within ``max_rows``;
        ``riders``: passengers of an isolation step, not struck ones."""
        head = self.head()
        assert head is not None, "take_batch() on an empty queue"
        entries = self._entries
        batch, rows, skipped = [entries.popleft()], head.rows, []
        while entries and rows < max_rows:
            entry = entries[0]
            if not entry.queued:
                entries.popleft()
            elif (
                entry.key == head.key
                and same_options(entry.kwargs, head.kwargs)
                and not (riders and entry.struck)
            ):
                if rows + entry.rows > max_rows:
                    break
                batch.append(entries.popleft())
                rows += entry.rows
            else:
                skipped.append(entries.popleft())
        entries.extendleft(reversed(skipped))
        for entry in batch:
            self.discard(entry)
        return batch

    def rides_with(self, lead: Entry, room: int) -> bool:
        """Whether the head may ride along with ``lead`` (an isolation step) in ``room`` rows:
        it fits, shares ``lead``'s batch key and options, and has not been struck."""
        head = self.head()
        return (
            head is not None
            and not head.struck
            and head.rows <= room
            and head.key == lead.key
            and same_options(head.kwargs, lead.kwargs)
        )

    def put_back(self, entries: list[Entry]) -> None:
        """Passengers of a failed step: back in the queue at their places, struck."""
        entries = [entry for entry in entries if not entry.future.done()]
        for entry in entries:
            entry.queued, entry.struck = True, True
            self.rows += entry.rows
        live = [entry for entry in self._entries if entry.queued]
        self._entries = deque(sorted([*live, *entries], key=lambda entry: entry.seq))

    def expire(self, when: float, limit: float) -> list[Entry]:
        """Take out, oldest first, the entries with ``enqueued + limit <= when``."""
        expired = []
        while (head := self.head()) is not None and head.enqueued + limit <= when:
            self.discard(self._entries.popleft())
            expired.append(head)
        return expired

    def drain(self, exc: BaseException) -> None:
        """Take out every entry still queued and answer it with ``exc``."""
        while self._entries:
            entry = self._entries.popleft()
            if entry.queued:
                self.discard(entry)
                if not entry.future.done():
                    entry.future.set_exception(exc)


def next_run(
    queue: CallQueue,
    isolation: Isolation[Entry],
    holds: HoldTracker | None,
    now: Callable[[], float],
    size: int,
    stepped: bool,
) -> Run | float | None:
    """What a dispatcher starts now: a run (taken out of ``queue``, or ``isolation``'s next
    step with riders); or the time to hold the queued calls until (``holds``; None: never
    hold); or ``None``, nothing. ``stepped``: the last run started was a step
    (:mod:`~tiffin.runner.isolation` says when steps and batches take turns)."""
    head, step = queue.head(), isolation.next_step() if isolation.pieces else None
    if step is not None:
        tested = sum(call.rows for call in step.calls)
        room = size - tested
        rides = not step.alone and queue.rides_with(step.calls[0], room)
        if head is None or rides or not stepped or isolation.rows >= size:
            if holds is not None and not step.alone:
                waiting = min(step.calls[0].enqueued, head.enqueued if head else math.inf)
                until = holds.until(now(), queue.rows + isolation.rows, waiting)
                if until is not None:
                    return until
            isolation.begin(step)
            taken = queue.take_batch(room, riders=True) if rides else []
            rows = sum(entry.rows for entry in taken)
            return Run([*step.calls, *taken], tested + rows, taken, rows, step)
    if head is None or isolation.rows >= size:
        return None
    if holds is not None and not isolation.pieces:
        until = holds.until(now(), queue.rows, head.enqueued)
        if until is not None:
            return until
    batch = queue.take_batch(size)
    rows = sum(entry.rows for entry in batch)
    return Run(batch, rows, batch, rows)
