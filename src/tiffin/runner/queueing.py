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

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

from tiffin.runner.isolation import Step
from tiffin.runner.merging import Call, same_options

__all__ = ["CallQueue", "Entry", "Run"]


@dataclass(eq=False, slots=True)
class Entry(Call):
    """One queued call (or one chunk of an oversize call)."""

    key: Hashable = None
    enqueued: float = 0.0
    seq: int = 0  # submission order, which the queue keeps
    queued: bool = True  # read and written by CallQueue only
    struck: bool = False  # rode a failed isolation step: never rides again


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
