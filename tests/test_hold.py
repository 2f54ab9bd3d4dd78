"""The hold decision as a pure function, and the state it reads: plain values, no event loop."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest

from tiffin.runner.hold import (
    ARRIVAL_WINDOW_COSTS,
    POPULATION_CYCLES,
    ArrivalWindow,
    CostModel,
    HoldDecision,
    HoldInputs,
    HoldTracker,
    LoopClock,
    Population,
    arrival_window,
    decide_hold,
)

NOW = 10.0
B = 0.01  # the fixed cost b; the arrival window is 4·b = 40 ms, so gap = 80 ms / arrivals
DISPATCH = None  # the expected decision: start a batch now


def inputs(peaks: tuple[int, ...] | None = None, **changes: Any) -> HoldInputs:
    """One queued row at NOW, b = 10 ms, λ·b = 1.5, 40 calls in the window (gap 2 ms), no
    population, max_latency_ms 5 s; ``peaks``: the population as a Population reads them."""
    values: dict[str, Any] = {
        "now": NOW,
        "queued_rows": 1,
        "max_batch_size": 64,
        "head_enqueued": NOW,
        "fixed_cost": B,
        "arrival_rate": 150.0,
        "arrivals": 40,
        "last_arrival": NOW,
        "population": 0,
        "hold_started": None,
        "latency_limit": 5.0,
    }
    if peaks is not None:
        population = Population()
        for peak in peaks:
            population.note(peak)
            population.end_cycle(0)
        values["population"] = population.steady()
    values.update(changes)
    return HoldInputs(**values)


CASES = [
    # -- never held ------------------------------------------------------------------------
    pytest.param(
        inputs(fixed_cost=0.0, arrival_rate=1e6, population=16), DISPATCH, None,
        id="no cost learned",
    ),
    pytest.param(
        inputs(queued_rows=64, arrival_rate=1e6, population=100), DISPATCH, None,
        id="a full batch is queued",
    ),
    pytest.param(
        inputs(arrival_rate=99.0, population=16), DISPATCH, None, id="rate*b < 1",
    ),
    pytest.param(
        inputs(arrival_rate=100.0, population=16), NOW + 2 * B, NOW, id="rate*b = 1 is enough",
    ),
    # -- arrivals are fast (rate*b >= queued + 1) -------------------------------------------
    pytest.param(
        inputs(arrival_rate=1000.0, queued_rows=3, head_enqueued=9.995, arrivals=4),
        9.995 + B, None, id="fast: bounded by head + b",
    ),
    pytest.param(
        inputs(arrival_rate=1000.0, queued_rows=3, head_enqueued=9.995, last_arrival=9.999),
        9.999 + 0.002, None, id="fast: bounded by last arrival + gap",
    ),
    pytest.param(
        inputs(arrival_rate=1000.0, head_enqueued=9.999, arrivals=4, latency_limit=0.02),
        9.999 + 0.005, None, id="fast: bounded by max_latency/4",
    ),
    pytest.param(
        inputs(arrival_rate=1000.0, queued_rows=10), DISPATCH, None,
        id="fast: no more expected than queued",
    ),
    pytest.param(
        inputs(arrival_rate=1000.0, head_enqueued=9.98, arrivals=4), DISPATCH, None,
        id="fast: the head has waited b already",
    ),
    # -- callers on their way back (queued < population) ------------------------------------
    pytest.param(
        inputs(population=16, last_arrival=9.99), NOW + 2 * B, NOW,
        id="population: the hold starts, up to 2b",
    ),
    pytest.param(
        inputs(population=16, last_arrival=9.99, latency_limit=0.04), NOW + 0.01, NOW,
        id="population: bounded by max_latency/4",
    ),
    pytest.param(
        inputs(population=16, last_arrival=9.99, hold_started=9.995), 9.995 + 2 * B, 9.995,
        id="population: 2b from when the hold started",
    ),
    pytest.param(
        inputs(population=16, last_arrival=9.97, hold_started=9.98), DISPATCH, None,
        id="population: over after 2b",
    ),
    pytest.param(
        inputs(population=16, hold_started=9.995, last_arrival=9.999, arrivals=10),
        9.999 + 0.008, 9.995, id="population: callers coming back, until a gap",
    ),
    pytest.param(
        inputs(population=16, hold_started=9.995, last_arrival=9.999), 9.999 + B / 4, 9.995,
        id="population: callers coming back, the gap at least b/4",
    ),
    pytest.param(
        inputs(population=16, hold_started=9.995, last_arrival=9.997), DISPATCH, None,
        id="population: callers came back, none since for the gap",
    ),
    pytest.param(
        inputs(population=16, queued_rows=8, last_arrival=9.99), NOW + B / 4, NOW,
        id="population: most already here, the gap rule",
    ),
    pytest.param(
        inputs(population=16, queued_rows=7, last_arrival=9.99), NOW + 2 * B, NOW,
        id="population: fewer than half here, wait for the first",
    ),
    pytest.param(
        inputs(population=100, queued_rows=32, last_arrival=9.99), NOW + B / 4, NOW,
        id="population: capped at max_batch_size (most here)",
    ),
    pytest.param(
        inputs(population=100, queued_rows=31, last_arrival=9.99), NOW + 2 * B, NOW,
        id="population: capped at max_batch_size (fewer than half)",
    ),
    pytest.param(
        inputs(population=16, arrival_rate=1000.0), NOW + 2 * B, NOW,
        id="fast and population: the later of the two",
    ),
    # -- the population as the tracker reads it ---------------------------------------------
    pytest.param(
        inputs(peaks=(16,) * 7 + (17,), last_arrival=9.99), NOW + 2 * B, NOW,
        id="peaks within 10%: population 16",
    ),
    pytest.param(
        inputs(peaks=(16,) * 7 + (18,), last_arrival=9.99), DISPATCH, None,
        id="peaks more than 10% apart: no population hold",
    ),
    pytest.param(
        inputs(peaks=(16,) * 7, last_arrival=9.99), DISPATCH, None,
        id="fewer than 8 cycles: no population hold",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("state", "until", "started"), CASES)
def test_decide_hold(state: HoldInputs, until: float | None, started: float | None) -> None:
    decision = decide_hold(state)
    if until is None:
        assert decision == HoldDecision(state.now, None)
    else:
        assert decision.until == pytest.approx(until, abs=1e-12) and decision.until > state.now
        assert decision.hold_started == started


def test_decide_hold_never_holds_past_its_bounds() -> None:
    rng = random.Random(3)
    held = 0
    for _ in range(20000):
        b = rng.choice([0.0, 0.001, 0.01, 0.1])
        limit = rng.choice([0.004, 0.04, 5.0])
        state = inputs(
            fixed_cost=b,
            queued_rows=rng.randint(1, 70),
            head_enqueued=NOW - rng.random() * 0.02,
            arrival_rate=rng.choice([0.0, 50.0, 500.0, 5000.0]),
            arrivals=rng.randint(0, 50),
            last_arrival=NOW - rng.random() * 0.02,
            population=rng.choice([0, 8, 16, 100]),
            hold_started=rng.choice([None, NOW - rng.random() * 0.02]),
            latency_limit=limit,
        )
        decision = decide_hold(state)
        assert decision.until >= NOW
        if decision.until == NOW:
            assert decision.hold_started is None
            continue
        held += 1
        assert b > 0 and state.queued_rows < state.max_batch_size
        started = decision.hold_started if decision.hold_started is not None else NOW
        fast = state.head_enqueued + min(b, limit / 4)
        assert decision.until <= max(fast, started + min(2 * b, limit / 4)) + 1e-12
    assert held > 1000


def test_arrival_window_counts_prunes_only_when_asked_and_reads_without_changing() -> None:
    window = ArrivalWindow()
    assert (window.calls, window.rows, window.rate(1.0)) == (0, 0, 0.0)
    for when, rows in ((1.0, 1), (1.5, 3), (2.0, 2), (2.5, 4)):
        window.add(when, rows)
    assert (window.calls, window.rows, window.last) == (4, 10, 2.5)
    assert window.rate(2.0) == window.rate(2.0) == 5.0  # a read: nothing is forgotten
    assert window.calls == 4
    window.prune(3.0, 1.5)  # forgets what arrived at or before 1.5
    assert (window.calls, window.rows, window.last) == (2, 6, 2.5)
    assert window.rate(1.5) == 4.0
    window.prune(10.0, 1.0)
    assert (window.calls, window.rows, window.last) == (0, 0, 2.5)  # the last arrival stays


def test_arrival_window_memory_is_bounded_and_forgets_the_oldest() -> None:
    window = ArrivalWindow(memory=3)
    for when in range(5):
        window.add(float(when), when + 1)
    assert (window.calls, window.rows) == (3, 3 + 4 + 5)


def test_arrival_window_length() -> None:
    assert arrival_window(0.0) == 1.0  # before b is learned
    assert arrival_window(B) == ARRIVAL_WINDOW_COSTS * B == pytest.approx(0.04)


def test_population_needs_steady_peaks_over_enough_cycles() -> None:
    population = Population()
    for _ in range(POPULATION_CYCLES):
        assert population.steady() == 0  # not enough cycles yet
        for present in (3, 16, 9):  # the most present at once in the cycle counts
            population.note(present)
        population.end_cycle(5)
        assert population.peak == 5  # the next cycle starts from what is there
    assert population.steady() == population.steady() == 16  # a read: nothing changes
    assert population.peak == 5

    population.note(15)  # a caller left: the next cycle's smaller peak lowers it at once
    population.end_cycle(0)
    assert population.steady() == 15
    population.note(16)
    population.end_cycle(0)
    assert population.steady() == 15  # 15 is within 10% of 16
    population.note(17)
    population.end_cycle(0)
    assert population.steady() == 0  # 15 is not within 10% of 17: no steady population


def test_hold_tracker_prunes_only_when_a_hold_is_possible_and_keeps_the_hold_start() -> None:
    tracker = HoldTracker(max_batch_size=64, latency_limit=5.0)
    tracker.arrivals.add(NOW - 1.0, 1)  # long before the window
    assert tracker.until(NOW, 1, NOW) is None  # no b learned: nothing read, nothing pruned
    assert tracker.arrivals.calls == 1
    tracker.cost.add(1, B)
    for _ in range(POPULATION_CYCLES):
        tracker.population.note(16)
        tracker.batch_starts(0)
    for k in range(6):
        tracker.arrivals.add(NOW - 0.010 + 0.001 * k, 1)  # λ·b = 6 rows / 40 ms · 10 ms = 1.5
    assert tracker.until(NOW, 64, NOW) is None  # a full batch: no pruning either
    assert tracker.arrivals.calls == 7
    assert tracker.until(NOW, 1, NOW) == pytest.approx(NOW + 2 * B)  # population hold
    assert tracker.arrivals.calls == 6  # the old arrival was pruned
    assert tracker.started == NOW
    assert tracker.until(NOW + 0.001, 1, NOW) == pytest.approx(NOW + 2 * B)  # same hold
    tracker.batch_starts(1)
    assert tracker.started is None and tracker.population.peak == 1


def test_cost_model_fits_a_line() -> None:
    cost = CostModel(window=50)
    for n in (1, 8, 64, 256, 1024) * 3:
        cost.add(n, 0.002 + 0.00001 * n)
    assert cost.a == pytest.approx(0.00001) and cost.b == pytest.approx(0.002)
    assert cost.predict(100) == pytest.approx(0.003)
    # two batches running, 2048 queued rows in batches of 1024: 4 batches and 2048 rows
    assert cost.drain_seconds(2048, 1024, 2) == pytest.approx(4 * 0.002 + 2048 * 0.00001)
    same = CostModel()
    for _ in range(5):
        same.add(16, 0.01)
    assert same.a == 0 and same.b == pytest.approx(0.01)
    for _ in range(60):  # old samples leave the window
        cost.add(10, 0.5)
    assert cost.b + cost.a * 10 == pytest.approx(0.5)


def test_cost_model_never_fits_a_negative_fixed_cost() -> None:
    cost = CostModel()
    for n, seconds in ((1, 0.0), (10, 0.5), (20, 1.0)):
        cost.add(n, seconds)  # the best line crosses below the origin
    assert cost.b == 0.0 and cost.a == pytest.approx((10 * 0.5 + 20 * 1.0) / (1 + 100 + 400))


def test_loop_clock_reads_and_schedules_on_its_loop() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = LoopClock(loop)
        fired: list[str] = []
        before = loop.time()
        clock.call_at(clock.now(), lambda: fired.append("due"))
        clock.call_at(clock.now(), lambda: fired.append("cancelled")).cancel()
        clock.call_at(clock.now() + 3600, lambda: fired.append("later"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert fired == ["due"] and clock.now() >= before

    asyncio.run(main())


def _fit(samples: list[tuple[int, float]], slope: float) -> tuple[float, float]:
    """Least squares over ``samples`` as a pass over them (the reference)."""
    k = len(samples)
    mean_n = sum(n for n, _ in samples) / k
    mean_d = sum(d for _, d in samples) / k
    var_n = sum((n - mean_n) ** 2 for n, _ in samples)
    a = sum((n - mean_n) * (d - mean_d) for n, d in samples) / var_n if var_n else slope
    a = max(a, 0.0)
    b = mean_d - a * mean_n
    if b < 0:
        b = 0.0
        a = sum(n * d for n, d in samples) / max(sum(n * n for n, _ in samples), 1)
    return a, b


def test_cost_model_running_sums_give_the_fit_over_its_window() -> None:
    from tiffin.runner.hold import CostModel

    rng = random.Random(3)
    model, window = CostModel(window=10), []
    for i in range(137):  # past the window many times, and past each fresh summing
        n = rng.choice([1, 1, 4, 16, 64]) if i % 23 else 8
        d = 0.001 + 0.00002 * n + rng.uniform(0, 1e-4)
        model.add(n, d)
        window = [*window, (n, d)][-10:]
        a, b = _fit(window, model.a)
        assert model.a == pytest.approx(a, rel=1e-6, abs=1e-12)
        assert model.b == pytest.approx(b, rel=1e-6, abs=1e-12)
        assert model.runs == len(window)


def test_loop_clock_reads_time_inside_one_callback_under_uvloop() -> None:
    """uvloop's loop.time() stands still within a callback (libuv's time of the loop's turn,
    in milliseconds); the dispatcher's clock must not, or a model call run inline lasts 0."""
    import time

    import uvloop  # uvicorn[standard]'s, a dependency of tiffin

    async def main() -> tuple[float, float]:
        clock = LoopClock(asyncio.get_running_loop())
        before, spun = clock.now(), time.perf_counter()
        while time.perf_counter() - spun < 0.002:  # 2 ms of work in this one callback
            pass
        return before, clock.now()

    before, after = uvloop.run(main())
    assert after - before >= 0.0019
