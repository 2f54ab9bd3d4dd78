"""Adaptive batching: many single calls in, few batched model calls out.

A :class:`Dispatcher` sits in front of one batchable runner method. Callers ``await
dispatcher.submit(payload, ..., **options)`` and get exactly their own rows back; behind them one
loop task merges waiting calls into batches, runs each with the runner's ``infer`` coroutine and
splits the result. Plain asyncio, no threads; all its time comes from a :class:`Clock`.

* FIFO: the oldest waiting call is always in the next batch, which then takes the following
  calls, in order, with the same batch key (keyword arguments by ``==``, payload kinds and
  non-batch shapes) while they fit in ``max_batch_size``; the others keep their place.
* Rows, not requests: a call of 64 rows counts 64; a call of more than ``max_batch_size`` rows
  is cut into consecutive chunks, queued in order and re-joined for its caller, never rejected.
* Continuous batching: when the model is free and calls wait, a batch starts; calls that come
  while it runs form the next one, so batches grow with load. ``max_concurrency`` batches run
  at a time (default 1: the model is one resource).
* A free model is held back only while calls come fast enough that its fixed cost ``b`` alone
  would keep it busy: at most ``b`` for rows expected within ``b``, ``2·b`` for closed-loop
  callers on their way back, never past ``max_latency_ms / 4`` (:mod:`~tiffin.runner.hold`).
  A lone call on an idle dispatcher runs at once.
* ``max_latency_ms`` is a deadline that sheds load, not a wait window: a call still queued that
  long is answered at once with :class:`~tiffin.exceptions.Overloaded` (HTTP 503, ``Retry-After``
  the time the queue would take by the cost model). A started batch is never cancelled.
* Failures are isolated: when ``infer`` raises on a batch of several calls, they are bisected
  while the model keeps serving the queue (:mod:`~tiffin.runner.isolation`): a call gets the
  model's exception only when it failed alone, the others their results.
* Cancellation: a cancelled caller (its client hung up) leaves the queue and its rows never
  reach the model; if its batch had started, its result is dropped.
* Inline runs: given ``inline``, a run of one call with none waiting is offered to it first (no
  task; its backend runs a cheap one on the event loop itself); :data:`BUSY` leaves the run to
  ``infer``. A call to an idle dispatcher still alone a turn later is started by its caller.
* Event loops: a dispatcher binds to the loop of its first ``submit``. Another running loop is an
  error, except once the first has closed (one ``asyncio.run`` per call): then it binds afresh.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
from collections.abc import Awaitable, Callable
from typing import Any, Final

from tiffin import batch_settings as settings
from tiffin.exceptions import InvalidArgument, Overloaded, RunnerError
from tiffin.runner import containers
from tiffin.runner.hold import Clock, HoldTracker, LoopClock, TimerHandle
from tiffin.runner.isolation import Isolation
from tiffin.runner.merging import answer, attempt, fail, isolates
from tiffin.runner.queueing import CallQueue, Entry, Run, chunks, next_run, overloaded
from tiffin.runner.stats import BatchStats

__all__ = ["BUSY", "Clock", "Dispatcher", "LoopClock", "TimerHandle"]


#: what ``inline`` answers when it cannot run the model now: the run goes to ``infer``
BUSY: Final = object()


class Dispatcher:
    """Batches the calls of one runner method by the rules above: ``infer(*merged_payloads,
    **options)`` is awaited once per batch. ``batch_dim``: the dimension payloads are merged
    along, or an ``(input_dim, output_dim)`` pair. ``hold=False`` never holds a free model back;
    ``isolate(exc)`` says whether a failed batch of several calls is isolated (default:
    always; else every call gets the error). ``clock``: default, the clock of the loop the
    dispatcher binds to. ``inline(rows, *merged_payloads, **options)``: runs a batch
    synchronously on the event loop, or answers :data:`BUSY`."""

    def __init__(
        self,
        infer: Callable[..., Awaitable[Any]],
        *,
        name: str = "predict",
        batch_dim: settings.BatchDim | list[int] = 0,
        max_batch_size: int = 1024,
        max_latency_ms: float = 5000.0,
        max_concurrency: int = 1,
        stats: BatchStats | None = None,
        hold: bool = True,
        isolate: Callable[[Exception], bool] | None = None,
        clock: Clock | None = None,
        inline: Callable[..., Any] | None = None,
    ) -> None:
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise InvalidArgument(
                f"max_concurrency must be a positive int, not {max_concurrency!r}"
            )
        self.name = name
        dims = settings.check_batch_dim(batch_dim)
        self.input_dim, self.output_dim = settings.input_dim(dims), settings.output_dim(dims)
        self.max_batch_size = settings.check_max_batch_size(max_batch_size)
        self.max_latency_ms = settings.check_max_latency_ms(max_latency_ms)
        self.max_concurrency = max_concurrency
        self.stats = stats if stats is not None else BatchStats()
        self.hold = hold
        self._isolate = isolate
        self._infer = infer
        self._inline = inline
        self._limit = self.max_latency_ms / 1000.0
        self._holds = HoldTracker(self.max_batch_size, self._limit)  # kept across event loops
        self.cost = self._holds.cost
        self._given_clock = clock  # None: the clock of the loop it binds to
        self._closed = False
        self._bound: asyncio.AbstractEventLoop | None = None
        self._seq = itertools.count()  # submission order
        self._reset()

    def _reset(self) -> None:
        """Fresh per-loop state (also when rebinding after the old loop closed)."""
        self._queue = CallQueue()
        self._isolation: Isolation[Entry] = Isolation()
        self._in_flight = 0
        self._running_rows = 0  # rows taken from the queue into runs not yet over
        self._stepped = False  # the last run started was an isolation step
        self._holds.started = None
        self._wake: asyncio.Event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()
        self._timer: TimerHandle | None = None

    @property
    def queued_rows(self) -> int:
        """Rows waiting in the queue now."""
        return self._queue.rows

    @property
    def isolating_rows(self) -> int:
        """Rows of failed batches being isolated now."""
        return self._isolation.rows

    @property
    def in_flight(self) -> int:
        """Model calls running now (batches and isolation steps)."""
        return self._in_flight

    def population(self) -> int:
        """The steady number of rows in the dispatcher, 0 if none (:mod:`~tiffin.runner.hold`)."""
        return self._holds.population.steady()

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        """Queue one call and wait for its own rows of the batch result."""
        loop = self._bind()
        if not args:
            raise InvalidArgument(
                f"batchable runner method '{self.name}' needs at least one positional payload"
            )
        dim, size = self.input_dim, self.max_batch_size
        rows = containers.count_rows(args[0], dim)
        for arg in args[1:]:
            other = containers.count_rows(arg, dim)
            if other != rows:
                raise InvalidArgument(
                    f"the payloads of one call to '{self.name}' hold different row counts "
                    f"({rows} and {other}) along batch_dim={dim}"
                )
        key = (len(args), *(containers.batch_key(arg, dim) for arg in args))
        now = self._clock.now()
        self.stats.calls += 1
        self.stats.rows += rows
        self._holds.arrivals.add(now, rows)
        entries = chunks(args, kwargs, rows, size, dim, key, now, self._seq, loop.create_future)
        alone = len(entries) == 1 and self._idle(0)
        for entry in entries:
            self._enqueue(entry)
        try:
            if alone:
                await asyncio.sleep(0)  # calls that come in this turn join the queue
                self._start_alone(entries[0])
            else:
                self._wake.set()
            if len(entries) == 1:
                return await entries[0].future
            futures = [entry.future for entry in entries]
            await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
            for future in futures:  # in order: the earliest failing chunk's error wins
                error = future.exception() if future.done() else None
                if error is not None:
                    raise error
            return containers.concat([future.result() for future in futures], self.output_dim)
        except asyncio.CancelledError:
            self.stats.cancelled += 1
            raise
        except Overloaded:
            self.stats.overloaded += 1
            raise
        finally:
            for entry in entries:
                self._drop(entry)

    def _bind(self) -> asyncio.AbstractEventLoop:
        loop = asyncio.get_running_loop()
        if self._closed:
            raise RunnerError(f"runner method '{self.name}' is shut down; its dispatcher is closed")
        if self._bound is not loop:
            if self._bound is not None and not self._bound.is_closed():
                raise RunnerError(
                    f"the dispatcher of runner method '{self.name}' is bound to another running "
                    "event loop; call it from the loop it first ran in"
                )
            if self._bound is not None:
                if self._timer is not None:  # a given clock outlives the loop: stop its timer
                    self._timer.cancel()
                self._reset()
            self._bound = loop
            self._clock: Clock = self._given_clock or LoopClock(loop)
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name=f"tiffin-dispatcher-{self.name}")
        return loop

    def _idle(self, queued: int) -> bool:
        """Nothing running or being isolated, and ``queued`` rows in the queue."""
        busy = self._in_flight or self._isolation.pieces or self._closed
        return not busy and self._queue.rows == queued

    def _start_alone(self, entry: Entry) -> None:
        """A call that came to an idle dispatcher, a turn after it was queued: still alone (no
        call came in that turn, as requests read at once do), its caller starts it as the loop
        task would (run inline: done on return, the loop task never woken); else that task."""
        choice = self._choose() if entry.queued and self._idle(entry.rows) else None
        if isinstance(choice, Run):
            self._start(choice)
        else:
            self._wake.set()

    def _enqueue(self, entry: Entry) -> None:
        self._queue.append(entry)
        # rows in the dispatcher: queued, running and being isolated
        self._holds.population.note(self._queue.rows + self._running_rows + self._isolation.rows)
        if self._timer is None:
            self._arm_timer(entry.enqueued + self._limit)

    def _drop(self, entry: Entry) -> None:
        """The caller is done with ``entry``: out of the queue, its future settled and read."""
        self._queue.discard(entry)
        future = entry.future
        if not future.done():
            future.cancel()
        elif not future.cancelled():
            future.exception()  # mark a fanned-out error as retrieved

    def _arm_timer(self, when: float) -> None:
        self._timer = self._clock.call_at(when, functools.partial(self._expire, when))

    def _expire(self, when: float) -> None:
        """Answer every call whose deadline is ``when`` or earlier with Overloaded."""
        self._timer = None
        queue = self._queue
        expired = queue.expire(when, self._limit)
        backlog = queue.rows + sum(entry.rows for entry in expired)
        for entry in expired:  # the backlog each one saw: itself and the calls behind it
            if not entry.future.done():
                entry.future.set_exception(self._overloaded(when - entry.enqueued, backlog))
            backlog -= entry.rows
        head = queue.head()
        if head is not None:
            self._arm_timer(head.enqueued + self._limit)

    def _overloaded(self, waited: float, rows: int) -> Overloaded:
        drain = self.cost.drain_seconds(rows, self.max_batch_size, self._in_flight)
        return overloaded(self.name, waited, self.max_latency_ms, drain)

    async def _run(self) -> None:
        wake = self._wake
        try:
            while not (self._closed and not self._isolation.pieces and not self._in_flight):
                choice = self._choose() if self._in_flight < self.max_concurrency else None
                if isinstance(choice, Run):
                    self._start(choice)
                    continue
                wake.clear()
                timer = None if choice is None else self._clock.call_at(choice, wake.set)
                try:
                    await wake.wait()
                finally:
                    if timer is not None:
                        timer.cancel()
        except Exception as exc:  # a bug here must not leave callers waiting forever
            error = RunnerError(f"the batching loop of runner method '{self.name}' failed: {exc}")
            error.__cause__ = exc
            self._queue.drain(error)
            fail(self._isolation.drain(), error, self.name)
            raise

    def _choose(self) -> Run | float | None:
        """What to start now (:func:`~tiffin.runner.queueing.next_run`)."""
        holds = self._holds if self.hold else None
        return next_run(
            self._queue, self._isolation, holds, self._clock.now, self.max_batch_size,
            self._stepped,
        )  # fmt: skip

    def _start(self, run: Run) -> None:
        now, observe = self._clock.now(), self.stats.queue_wait.observe
        for entry in run.taken:
            if not entry.struck:  # a struck one waited for a step before
                observe(now - entry.enqueued)
        self._running_rows += run.taken_rows
        self._holds.batch_starts(self._queue.rows + self._running_rows + self._isolation.rows)
        self._stepped = run.step is not None
        self._in_flight += 1
        lone = len(run.calls) == 1 and not run.step and not self._queue.rows
        if lone and self._inline and self._run_inline(run, self._inline):
            return
        task = asyncio.get_running_loop().create_task(self._execute(run))
        self._batches.add(task)
        task.add_done_callback(self._batches.discard)

    def _counted(self, run: Run) -> None:
        self.stats.batches += 1
        self.stats.isolation_runs += run.step is not None
        self.stats.batch_rows.observe(run.rows)

    def _run_inline(self, run: Run, inline: Callable[..., Any]) -> bool:
        """``run`` (one call) by ``inline`` now: True when it ran; False: BUSY."""
        call, clock, error = run.calls[0], self._clock, None
        started = clock.now()
        try:
            result = inline(run.rows, *call.args, **call.kwargs)
            if result is BUSY:
                return False
            elapsed = clock.now() - started
            answer(run.calls, result, self.output_dim, self.name)
        except Exception as exc:
            error, elapsed = exc, 0.0
        self._counted(run)
        self._done(run)  # whoever started it chooses next; the loop task only if work waits
        self._settle(run, error, elapsed)
        if self._queue.rows or self._isolation.pieces or self._closed:
            self._wake.set()
        return True

    async def _execute(self, run: Run) -> None:
        self._counted(run)
        elapsed = 0.0

        async def infer(payloads: tuple[Any, ...], kwargs: dict[str, Any], n: int) -> Any:
            nonlocal elapsed  # the model's time, without merging and splitting
            started = self._clock.now()
            result = await self._infer(*payloads, **kwargs)
            elapsed = self._clock.now() - started
            return result

        try:
            error = await attempt(infer, run.calls, self.input_dim, self.output_dim, self.name)
        finally:
            self._done(run)
            self._wake.set()
        self._settle(run, error, elapsed)

    def _done(self, run: Run) -> None:
        """``run``'s model call is over: the model is free for the next."""
        self._in_flight -= 1
        self._running_rows -= run.taken_rows

    def _settle(self, run: Run, error: BaseException | None, elapsed: float) -> None:
        """After ``run``: its figures, or its failure answered or isolated."""
        stats, calls, step = self.stats, run.calls, run.step
        if error is None:
            stats.run_time.observe(elapsed)
            self.cost.add(run.rows, elapsed)
            if step is not None:
                self._isolation.passed(step)
            return
        stats.failed_batches += 1
        if len(calls) > 1 and isolates(error, self._isolate):
            if step is None:
                self._isolation.add(calls)
                stats.isolated_calls += len(calls)
            else:  # the passengers are not blamed: back to the queue
                self._isolation.failed(step, answered=False)
                self._requeue(run.taken)
            return
        if step is not None:  # failed alone, or an error that is not isolated
            self._isolation.failed(step, answered=True)
        fail(calls, error, self.name)

    def _requeue(self, entries: list[Entry]) -> None:
        """Passengers of a failed step back in the queue, their deadlines still set."""
        self._queue.put_back(entries)
        if self._timer is not None:
            self._timer.cancel()
        self._expire(self._clock.now())  # answers those past it, sets the timer for the head

    async def aclose(self) -> None:
        """Queued calls get a RunnerError; running batches and the isolation of failed ones
        finish first."""
        if self._closed:
            return
        self._closed = True
        error = RunnerError(f"runner method '{self.name}' was shut down before this call ran")
        self._queue.drain(error)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._wake.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            await asyncio.wait([task])
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)
