"""The adaptive dispatcher, driven by a synthetic model: plain asyncio, no models, no HTTP."""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest

from tiffin.exceptions import InvalidArgument, Overloaded, RunnerError
from tiffin.runner.batching import Dispatcher
from tiffin.runner.stats import BatchStats, Buckets, CostModel


class Model:
    """A synthetic batch model: records every batch and sleeps ``a·n + b`` seconds.

    Payloads are lists of row ids; the result multiplies each id by 10, so every caller can
    check it got exactly its own rows back.
    """

    def __init__(self, a: float = 0.0, b: float = 0.0) -> None:
        self.a, self.b = a, b
        self.batches: list[list[Any]] = []
        self.kwargs: list[dict[str, Any]] = []
        self.running = 0
        self.most_running = 0
        self.on_batch: Callable[[list[Any]], None] | None = None
        self.fail_if: Callable[[list[Any]], bool] = lambda rows: False

    async def __call__(self, rows: list[Any], **kwargs: Any) -> list[Any]:
        self.batches.append(list(rows))
        self.kwargs.append(kwargs)
        if self.on_batch is not None:
            self.on_batch(rows)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            await asyncio.sleep(self.a * len(rows) + self.b)
            if self.fail_if(rows):
                raise ValueError("model exploded")
            return [row * 10 for row in rows]
        finally:
            self.running -= 1


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), timeout=10))


def test_lone_call_runs_at_once() -> None:
    model = Model(b=0.03)

    async def main() -> None:
        dispatcher = Dispatcher(model)
        started = time.perf_counter()
        assert await dispatcher.submit([1]) == [10]
        assert time.perf_counter() - started < 0.03 + 0.015  # no wait window before the model

        # teach the cost model (b ≈ 30 ms) with a burst, let it go quiet, then one call again
        await asyncio.gather(*(dispatcher.submit([i]) for i in range(20)))
        assert dispatcher.cost.b > 0.02
        await asyncio.sleep(4 * dispatcher.cost.b + 0.01)
        for i in range(3):  # a single caller in a loop is never held back either
            started = time.perf_counter()
            assert await dispatcher.submit([i]) == [i * 10]
            assert time.perf_counter() - started < 0.03 + 0.015
        await dispatcher.aclose()

    run(main)


def test_fifo_under_load_and_rows_never_exceed_max() -> None:
    model = Model(a=0.0001, b=0.001)
    max_rows = 8
    seq = itertools.count()
    waiting: dict[int, int] = {}  # submitted, not yet sent to the model: id -> rows
    rng = random.Random(1)

    def check(rows: list[tuple[int, int]]) -> None:
        ids = list(dict.fromkeys(call for call, _ in rows))
        # the batch is the oldest waiting calls, in submission order, as many as fit
        assert ids == sorted(waiting)[: len(ids)]
        assert len(rows) <= max_rows
        for call in ids:
            del waiting[call]

    model.on_batch = check

    async def caller(dispatcher: Dispatcher) -> None:
        for _ in range(15):
            call, size = next(seq), rng.randint(1, 4)
            rows = [(call, i) for i in range(size)]
            waiting[call] = size
            result = await dispatcher.submit(rows)
            assert result == [row * 10 for row in rows]
            await asyncio.sleep(rng.random() * 0.002)

    async def main() -> None:
        dispatcher = Dispatcher(model, max_batch_size=max_rows)
        await asyncio.gather(*(caller(dispatcher) for _ in range(24)))
        await dispatcher.aclose()

    run(main)
    assert not waiting
    assert max(len(batch) for batch in model.batches) == max_rows  # the load did fill batches
    assert model.most_running == 1  # one batch in flight at a time


def test_rows_are_counted_not_requests() -> None:
    model = Model(b=0.02)

    async def main() -> None:
        dispatcher = Dispatcher(model, max_batch_size=100)
        calls = [dispatcher.submit(list(range(k * 40, k * 40 + 40))) for k in range(5)]
        results = await asyncio.gather(*calls)
        assert results == [[r * 10 for r in range(k * 40, k * 40 + 40)] for k in range(5)]

    run(main)
    # 40 + 40 fit in 100 rows, a third call would not: it waits for the next batch
    assert [len(batch) for batch in model.batches] == [80, 80, 40]


def test_oversize_call_is_split_and_rejoined_in_order() -> None:
    model = Model(b=0.005)

    async def main() -> None:
        dispatcher = Dispatcher(model, max_batch_size=10)
        big = asyncio.ensure_future(dispatcher.submit(list(range(25))))
        small = asyncio.ensure_future(dispatcher.submit([100, 101]))
        assert await big == [r * 10 for r in range(25)]
        assert await small == [1000, 1010]

    run(main)
    # consecutive chunks; the last one shares its batch with the call queued behind it
    assert model.batches == [list(range(10)), list(range(10, 20)), [*range(20, 25), 100, 101]]


def test_batch_dim_pair_and_arrays() -> None:
    seen: list[tuple[int, ...]] = []

    async def infer(features: np.ndarray) -> np.ndarray:
        seen.append(features.shape)
        return features.sum(axis=0)  # inputs batched along dim 1, outputs along dim 0

    async def main() -> None:
        dispatcher = Dispatcher(infer, batch_dim=(1, 0), max_batch_size=4)
        inputs = [np.arange(3 * n, dtype=float).reshape(3, n) + 100 * n for n in (1, 2, 6)]
        results = await asyncio.gather(*(dispatcher.submit(x) for x in inputs))
        for x, result in zip(inputs, results, strict=True):
            np.testing.assert_array_equal(result, x.sum(axis=0))

    run(main)
    assert seen == [(3, 3), (3, 4), (3, 2)]


def test_call_queued_past_max_latency_is_overloaded() -> None:
    model = Model(b=0.3)

    async def main() -> None:
        stats = BatchStats()
        dispatcher = Dispatcher(model, name="clf.predict", max_latency_ms=50, stats=stats)
        first = asyncio.ensure_future(dispatcher.submit([1]))
        await asyncio.sleep(0.01)  # the first call's batch has started (and runs 300 ms)
        started = time.perf_counter()
        with pytest.raises(Overloaded) as caught:
            await dispatcher.submit([2])
        waited = time.perf_counter() - started
        assert 0.045 < waited < 0.2  # answered at its deadline, not when the long batch ends
        error = caught.value
        assert error.http_status == 503 and error.retry_after >= 1
        assert "clf.predict" in str(error) and "max_latency_ms=50" in str(error)
        assert "overloaded" in str(error)
        assert not first.done()
        assert await first == [10]  # the batch that had started was not cancelled
        assert stats.overloaded == 1
        assert await dispatcher.submit([3]) == [30]  # and the dispatcher keeps serving

    run(main)
    assert model.batches == [[1], [3]]  # the overloaded call never reached the model


def test_a_failed_batch_is_rerun_call_by_call_so_only_the_bad_call_fails() -> None:
    model = Model(b=0.02)
    model.fail_if = lambda rows: 666 in rows

    async def main() -> None:
        dispatcher = Dispatcher(model)
        first = asyncio.ensure_future(dispatcher.submit([1]))
        await asyncio.sleep(0.005)
        batch = [asyncio.ensure_future(dispatcher.submit(rows)) for rows in ([2], [666], [3])]
        assert await first == [10]
        outcomes = await asyncio.gather(*batch, return_exceptions=True)
        assert outcomes[0] == [20] and outcomes[2] == [30]
        assert isinstance(outcomes[1], ValueError)
        assert await dispatcher.submit([4]) == [40]
        assert dispatcher.stats.failed_batches == 1
        assert dispatcher.stats.isolated_calls == 3

    run(main)
    assert model.batches == [[1], [2, 666, 3], [2], [666], [3], [4]]


def test_a_model_that_always_fails_fails_every_call_and_keeps_serving() -> None:
    model = Model(b=0.02)
    model.fail_if = lambda rows: any(r < 100 for r in rows)

    async def main() -> None:
        dispatcher = Dispatcher(model)
        first = asyncio.ensure_future(dispatcher.submit([100]))
        await asyncio.sleep(0.005)
        batch = [asyncio.ensure_future(dispatcher.submit(rows)) for rows in ([1], [2], [3])]
        assert await first == [1000]
        outcomes = await asyncio.gather(*batch, return_exceptions=True)
        assert all(isinstance(o, ValueError) for o in outcomes)
        assert await dispatcher.submit([200]) == [2000]

    run(main)


def test_wrong_row_count_from_the_model_is_a_runner_error() -> None:
    async def infer(rows: list[int]) -> list[int]:
        return rows[:-1]

    async def main() -> None:
        dispatcher = Dispatcher(infer, name="m.predict")
        with pytest.raises(RunnerError, match=r"m\.predict.*one output row per input row"):
            await dispatcher.submit([1, 2])

    run(main)


def test_cancelled_caller_is_never_sent_to_the_model() -> None:
    model = Model(b=0.03)

    async def main() -> None:
        dispatcher = Dispatcher(model, max_batch_size=10)
        first = asyncio.ensure_future(dispatcher.submit([1]))
        await asyncio.sleep(0.005)
        queued = [asyncio.ensure_future(dispatcher.submit([n])) for n in (2, 3, 4)]
        big = asyncio.ensure_future(dispatcher.submit(list(range(100, 125))))
        last = asyncio.ensure_future(dispatcher.submit([5]))
        await asyncio.sleep(0.005)
        queued[1].cancel()  # hangs up from the middle of the queue
        assert await first == [10]
        assert await queued[0] == [20] and await queued[2] == [40]
        await asyncio.sleep(0.005)  # the first chunk of the big call is running now
        big.cancel()  # the rest of it leaves the queue
        assert await last == [50]
        assert dispatcher.queued_rows == 0
        assert dispatcher.stats.cancelled == 2

    run(main)
    assert model.batches == [[1], [2, 4], list(range(100, 110)), [5]]


def test_different_options_never_share_a_batch() -> None:
    model = Model(b=0.01)
    order: list[tuple[int, int]] = []

    async def main() -> None:
        dispatcher = Dispatcher(model)
        first = asyncio.ensure_future(dispatcher.submit([0], params={"t": 0}))
        await asyncio.sleep(0.002)
        calls = []
        for i in range(1, 13):
            params = {"t": i % 3, "weights": [1, 2]}  # unhashable values are fine
            order.append((i, i % 3))
            calls.append(dispatcher.submit([i], params=params))
        results = await asyncio.gather(first, *calls)
        assert results == [[i * 10] for i in range(13)]

    run(main)
    for rows, kwargs in zip(model.batches[1:], model.kwargs[1:], strict=True):
        assert {row % 3 for row in rows} == {kwargs["params"]["t"]}
        assert rows == sorted(rows)
    # FIFO across keys: the oldest waiting call (1, then 2, then 3) leads each batch
    assert [batch[0] for batch in model.batches] == [0, 1, 2, 3]


def test_different_shapes_never_share_a_batch() -> None:
    shapes: list[tuple[int, ...]] = []

    async def infer(x: np.ndarray) -> np.ndarray:
        shapes.append(x.shape)
        await asyncio.sleep(0.005)
        return x.sum(axis=1)

    async def main() -> None:
        dispatcher = Dispatcher(infer)
        first = asyncio.ensure_future(dispatcher.submit(np.ones((1, 3))))
        await asyncio.sleep(0.001)
        rest = [dispatcher.submit(np.ones((1, 3 + i % 2))) for i in range(4)]
        results = await asyncio.gather(first, *rest)
        assert [float(r[0]) for r in results] == [3.0, 3.0, 4.0, 3.0, 4.0]

    run(main)
    assert shapes == [(1, 3), (2, 3), (2, 4)]


def test_batches_grow_under_load_and_stay_small_without_it() -> None:
    model = Model(a=0.0001, b=0.01)

    async def closed_loop(dispatcher: Dispatcher, callers: int, calls: int) -> list[float]:
        latencies: list[float] = []

        async def caller(k: int) -> None:
            for i in range(calls):
                started = time.perf_counter()
                assert await dispatcher.submit([k * 1000 + i]) == [(k * 1000 + i) * 10]
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(caller(k) for k in range(callers)))
        return latencies

    async def main() -> None:
        dispatcher = Dispatcher(model)
        await closed_loop(dispatcher, 1, 5)
        assert all(len(batch) == 1 for batch in model.batches)
        model.batches.clear()
        latencies = await closed_loop(dispatcher, 32, 6)
        sizes = [len(batch) for batch in model.batches]
        assert statistics.mean(sizes) > 16
        # continuous batching, no holding: a call waits at most about one batch, then runs one
        assert statistics.median(latencies) < 2 * (0.01 + 32 * 0.0001) + 0.01

    run(main)


def test_holds_an_idle_model_back_when_more_rows_are_about_to_arrive() -> None:
    model = Model(b=0.02)
    starts: list[float] = []
    model.on_batch = lambda rows: starts.append(time.perf_counter())

    async def stream(dispatcher: Dispatcher, first: int, count: int) -> list[Any]:
        calls = []
        for i in range(first, first + count):
            calls.append(asyncio.ensure_future(dispatcher.submit([i])))
            await asyncio.sleep(0.001)
        return await asyncio.gather(*calls)

    async def main() -> None:
        dispatcher = Dispatcher(model)
        await stream(dispatcher, 0, 60)  # ~70 ms of steady traffic teaches b and the rate
        assert 0.015 < dispatcher.cost.b < 0.04
        await asyncio.sleep(0.005)  # the model is idle, but the traffic is recent
        resumed = time.perf_counter()
        assert await stream(dispatcher, 1000, 15) == [[i * 10] for i in range(1000, 1015)]
        after = [batch for batch in model.batches if batch[0] >= 1000]
        assert len(after[0]) >= 4  # it waited for the rows it expected instead of running one
        assert starts[-len(after)] - resumed < 0.02 + 0.01  # but never longer than about b

    run(main)


def test_closed_loop_callers_are_waited_for_so_their_groups_merge() -> None:
    """16 callers in a closed loop, started as two groups of 8: without waiting for the callers
    on their way back, the groups would alternate on the model for good (8-row batches, each
    paying the fixed cost); waiting for the population merges them into 16-row batches."""
    model = Model(b=0.005)

    async def main() -> None:
        dispatcher = Dispatcher(model)

        async def caller(k: int, calls: int, delay: float) -> None:
            await asyncio.sleep(delay)
            for i in range(calls):
                row = k * 1000 + i
                assert await dispatcher.submit([row]) == [row * 10]
                # its answer going out and its next request coming in, spread over 0.7 ms
                await asyncio.sleep(0.0001 * (k % 8))

        await asyncio.gather(*(caller(k, 30, 0.0 if k < 8 else 0.0025) for k in range(16)))
        sizes = [len(batch) for batch in model.batches]
        # 8 cycles to see a steady population, then together (the group that started first
        # ends one call earlier: the last batch is the other group's last calls)
        assert sizes[:4] == [8] * 4 and sizes[-10:-1] == [16] * 9, sizes

        # a caller leaves: the others still run, held at most about the gap each time
        model.batches.clear()
        started = time.perf_counter()
        await asyncio.gather(*(caller(k, 10, 0.0) for k in range(1, 16)))
        per_batch = (time.perf_counter() - started) / len(model.batches)
        assert max(len(batch) for batch in model.batches) == 15
        assert dispatcher.population() == 15  # the cycles without the 16th lowered it
        assert per_batch < 3 * 0.005, per_batch

        # after a quiet spell a lone call runs at once again
        await asyncio.sleep(0.05)
        started = time.perf_counter()
        assert await dispatcher.submit([7]) == [70]
        assert time.perf_counter() - started < 0.005 + 0.004

    run(main)


def test_callers_slow_to_come_back_are_waited_for_not_left_to_a_straggler() -> None:
    """The batch's callers take longer to come back (their answers written, their next
    requests read) than the gap between calls arriving: when the model frees with only a late
    caller queued, the first of the others is waited for, not just the gap. Otherwise the late
    caller runs alone, paying the fixed cost, and the others form a batch without it, for good
    (measured in serve --workers 2 with embedded runners: 8% one-row batches). But most
    callers queued are not held back for one slow one: it joins the next batch instead."""
    model = Model(b=0.01)

    async def main() -> None:
        dispatcher = Dispatcher(model, max_latency_ms=1000)

        async def caller(k: int, calls: int) -> None:
            for i in range(calls):
                row = k * 1000 + i
                assert await dispatcher.submit([row]) == [row * 10]
                # back in 6 ms (one caller in 16 ms, while the next batch runs), all at once:
                # far more than twice the mean time between calls (about 2 ms)
                await asyncio.sleep(0.016 if k == 0 else 0.006)

        # the slow caller makes half as many calls: all end about together
        await asyncio.gather(*(caller(k, 12 if k == 0 else 24) for k in range(16)))
        sizes = [len(batch) for batch in model.batches]
        settled = sizes[8:-2]
        assert settled and min(settled) >= 8, sizes  # the old rule: 15, 1, 15, 1, ...
        assert settled.count(15) >= len(settled) // 3, sizes  # not all held for the slow one

    run(main)


def test_independent_callers_are_not_waited_for() -> None:
    """Open-loop arrivals (independent callers, Poisson) make the per-cycle peaks vary: the
    dispatcher sees no steady population, so it never holds a batch for callers to return."""
    model = Model(b=0.005)
    rng = random.Random(5)
    seen: list[int] = []

    async def main() -> None:
        dispatcher = Dispatcher(model)
        model.on_batch = lambda rows: seen.append(dispatcher.population())
        calls = []
        for i in range(400):
            calls.append(asyncio.ensure_future(dispatcher.submit([i])))
            await asyncio.sleep(rng.expovariate(1600))
        assert await asyncio.gather(*calls) == [[i * 10] for i in range(400)]

    run(main)
    assert len(seen) > 20
    assert sum(1 for p in seen if p > 1) <= len(seen) // 10, seen


def test_max_concurrency_runs_batches_side_by_side() -> None:
    model = Model(b=0.02)

    async def main() -> None:
        dispatcher = Dispatcher(model, max_batch_size=2, max_concurrency=2)
        results = await asyncio.gather(*(dispatcher.submit([i]) for i in range(8)))
        assert results == [[i * 10] for i in range(8)]

    run(main)
    assert model.most_running == 2
    assert model.batches == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_stats_count_what_happened() -> None:
    model = Model(b=0.01)

    async def main() -> BatchStats:
        dispatcher = Dispatcher(model, max_batch_size=4)
        first = asyncio.ensure_future(dispatcher.submit([0]))
        await asyncio.sleep(0.002)
        await asyncio.gather(first, *(dispatcher.submit([i, i]) for i in range(1, 4)))
        return dispatcher.stats

    stats = run(main)
    snap = stats.snapshot()
    assert model.batches == [[0], [1, 1, 2, 2], [3, 3]]
    assert (snap["calls"], snap["rows"], snap["batches"]) == (4, 7, 3)
    assert (snap["failed_batches"], snap["overloaded"], snap["cancelled"]) == (0, 0, 0)
    size = snap["batch_rows"]
    assert size["count"] == 3 and size["sum"] == 7
    assert dict(size["buckets"])[1.0] == 1 and dict(size["buckets"])[2.0] == 2
    assert dict(size["buckets"])[4.0] == 3
    assert snap["queue_wait_seconds"]["count"] == 4
    run_time = snap["run_time_seconds"]
    assert run_time["count"] == 3 and 0.03 <= run_time["sum"] < 0.1
    for histogram in (size, snap["queue_wait_seconds"], run_time):
        counts = [count for _, count in histogram["buckets"]]
        assert counts == sorted(counts) and counts[-1] == histogram["count"]
        assert histogram["buckets"][-1][0] == float("inf")


def test_histogram_uses_le_buckets() -> None:
    histogram = Buckets([1.0, 2.0, 4.0])
    for value in (0.5, 1.0, 1.5, 4.0, 9.0):
        histogram.observe(value)
    snap = histogram.snapshot()
    assert snap["buckets"] == [(1.0, 2), (2.0, 3), (4.0, 4), (float("inf"), 5)]
    assert snap["count"] == 5 and snap["sum"] == 16.0


def test_cost_model_fits_a_line() -> None:
    cost = CostModel(window=50)
    for n in (1, 8, 64, 256, 1024) * 3:
        cost.add(n, 0.002 + 0.00001 * n)
    assert cost.a == pytest.approx(0.00001) and cost.b == pytest.approx(0.002)
    assert cost.predict(100) == pytest.approx(0.003)
    same = CostModel()
    for _ in range(5):
        same.add(16, 0.01)
    assert same.a == 0 and same.b == pytest.approx(0.01)
    for _ in range(60):  # old samples leave the window
        cost.add(10, 0.5)
    assert cost.b + cost.a * 10 == pytest.approx(0.5)


def test_aclose_fails_queued_calls_and_lets_the_running_batch_finish() -> None:
    model = Model(b=0.03)

    async def main() -> None:
        dispatcher = Dispatcher(model, name="m.predict")
        running = asyncio.ensure_future(dispatcher.submit([1]))
        await asyncio.sleep(0.005)
        queued = asyncio.ensure_future(dispatcher.submit([2]))
        await asyncio.sleep(0)
        await dispatcher.aclose()
        assert await running == [10]
        with pytest.raises(RunnerError, match=r"m\.predict.*shut down"):
            await queued
        with pytest.raises(RunnerError, match="closed"):
            await dispatcher.submit([3])

    run(main)
    assert model.batches == [[1]]


def test_a_dispatcher_rebinds_once_its_loop_has_closed() -> None:
    model = Model()
    dispatcher = Dispatcher(model)
    assert asyncio.run(dispatcher.submit([1])) == [10]
    assert asyncio.run(dispatcher.submit([2])) == [20]


def test_bad_calls_and_settings_are_invalid_arguments() -> None:
    async def main() -> None:
        dispatcher = Dispatcher(Model(), name="m.predict")
        with pytest.raises(InvalidArgument, match="at least one positional payload"):
            await dispatcher.submit(flag=True)
        with pytest.raises(InvalidArgument, match="cannot batch a payload of type"):
            await dispatcher.submit("text")
        with pytest.raises(InvalidArgument, match="different row counts"):
            await dispatcher.submit([1, 2], [3])
        assert dispatcher.stats.calls == 0

    run(main)
    for kwargs in (
        {"max_batch_size": 0},
        {"max_latency_ms": 0},
        {"max_concurrency": 0},
        {"batch_dim": (0, 1, 2)},
        {"batch_dim": "0"},
    ):
        with pytest.raises(InvalidArgument):
            Dispatcher(Model(), **kwargs)
