"""Failure isolation: after a batch fails, find the calls at fault while the model keeps serving.

When ``infer`` raises on a batch of several calls (and ``isolate(exc)`` says so), the
:class:`~tiffin.runner.batching.Dispatcher` hands the calls to its :class:`Isolation`, which
holds them as *pieces* and runs them again, one model call (a *step*) at a time, each step a
run of its own beside the dispatcher's batches. The rules:

* Blamed only alone: a call is answered with the model's error only by a step that ran it and
  nothing else. A call that failed merged with others never gets that error; it runs again.
* Bisection with inference: a piece whose calls failed together is *guilty*; its step runs its
  middle half (a caller that keeps failing tends to come back first or last). If that passes,
  the rest must hold the fault: it stays guilty and is split in turn, with no run of its own.
  If it fails, it is the guilty piece and the rest is *untested*. So one call at fault among n
  costs from log2(n) + 1 steps (first or last) to 2·log2(n), and the calls of a piece of n are
  all answered within 2n - 1 steps whatever fails.
* Untested pieces (most likely innocent) step before guilty ones, in order: they free the most
  callers soonest. A guilty piece of one call runs alone.
* Passengers: the other steps also carry queued calls, taken as a batch would take them (the
  queue's head, then the calls behind it that may share its batch, within ``max_batch_size``
  rows) if the head may share the step's batch: the callers answered by the steps before come
  straight back and keep each model call near a full batch. Such a step is
  held back as a batch would be (:mod:`~tiffin.runner.hold`, the rows being isolated counted as
  queued). A passenger is never blamed: when its step fails it goes back to the queue at its
  place, with its deadline, *struck*: it never rides again, it leads an ordinary batch.
* Sharing the model: while pieces wait, a step runs whenever the model is free, except that
  when the queue's head cannot ride, steps and ordinary batches take turns. Ordinary batches
  start only while the isolation holds fewer than ``max_batch_size`` rows, so the queue's
  deadline still sheds load while a failing model is being isolated.
* Termination: pieces only come from failed batches, a piece of n calls is done within
  2n - 1 steps, and a passenger rides at most once: every call is answered.
* A call whose caller went away (its future done) is dropped before its piece's next step.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from tiffin.runner.merging import Call

__all__ = ["Isolation", "Piece", "Step"]

C = TypeVar("C", bound=Call)


@dataclass(eq=False, slots=True)
class Piece(Generic[C]):
    """Calls of a failed batch that run together next: ``guilty`` if they are known (or
    inferred) to fail together, else untested. ``running`` while one of its steps runs."""

    calls: list[C]
    guilty: bool
    running: bool = False


@dataclass(frozen=True, eq=False, slots=True)
class Step(Generic[C]):
    """One model call of an isolation: ``calls``, those of ``piece`` it runs (all of an
    untested piece, the middle half of a guilty one), and ``rest``, the others, in order."""

    piece: Piece[C]
    calls: list[C]
    rest: list[C]

    @property
    def alone(self) -> bool:
        """A guilty piece of one call: it runs without passengers."""
        return self.piece.guilty and len(self.piece.calls) == 1


def _rows(calls: Sequence[Call]) -> int:
    return sum(call.rows for call in calls)


class Isolation(Generic[C]):
    """The pieces of the failed batches of one dispatcher, in order; see the module doc.

    :meth:`add` takes a failed batch; :meth:`next_step` says what to run next and
    :meth:`begin` marks it running; :meth:`passed` and :meth:`failed` take its outcome.
    """

    __slots__ = ("pieces", "rows")

    def __init__(self) -> None:
        self.pieces: list[Piece[C]] = []  # in order (read only)
        self.rows = 0  # rows of the calls in pieces, running or not

    def add(self, calls: Sequence[C]) -> None:
        """Calls that failed together (a batch of several): one guilty piece."""
        self.pieces.append(Piece(list(calls), guilty=True))
        self.rows += _rows(calls)

    def next_step(self) -> Step[C] | None:
        """The step to run next (``None``: every piece is running, or there is none): the
        first untested piece whole, else the middle half of the first guilty piece."""
        chosen: Piece[C] | None = None
        for piece in list(self.pieces):
            if piece.running:
                continue
            live = [call for call in piece.calls if not call.future.done()]
            if len(live) < len(piece.calls):
                self.rows -= _rows(piece.calls) - _rows(live)
                piece.calls = live
            if not live:
                self.pieces.remove(piece)
            elif not piece.guilty:
                chosen = piece
                break
            elif chosen is None:
                chosen = piece
        if chosen is None:
            return None
        calls = chosen.calls
        if not chosen.guilty or len(calls) == 1:
            return Step(chosen, calls, [])
        half = len(calls) // 2
        start = (len(calls) - half) // 2
        return Step(chosen, calls[start : start + half], calls[:start] + calls[start + half :])

    def begin(self, step: Step[C]) -> None:
        step.piece.running = True

    def passed(self, step: Step[C]) -> None:
        """``step`` ran and its calls got their answers: the rest of a guilty piece is what
        failed, and is guilty in turn."""
        self.rows -= _rows(step.calls)
        self._replace(step.piece, [Piece(step.rest, guilty=True)] if step.rest else [])

    def failed(self, step: Step[C], *, answered: bool) -> None:
        """``step`` failed. ``answered``: its calls got the error (one alone, or an error that
        is not isolated); else they are the guilty piece. The rest of the piece is untested."""
        if answered:
            self.rows -= _rows(step.calls)
        replacing = [] if answered else [Piece(step.calls, guilty=True)]
        if step.rest:
            replacing.append(Piece(step.rest, guilty=False))
        self._replace(step.piece, replacing)

    def _replace(self, piece: Piece[C], pieces: list[Piece[C]]) -> None:
        at = self.pieces.index(piece)
        self.pieces[at : at + 1] = pieces

    def drain(self) -> list[C]:
        """Take out every call (to answer them with an error): the isolation is abandoned."""
        calls = [call for piece in self.pieces for call in piece.calls]
        self.pieces.clear()
        self.rows = 0
        return calls
