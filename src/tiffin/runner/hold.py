"""A dispatcher's sense of time: its :class:`Clock`, and whether a free model is held back.

Every time a :class:`~tiffin.runner.batching.Dispatcher` reads or waits for comes from a
:class:`Clock`: its event loop's (:class:`LoopClock`) unless it was given another (tests drive a
fake one). Each time its model is free and calls are queued, it asks :func:`decide_hold`, a
pure function of :class:`HoldInputs`, until when to hold them back for more calls to arrive
(:class:`HoldTracker` keeps what that decision reads). What the decision reads:

* ``b``, the model's fixed cost per batch: a :class:`CostModel` fits ``duration ≈ a·n + b`` (n
  rows) over the last ``COST_WINDOW`` batches that succeeded;
* λ, the arrival rate in rows per second over the last ``ARRIVAL_WINDOW_COSTS·b`` seconds,
  and the number of calls in that window (an :class:`ArrivalWindow`); the *gap* is
  ``GAP_INTERVALS`` times the mean time between those calls (calls, not rows: one caller may
  send many rows at once);
* P, the population: the rows that keep coming back (a :class:`Population`).

The rules:

* Nothing is held while ``b`` is unknown (no batch has run yet), when ``max_batch_size`` rows are
  queued, or when calls come too seldom for the fixed cost alone to keep the model busy
  (``λ·b < 1``, as after a quiet spell). So a lone call on an idle dispatcher runs at once.
* *Arrivals are fast* -- more rows are expected within ``b`` than are queued (``λ·b ≥ queued +
  1``): hold until the oldest queued call has waited ``FAST_HOLD_COSTS·b``, or until a gap
  passes with no call arriving, whichever comes first.
* *Callers are on their way back* -- fewer rows are queued than ``min(P, max_batch_size)``: a
  fixed set of callers in a closed loop (a client pool, a load test) comes back with its next
  calls while its answers go out; dispatching the rest without them would split the callers
  into groups that take turns on the model for good, each paying ``b``. The hold starts at the
  first decision that sees this (``hold_started``, kept by the caller until a batch starts) and
  lasts at most ``POPULATION_HOLD_COSTS·b`` from there. While fewer than ``MOST_HERE`` of P
  are queued and no call has arrived since the hold started, the first of the others is waited
  for within that bound; once calls come in again, or when most of P is queued already, only
  until a gap (at least ``GAP_FLOOR_COSTS·b``) passes after the last arrival: a batch is not
  held back for one slow caller.
* When both apply, the hold lasts until the later of the two. Every hold is also bounded by
  ``LATENCY_SHARE`` of ``max_latency_ms`` (from the oldest queued call's arrival for fast
  arrivals, from the start of the hold for the population).

P is the smallest of the most rows that were in the dispatcher at once (queued plus running)
in each of the last ``POPULATION_CYCLES`` batch cycles (from one batch start to the next), if
those peaks are within ``POPULATION_SPREAD_PERCENT`` of each other, else 0: P is the number of
callers only while it holds steady. Independent callers (open loop) make the peaks vary, so
nothing is waited for; when callers leave, the next cycle's smaller peak lowers P at once.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "ARRIVAL_MEMORY",
    "ARRIVAL_WINDOW_COSTS",
    "ARRIVAL_WINDOW_UNLEARNED",
    "COST_WINDOW",
    "FAST_HOLD_COSTS",
    "GAP_FLOOR_COSTS",
    "GAP_INTERVALS",
    "LATENCY_SHARE",
    "MOST_HERE",
    "POPULATION_CYCLES",
    "POPULATION_HOLD_COSTS",
    "POPULATION_SPREAD_PERCENT",
    "ArrivalWindow",
    "Clock",
    "CostModel",
    "HoldDecision",
    "HoldInputs",
    "HoldTracker",
    "LoopClock",
    "Population",
    "TimerHandle",
    "arrival_window",
    "can_hold",
    "decide_hold",
]

# The cost model fits the durations of this many most recent batches.
COST_WINDOW = 50
# The arrival rate is measured over the last ARRIVAL_WINDOW_COSTS·b seconds ...
ARRIVAL_WINDOW_COSTS = 4
# ... or over the last ARRIVAL_WINDOW_UNLEARNED seconds while b is not known yet.
ARRIVAL_WINDOW_UNLEARNED = 1.0
# The most arrivals remembered; past it the oldest are forgotten (the rate reads low, never high).
ARRIVAL_MEMORY = 4096
# The gap that ends a hold: GAP_INTERVALS times the mean time between calls in the window.
GAP_INTERVALS = 2
# Fast arrivals are waited for at most FAST_HOLD_COSTS·b after the oldest queued call arrived.
FAST_HOLD_COSTS = 1.0
# Callers on their way back are waited for at most POPULATION_HOLD_COSTS·b after the hold began.
POPULATION_HOLD_COSTS = 2.0
# Once callers come back (or most are queued) the population hold ends after a gap of at least
# GAP_FLOOR_COSTS·b with no arrival.
GAP_FLOOR_COSTS = 0.25
# "Most of the population is queued": at least this share of it.
MOST_HERE = 0.5
# No hold lasts longer than this share of max_latency_ms.
LATENCY_SHARE = 0.25
# The population is read over this many batch cycles ...
POPULATION_CYCLES = 8
# ... and counts only if the smallest peak is within this many percent of the largest.
POPULATION_SPREAD_PERCENT = 10


class TimerHandle(Protocol):
    """A callback set for later (as :class:`asyncio.TimerHandle`)."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """Where a dispatcher reads the time (monotonic seconds) and sets its timers."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle: ...


@dataclass(frozen=True, slots=True)
class LoopClock:
    """An event loop's timers (``loop.call_at``), and the time they are set in read to the
    microsecond: ``time.monotonic()``, the clock asyncio's ``loop.time()`` reads. (uvloop's
    ``loop.time()`` is libuv's time of the loop's current turn in whole milliseconds: a model
    call run inside one callback would last 0, every batch a multiple of 1 ms, and the cost
    model, the holds and the batch and queue-wait metrics would read those.)"""

    loop: asyncio.AbstractEventLoop

    def now(self) -> float:
        return time.monotonic()

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        return self.loop.call_at(when, callback)


def arrival_window(fixed_cost: float) -> float:
    """Seconds over which arrivals are counted: ``ARRIVAL_WINDOW_COSTS·b``, or
    ``ARRIVAL_WINDOW_UNLEARNED`` while ``b`` is 0."""
    return ARRIVAL_WINDOW_COSTS * fixed_cost or ARRIVAL_WINDOW_UNLEARNED


@dataclass(frozen=True, slots=True)
class HoldInputs:
    """Everything :func:`decide_hold` reads; times are seconds on the dispatcher's clock."""

    now: float
    queued_rows: int  # rows waiting in the queue
    max_batch_size: int
    head_enqueued: float  # when the oldest queued call arrived
    fixed_cost: float  # b, seconds per batch (0: not learned yet)
    arrival_rate: float  # λ, rows per second over arrival_window(fixed_cost)
    arrivals: int  # calls that arrived in that window
    last_arrival: float  # when the latest call arrived
    population: int  # P (0: no steady population)
    hold_started: float | None  # when the current population hold began (None: none yet)
    latency_limit: float  # max_latency_ms, in seconds


@dataclass(frozen=True, slots=True)
class HoldDecision:
    """Hold the queued calls until ``until``; ``until == now`` means dispatch now.

    ``hold_started`` is the value the caller keeps for its next decision: set while a
    population hold goes on, ``None`` once a batch is to start.
    """

    until: float
    hold_started: float | None


def can_hold(fixed_cost: float, queued_rows: int, max_batch_size: int) -> bool:
    """Whether a hold is possible at all: ``b`` is known and less than a full batch is queued.

    The dispatcher reads (and prunes) its arrival window only when it is.
    """
    return fixed_cost > 0 and queued_rows < max_batch_size


def decide_hold(state: HoldInputs) -> HoldDecision:
    """Until when to hold the queued calls back for more to arrive (see the module docstring)."""
    now, fixed, queued = state.now, state.fixed_cost, state.queued_rows
    dispatch = HoldDecision(now, None)
    if not can_hold(fixed, queued, state.max_batch_size):
        return dispatch
    expected = state.arrival_rate * fixed  # rows expected to arrive within b
    if expected < 1:
        return dispatch
    latency_bound = state.latency_limit * LATENCY_SHARE
    gap = GAP_INTERVALS * arrival_window(fixed) / max(state.arrivals, 1)
    until = -math.inf
    if expected >= queued + 1:  # arrivals are fast
        fast_bound = min(FAST_HOLD_COSTS * fixed, latency_bound)
        until = min(state.head_enqueued + fast_bound, state.last_arrival + gap)
    population = min(state.population, state.max_batch_size)
    started = state.hold_started
    if queued < population:  # callers on their way back
        if started is None:
            started = now
        back_by = started + min(POPULATION_HOLD_COSTS * fixed, latency_bound)
        if state.last_arrival > started or queued >= MOST_HERE * population:
            # they are coming back, or most are here: wait only while they keep coming
            latest = max(state.last_arrival, started)
            back_by = min(back_by, latest + max(gap, GAP_FLOOR_COSTS * fixed))
        until = max(until, back_by)
    if until > now:
        return HoldDecision(until, started)
    return dispatch


class ArrivalWindow:
    """The calls that arrived lately: ``(time, rows)`` pairs, oldest first.

    :meth:`add` records an arrival; :meth:`prune` forgets those that left the window. Reads
    (:attr:`calls`, :attr:`rows`, :meth:`rate`, :attr:`last`) change nothing.
    """

    __slots__ = ("_arrivals", "last", "rows")

    def __init__(self, memory: int = ARRIVAL_MEMORY) -> None:
        self._arrivals: deque[tuple[float, int]] = deque(maxlen=memory)
        self.rows = 0  # rows of the arrivals remembered
        self.last = -math.inf  # when the latest call arrived

    @property
    def calls(self) -> int:
        """Calls remembered."""
        return len(self._arrivals)

    def add(self, when: float, rows: int) -> None:
        arrivals = self._arrivals
        if len(arrivals) == arrivals.maxlen:  # the deque drops the oldest: forget its rows
            self.rows -= arrivals[0][1]
        arrivals.append((when, rows))
        self.rows += rows
        self.last = when

    def prune(self, now: float, window: float) -> None:
        """Forget the arrivals at or before ``now - window``."""
        cutoff = now - window
        arrivals = self._arrivals
        while arrivals and arrivals[0][0] <= cutoff:
            self.rows -= arrivals.popleft()[1]

    def rate(self, window: float) -> float:
        """Rows per second, for the remembered arrivals spread over ``window`` seconds."""
        return self.rows / window


class Population:
    """The per-cycle peaks of rows in a dispatcher, read as a steady population (or 0)."""

    __slots__ = ("_peaks", "peak")

    def __init__(self, cycles: int = POPULATION_CYCLES) -> None:
        self._peaks: deque[int] = deque(maxlen=cycles)
        self.peak = 0  # the most rows present at once in the cycle going on

    def note(self, present: int) -> None:
        """``present`` rows are in the dispatcher now (queued plus running)."""
        if present > self.peak:
            self.peak = present

    def end_cycle(self, present: int) -> None:
        """A batch starts: the cycle's peak is kept, the next cycle starts from ``present``."""
        self._peaks.append(self.peak)
        self.peak = present

    def steady(self) -> int:
        """The smallest of the last cycles' peaks if there were enough cycles and the peaks
        are within ``POPULATION_SPREAD_PERCENT`` of each other; else 0."""
        peaks = self._peaks
        if len(peaks) < (peaks.maxlen or 0):
            return 0
        low = min(peaks)
        steady = 100 * low >= (100 - POPULATION_SPREAD_PERCENT) * max(peaks)
        return low if steady else 0


class CostModel:
    """Least-squares fit of batch duration ``a·n + b`` over the most recent batches."""

    def __init__(self, window: int = COST_WINDOW) -> None:
        self._samples: deque[tuple[int, float]] = deque(maxlen=window)
        self.a = 0.0  # seconds per row
        self.b = 0.0  # fixed seconds per batch
        # running sums over the window (n, d, n², n·d), summed afresh every window additions so
        # float error cannot build up: an add costs O(1), not a pass over the window
        self._sums = [0.0, 0.0, 0.0, 0.0]
        self._adds = 0

    def add(self, rows: int, seconds: float) -> None:
        samples = self._samples
        sn, sd, snn, snd = self._sums
        if len(samples) == samples.maxlen:
            n0, d0 = samples[0]
            sn, sd, snn, snd = sn - n0, sd - d0, snn - n0 * n0, snd - n0 * d0
        samples.append((rows, seconds))
        self._adds += 1
        if self._adds % (samples.maxlen or 1) == 0:
            sn = sum(n for n, _ in samples)
            sd = sum(d for _, d in samples)
            snn = sum(n * n for n, _ in samples)
            snd = sum(n * d for n, d in samples)
        else:
            sn, sd, snn, snd = sn + rows, sd + seconds, snn + rows * rows, snd + rows * seconds
        self._sums = [sn, sd, snn, snd]
        k = len(samples)
        mean_n, mean_d = sn / k, sd / k
        var_n = snn - sn * mean_n  # sum of (n - mean)²
        # when every batch had the same size, keep the slope learned so far
        a = (snd - sn * mean_d) / var_n if var_n > 1e-9 * max(snn, 1.0) else self.a
        a = max(a, 0.0)
        b = mean_d - a * mean_n
        if b < 0:  # the fit went through below the origin: take a line through it
            b = 0.0
            a = snd / max(snn, 1.0)
        self.a, self.b = a, b

    def predict(self, rows: int) -> float:
        return self.a * rows + self.b

    @property
    def runs(self) -> int:
        """Batches the fit has seen (at most its window)."""
        return len(self._samples)

    def drain_seconds(self, rows: int, max_batch_size: int, in_flight: int) -> float:
        """How long ``in_flight`` running batches and ``rows`` queued take, by this model."""
        batches = math.ceil(rows / max_batch_size) + in_flight
        return batches * self.b + rows * self.a


class HoldTracker:
    """One dispatcher's side of the hold: its settings, what it learns (:attr:`cost`,
    :attr:`arrivals`, :attr:`population`) and the population hold going on (:attr:`started`)."""

    __slots__ = ("arrivals", "cost", "latency_limit", "max_batch_size", "population", "started")

    def __init__(self, max_batch_size: int, latency_limit: float) -> None:
        self.max_batch_size = max_batch_size
        self.latency_limit = latency_limit  # max_latency_ms, in seconds
        self.cost = CostModel()
        self.arrivals = ArrivalWindow()
        self.population = Population()
        self.started: float | None = None

    def until(self, now: float, queued_rows: int, head_enqueued: float) -> float | None:
        """When the next batch should start, if later than ``now`` (``None``: now), with
        ``queued_rows`` queued, the oldest since ``head_enqueued``. Prunes the arrival window
        when, and only when, a hold is possible at all (:func:`can_hold`)."""
        fixed = self.cost.b
        if not can_hold(fixed, queued_rows, self.max_batch_size):
            return None
        window = arrival_window(fixed)
        arrivals = self.arrivals
        arrivals.prune(now, window)
        if arrivals.rate(window) * fixed < 1:  # decide_hold's first answer, without its inputs
            self.started = None
            return None
        decision = decide_hold(
            HoldInputs(
                now=now,
                queued_rows=queued_rows,
                max_batch_size=self.max_batch_size,
                head_enqueued=head_enqueued,
                fixed_cost=fixed,
                arrival_rate=arrivals.rate(window),
                arrivals=arrivals.calls,
                last_arrival=arrivals.last,
                population=self.population.steady(),
                hold_started=self.started,
                latency_limit=self.latency_limit,
            )
        )
        self.started = decision.hold_started
        return decision.until if decision.until > now else None

    def batch_starts(self, present: int) -> None:
        """A batch starts with ``present`` rows in the dispatcher (queued plus running): any
        hold is over, and a batch cycle ends."""
        self.started = None
        self.population.end_cycle(present)
