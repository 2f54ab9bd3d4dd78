"""Request deadlines (tiffin.deadlines): asyncio.timeout's behaviour with one timer per queue."""

from __future__ import annotations

import asyncio
import time

import pytest

from tiffin.serving import deadlines
from tiffin.serving.deadlines import deadline


def run(main):  # type: ignore[no-untyped-def]
    return asyncio.run(asyncio.wait_for(main(), timeout=10))


def test_a_block_past_its_deadline_is_cancelled_and_raises_timeouterror() -> None:
    async def main() -> tuple[float, bool]:
        started = time.perf_counter()
        with pytest.raises(TimeoutError) as info:
            async with deadline(0.05) as d:
                await asyncio.sleep(5)
        assert isinstance(info.value.__cause__, asyncio.CancelledError)
        return time.perf_counter() - started, d.expired()

    elapsed, expired = run(main)
    assert expired and 0.04 < elapsed < 4  # cancelled: the sleep was 5 s (a busy loop is slow)


def test_in_time_blocks_and_their_own_timeouterrors_are_left_alone() -> None:
    async def main() -> None:
        async with deadline(1) as d:
            await asyncio.sleep(0.01)
        assert not d.expired()
        with pytest.raises(TimeoutError, match="the database"):
            async with deadline(1) as d:
                raise TimeoutError("the database did not answer")
        assert not d.expired()
        await asyncio.sleep(0)  # the task was never cancelled: awaiting still works
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    run(main)


def test_many_requests_expire_in_order_and_the_queue_stays_small() -> None:
    async def request(i: int, nap: float) -> str:
        try:
            async with deadline(0.1):
                await asyncio.sleep(nap)
            return "ok"
        except TimeoutError:
            return "timeout"

    async def main() -> tuple[list[str], int, int]:
        naps = [0.3 if i % 5 == 0 else 0.001 for i in range(200)]
        results = await asyncio.gather(*(request(i, nap) for i, nap in enumerate(naps)))
        queue = deadlines._queue_for(asyncio.get_running_loop(), 0.1)
        # finished requests left the queue; a request after the others still runs normally
        left = len(queue.entries)
        assert await request(999, 0.001) == "ok"
        return results, left, len(queue.entries)

    results, left, after = run(main)
    assert results == ["timeout" if i % 5 == 0 else "ok" for i in range(200)]
    assert left == 0 and after == 0


def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    async def main() -> None:
        entered = asyncio.Event()

        async def victim() -> None:
            async with deadline(5):
                entered.set()
                await asyncio.sleep(5)

        task = asyncio.ensure_future(victim())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(main)


def test_different_timeouts_on_one_loop_each_keep_their_own() -> None:
    async def timed(seconds: float, nap: float) -> float:
        started = time.perf_counter()
        try:
            async with deadline(seconds):
                await asyncio.sleep(nap)
        except TimeoutError:
            pass
        return time.perf_counter() - started

    async def main() -> list[float]:
        return list(await asyncio.gather(timed(0.3, 5), timed(0.05, 5), timed(0.3, 0.01)))

    slow, fast, done = run(main)
    assert 0.25 < slow < 1.0 and 0.04 < fast < 0.25 and done < 0.2
