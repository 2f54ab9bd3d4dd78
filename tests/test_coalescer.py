"""The coalescer (an API worker's or a Ray ingress's side of a batchable method): one message
per event-loop turn, and with ``max_in_flight`` calls held back while that many messages are
out, then sent merged. Driven by hand: the messages are gated by events, no clock."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from tiffin.runner.coalescer import Coalescer


class Gated:
    """``send(payloads, kwargs, calls)``: records each message's rows and answers each row
    times 10 once its gate opens (``open_all``), or at once when ``gated`` is False."""

    def __init__(self, gated: bool = True) -> None:
        self.gated = gated
        self.messages: list[list[int]] = []
        self.gates: list[asyncio.Event] = []

    async def __call__(self, payloads: tuple[Any, ...], kwargs: dict[str, Any], n: int) -> Any:
        rows = list(payloads[0])
        self.messages.append(rows)
        gate = asyncio.Event()
        self.gates.append(gate)
        if self.gated:
            await gate.wait()
        return [row * 10 for row in rows]

    def open_all(self) -> None:
        for gate in self.gates:
            gate.set()


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(main(), timeout=30))


def coalescer(send: Gated, max_in_flight: int | None) -> Coalescer:
    return Coalescer(send, name="r.m", input_dim=0, output_dim=0, max_batch_size=8,
                     max_in_flight=max_in_flight)  # fmt: skip


async def turns(count: int = 3) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_without_a_cap_each_turn_is_a_message_at_once() -> None:
    async def main() -> None:
        send = Gated()
        c = coalescer(send, None)
        first = asyncio.ensure_future(c.submit([1]))
        await turns()
        second = asyncio.ensure_future(c.submit([2]))
        third = asyncio.ensure_future(c.submit([3]))
        await turns()
        assert send.messages == [[1], [2, 3]]  # nothing held back: two messages out
        send.open_all()
        assert await asyncio.gather(first, second, third) == [[10], [20], [30]]

    run(main)


def test_calls_that_find_the_cap_reached_wait_and_go_merged() -> None:
    async def main() -> None:
        send = Gated()
        c = coalescer(send, 1)
        first = asyncio.ensure_future(c.submit([1]))
        await turns()
        later = []
        for row in (2, 3, 4):  # each in a turn of its own, while the first message is out
            later.append(asyncio.ensure_future(c.submit([row])))
            await turns()
        assert send.messages == [[1]]
        send.open_all()
        assert await first == [10]
        await turns()
        assert send.messages == [[1], [2, 3, 4]]  # one message for the three held back
        send.open_all()
        assert await asyncio.gather(*later) == [[20], [30], [40]]

    run(main)


def test_a_held_back_caller_that_leaves_is_never_sent_and_close_answers_the_rest() -> None:
    async def main() -> None:
        send = Gated()
        c = coalescer(send, 1)
        first = asyncio.ensure_future(c.submit([1]))
        await turns()
        gone = asyncio.ensure_future(c.submit([2]))
        kept = asyncio.ensure_future(c.submit([3]))
        await turns()
        gone.cancel()
        await turns()
        send.gated = False
        send.open_all()
        await c.aclose()  # waits for the held-back call's message too
        assert send.messages == [[1], [3]]
        assert (await first, await kept) == ([10], [30])

    run(main)
