"""Merging calls and isolating failures without a dispatcher: ``merging.run_merged`` and
``merging.bisect`` (the coalescer's), and the pieces of ``isolation.Isolation`` (the
dispatcher's), driven by hand. No clock, no threads: every model call is recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tiffin.exceptions import RunnerError
from tiffin.runner.isolation import Isolation
from tiffin.runner.merging import Call, attempt, bisect, isolates, run_merged


class Infer:
    """``infer(payloads, kwargs, calls)`` over lists of ints: each row times 10, or a
    ValueError naming the rows when ``bad(row)`` holds for one of them. Records every call."""

    def __init__(self, bad: Callable[[int], bool] = lambda row: row < 0) -> None:
        self.bad = bad
        self.seen: list[list[int]] = []

    async def __call__(self, payloads: tuple[Any, ...], kwargs: dict[str, Any], n: int) -> Any:
        rows = list(payloads[0])
        self.seen.append(rows)
        await asyncio.sleep(0)
        if any(self.bad(row) for row in rows):
            raise ValueError(f"bad rows {rows}")
        return [row * 10 for row in rows]


def calls_of(*payloads: list[int]) -> list[Call]:
    loop = asyncio.get_running_loop()
    return [Call((rows,), {}, len(rows), loop.create_future()) for rows in payloads]


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), timeout=30))


def outcome(call: Call) -> Any:
    assert call.future.done()
    error = call.future.exception()
    return error if error is not None else call.future.result()


async def merged(infer: Infer, calls: list[Call], **kwargs: Any) -> str:
    return await run_merged(infer, calls, input_dim=0, output_dim=0, name="m.predict", **kwargs)


def test_run_merged_answers_each_call_its_own_rows_in_one_model_call() -> None:
    infer = Infer()

    async def main() -> None:
        calls = calls_of([1], [2, 3], [4])
        assert await merged(infer, calls) == "ok"
        assert [outcome(call) for call in calls] == [[10], [20, 30], [40]]

    run(main)
    assert infer.seen == [[1, 2, 3, 4]]


def test_run_merged_bisects_so_only_the_bad_call_gets_its_error() -> None:
    infer = Infer()

    async def main() -> None:
        calls = calls_of(*([i] for i in range(8)), [-1])  # 9 calls, the last one bad
        calls.insert(5, calls.pop())  # the bad one sixth
        assert await merged(infer, calls) == "isolated"
        results = [outcome(call) for call in calls]
        assert isinstance(results[5], ValueError) and str(results[5]) == "bad rows [-1]"
        assert results[:5] + results[6:] == [[i * 10] for i in range(8)]

    run(main)
    # halves depth first: [0..3] passes, [4,-1,5,6,7] fails, [4,-1] fails, [4], [-1], [5,6,7]
    assert infer.seen == [
        [0, 1, 2, 3, 4, -1, 5, 6, 7],
        [0, 1, 2, 3],
        [4, -1, 5, 6, 7],
        [4, -1],
        [4],
        [-1],
        [5, 6, 7],
    ]


def test_bisect_isolates_two_bad_calls_and_leaves_cancelled_ones_out() -> None:
    infer = Infer()

    async def main() -> None:
        calls = calls_of([-1], [1], [2], [-2])
        calls[2].future.cancel()  # its caller went away: never run again
        await bisect(infer, calls, input_dim=0, output_dim=0, name="m.predict")
        results = [outcome(call) for call in (calls[0], calls[1], calls[3])]
        assert [str(r) for r in results] == ["bad rows [-1]", "[10]", "bad rows [-2]"]

    run(main)
    assert infer.seen == [[-1, 1], [-1], [1], [-2]]
    assert all(2 not in rows for rows in infer.seen)


def test_an_error_isolate_refuses_fails_every_call_of_its_merge() -> None:
    infer = Infer()

    async def main() -> None:
        calls = calls_of([1], [-1], [2])
        assert await merged(infer, calls, isolate=lambda exc: False) == "failed"
        assert all(isinstance(outcome(call), ValueError) for call in calls)
        assert not isolates(ValueError(), lambda exc: False)
        assert isolates(ValueError(), None) and not isolates(asyncio.CancelledError(), None)

    run(main)
    assert infer.seen == [[1, -1, 2]]


def test_attempt_returns_the_error_and_answers_nobody() -> None:
    async def short(payloads: tuple[Any, ...], kwargs: dict[str, Any], n: int) -> Any:
        return [0]  # one row for two

    async def main() -> None:
        calls = calls_of([1], [2])
        error = await attempt(short, calls, 0, 0, "m.predict")
        assert isinstance(error, RunnerError) and "m.predict" in str(error)
        assert not any(call.future.done() for call in calls)

    run(main)


def test_an_interrupted_bisection_answers_every_call_left() -> None:
    started = asyncio.Event()

    async def stuck(payloads: tuple[Any, ...], kwargs: dict[str, Any], n: int) -> Any:
        if n > 1:
            raise ValueError("merged")
        started.set()
        await asyncio.Event().wait()

    async def main() -> None:
        calls = calls_of([1], [2])
        task = asyncio.ensure_future(bisect(stuck, calls, input_dim=0, output_dim=0, name="m"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert all(isinstance(outcome(call), RunnerError) for call in calls)

    run(main)


# -- Isolation: the dispatcher's pieces, stepped by hand -------------------------------------


async def drive(isolation: Isolation[Call], bad: Callable[[int], bool]) -> list[list[int]]:
    """Run ``isolation``'s steps one at a time, as a dispatcher would with no passengers: a
    step of one call that fails is answered with the error. The rows of each step, in order."""
    infer, steps = Infer(bad), []
    while (step := isolation.next_step()) is not None:
        isolation.begin(step)
        steps.append([call.args[0][0] for call in step.calls])
        error = await attempt(infer, step.calls, 0, 0, "m")
        if error is None:
            isolation.passed(step)
        elif len(step.calls) == 1:
            isolation.failed(step, answered=True)
            step.calls[0].future.set_exception(error)
        else:
            isolation.failed(step, answered=False)
    assert not isolation.pieces and isolation.rows == 0
    return steps


def test_isolation_runs_middle_halves_and_skips_the_half_that_must_fail() -> None:
    async def main() -> None:
        for bad_at in range(16):
            isolation: Isolation[Call] = Isolation()
            calls = calls_of(*([i if i != bad_at else -1] for i in range(16)))
            isolation.add(calls)
            assert isolation.rows == 16
            steps = await drive(isolation, lambda row: row < 0)
            results = [outcome(call) for call in calls]
            assert str(results[bad_at]) == "bad rows [-1]"
            assert all(results[i] == [i * 10] for i in range(16) if i != bad_at)
            # one run per split when the tested half passes, two when it fails: within the
            # bisection bound, and at the ends (where a caller that keeps failing comes back)
            # the fewest: the middle halves pass all the way down
            assert len(steps) <= 2 * 4, (bad_at, steps)
            if bad_at in (0, 15):
                assert len(steps) == 4 + 1, (bad_at, steps)
                assert steps[:3] == [list(range(4, 12)), [2, 3, 12, 13], [1, 14]]

    run(main)


def test_isolation_of_calls_that_all_fail_answers_each_alone_within_2n_minus_1_steps() -> None:
    async def main() -> None:
        isolation: Isolation[Call] = Isolation()
        calls = calls_of(*([i] for i in range(8)))
        isolation.add(calls)
        steps = await drive(isolation, lambda row: True)
        assert [str(outcome(call)) for call in calls] == [f"bad rows [{i}]" for i in range(8)]
        assert len(steps) <= 2 * 8 - 1
        assert sorted(rows[0] for rows in steps if len(rows) == 1) == list(range(8))

    run(main)


def test_isolation_runs_untested_pieces_first_and_drops_calls_whose_caller_left() -> None:
    async def main() -> None:
        isolation: Isolation[Call] = Isolation()
        calls = calls_of([0], [1], [2], [3])
        isolation.add(calls)
        step = isolation.next_step()
        assert step is not None and [c.args[0] for c in step.calls] == [[1], [2]]
        assert not step.alone
        isolation.begin(step)
        assert isolation.next_step() is None  # its only piece is running
        isolation.failed(step, answered=False)  # [1, 2] guilty, [0, 3] untested
        step = isolation.next_step()
        assert step is not None and [c.args[0] for c in step.calls] == [[0], [3]]
        calls[3].future.cancel()
        step = isolation.next_step()  # looked at again: [3] is gone
        assert step is not None and [c.args[0] for c in step.calls] == [[0]]
        isolation.begin(step)
        isolation.passed(step)
        step = isolation.next_step()  # half of the guilty [1, 2]: it may carry passengers
        assert step is not None and [c.args[0] for c in step.calls] == [[1]]
        assert not step.alone
        isolation.begin(step)
        isolation.passed(step)
        step = isolation.next_step()  # so [2] is at fault: it runs alone
        assert step is not None and [c.args[0] for c in step.calls] == [[2]] and step.alone
        assert isolation.rows == 1
        assert isolation.drain() == [calls[2]] and not isolation.pieces

    run(main)
