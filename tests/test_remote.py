"""Runners in their own processes: the pickle-5 transport, and RemoteRunner against a real
runner process over a Unix socket (batching across callers, errors, a killed process)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import tiffin
from tiffin.exceptions import FrameError, RunnerError, RunnerUnavailable
from tiffin.runner import wire
from tiffin.runner.remote import RemoteRunner
from tiffin.runner.runner_server import serve_runner


class Slow(tiffin.Runnable):
    """Doubles its input after ``delay`` seconds per batch; records batch sizes."""

    def __init__(self, delay: float = 0.02) -> None:
        self.delay = delay
        self.sizes: list[int] = []

    @tiffin.Runnable.method(batchable=True)
    def double(self, x):
        self.sizes.append(len(x))
        time.sleep(self.delay)
        if (x < 0).any():
            raise ValueError("negative rows are not allowed")
        return x * 2

    @tiffin.Runnable.method
    def sizes_seen(self):
        return list(self.sizes)

    @tiffin.Runnable.method
    def fail(self, message):
        raise ValueError(message)

    @tiffin.Runnable.method
    def unpicklable(self):
        return lambda: None  # pickle cannot send a lambda back

    @tiffin.Runnable.method
    def echo(self, value):
        return value

    @tiffin.Runnable.method
    def wait_for(self, path):
        """Holds the worker thread until ``path`` exists."""
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.005)
        return "released"

    @tiffin.Runnable.method
    def record(self, n):
        self.sizes.append(-n)  # recorded as a negative "size", apart from real batches
        return n

    @tiffin.Runnable.method
    def made_there(self):
        """An instance of a class that exists in the runner process only."""
        module = types.ModuleType("tiffin_test_made_there")
        exec("class Made:\n    pass\n", module.__dict__)
        sys.modules[module.__name__] = module
        return module.Made()

    @tiffin.Runnable.method
    def crash(self):
        os.kill(os.getpid(), signal.SIGKILL)


def _runner_main(socket_path: str, ready) -> None:  # a child process
    runner = tiffin.Runner(Slow, name="slow")
    runner.init_local()
    asyncio.run(serve_runner(runner, socket_path, ready.set))


@pytest.fixture
def runner_process(tmp_path: Path):
    socket_path = str(tmp_path / "slow.sock")
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    process = context.Process(target=_runner_main, args=(socket_path, ready), daemon=True)
    process.start()
    assert ready.wait(30), "runner process did not start"
    yield process, socket_path
    if process.is_alive():
        process.terminate()
    process.join(10)


def test_frames_round_trip_arrays_out_of_band_and_writable():
    big = np.arange(100_000, dtype=np.float32).reshape(1000, 100)
    chunks = wire.encode(7, ("ok", {"a": big, "b": [1, "x"]}))
    assert len(chunks) == 3  # prefix, pickle header, the array's own memory
    assert sum(len(c) for c in chunks[:2]) < 1000  # the array is not inside the pickle

    async def round_trip():
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(bytes(chunk))
        reader.feed_eof()
        return await wire.receive(reader)

    call_id, (status, value) = asyncio.run(round_trip())
    assert (call_id, status, value["b"]) == (7, "ok", [1, "x"])
    np.testing.assert_array_equal(value["a"], big)
    value["a"][0, 0] = -1  # arrives writable


def _only_here_module() -> types.ModuleType:
    """A module that exists in this process only: the runner process cannot import it."""
    module = types.ModuleType("tiffin_test_only_here")
    exec("class Thing:\n    def __init__(self, n):\n        self.n = n\n", module.__dict__)
    sys.modules[module.__name__] = module
    return module


def test_a_frame_that_cannot_be_unpickled_names_its_call_and_the_next_frame_reads_fine():
    thing = _only_here_module().Thing(3)
    chunks = wire.encode(11, ("call", thing)) + wire.encode(12, ("ok", [1, 2]))
    del sys.modules["tiffin_test_only_here"]  # now this process cannot unpickle it either

    async def read_both():
        reader = asyncio.StreamReader()
        for chunk in chunks:
            reader.feed_data(bytes(chunk))
        reader.feed_eof()
        with pytest.raises(FrameError) as info:
            await wire.receive(reader)
        return info.value, await wire.receive(reader)

    error, second = asyncio.run(read_both())
    assert error.call_id == 11 and "tiffin_test_only_here" in str(error)
    assert second == (12, ("ok", [1, 2]))


def test_a_poisoned_frame_fails_its_call_only_and_the_connection_keeps_serving(runner_process):
    """Arguments the runner process cannot unpickle, and an answer this process cannot
    unpickle: each fails its own call; calls before and after on the same connection work."""
    _process, socket_path = runner_process
    runner = tiffin.Runner(Slow, name="slow")

    async def main():
        remote = await _attach(runner, socket_path)
        try:
            before = await runner.sizes_seen.async_run()
            with pytest.raises(FrameError, match="tiffin_test_only_here"):
                await runner.echo.async_run(_only_here_module().Thing(1))
            with pytest.raises(FrameError, match="tiffin_test_made_there"):
                await runner.made_there.async_run()
            after = await runner.double.async_run(np.ones((2, 2)))
            return before, after, remote.connected
        finally:
            await remote.aclose()

    before, after, connected = asyncio.run(main())
    assert isinstance(before, list)
    np.testing.assert_array_equal(after, np.full((2, 2), 2.0))
    assert connected


def test_a_caller_that_goes_away_takes_its_queued_call_out_of_the_runner_process(
    runner_process, tmp_path
):
    """A cancel message: the runner process never runs a call whose caller left while it
    was queued there (it used to run it, and send an answer nobody read)."""
    _process, socket_path = runner_process
    runner = tiffin.Runner(Slow, name="slow")
    gate = tmp_path / "gate"

    async def main():
        remote = await _attach(runner, socket_path)
        try:
            held = asyncio.ensure_future(runner.wait_for.async_run(str(gate)))
            queued = asyncio.ensure_future(runner.record.async_run(7))
            await asyncio.sleep(0.2)  # both sent; the first holds the runner's thread
            queued.cancel()
            await asyncio.sleep(0.2)  # the cancel message arrives while the call is queued
            gate.touch()
            assert await held == "released"
            assert await runner.record.async_run(8) == 8
            return await runner.sizes_seen.async_run()
        finally:
            await remote.aclose()

    seen = asyncio.run(main())
    assert -8 in seen and -7 not in seen, seen


def test_unpicklable_errors_become_runner_errors():
    class Odd(Exception):
        def __reduce__(self):
            raise TypeError("no pickling")

    err = wire.picklable_error(Odd("boom"))
    assert isinstance(err, RunnerError) and "Odd: boom" in str(err)
    plain = ValueError("fine")
    assert wire.picklable_error(plain) is plain


async def _attach(runner: tiffin.Runner, socket_path: str) -> RemoteRunner:
    """``runner`` attached to the runner process at ``socket_path``, once connected."""
    remote = RemoteRunner(runner.name, [socket_path])
    runner.attach_remote(remote)
    await remote.start()
    for _ in range(100):
        if remote.connected:
            break
        await asyncio.sleep(0.05)
    return remote


@pytest.mark.slow
def test_remote_runner_batches_across_callers_and_survives_errors(runner_process):
    _, socket_path = runner_process
    runner = tiffin.Runner(Slow, name="slow")

    async def main():
        remote = await _attach(runner, socket_path)
        assert runner.is_ready
        results = await asyncio.gather(
            *(runner.double.async_run(np.array([i, i])) for i in range(30))
        )
        with pytest.raises(ValueError, match="bad input"):
            await runner.fail.async_run("bad input")
        with pytest.raises(RunnerError, match="cannot be sent back"):
            await asyncio.wait_for(runner.unpicklable.async_run(), 10)
        sizes = await runner.sizes_seen.async_run()
        await runner.refresh_remote_stats()
        await remote.aclose()
        return results, sizes

    results, sizes = asyncio.run(main())
    assert [r.tolist() for r in results] == [[2 * i, 2 * i] for i in range(30)]
    assert sum(sizes) == 60 and max(sizes) > 2, f"calls were not batched: {sizes}"
    assert runner.double.stats is not None and runner.double.stats.calls == 30


@pytest.mark.slow
def test_an_api_worker_sends_the_calls_of_one_loop_turn_as_one_message(runner_process):
    """Concurrent calls of a batchable method leave the API worker merged (one message, one
    pickle, one queue entry in the runner process), and come back split, each its own rows;
    a merged call that fails is bisected, so only the bad call fails."""
    _, socket_path = runner_process
    runner = tiffin.Runner(Slow, name="slow")

    async def main():
        remote = await _attach(runner, socket_path)
        good = await asyncio.gather(
            *(runner.double.async_run(np.full((1 + i % 3, 2), i)) for i in range(40))
        )
        merged_messages = remote.messages
        mixed = await asyncio.gather(
            *(runner.double.async_run(np.array([[-1 if i == 7 else i]])) for i in range(10)),
            return_exceptions=True,
        )
        await runner.refresh_remote_stats()
        await remote.aclose()
        return good, merged_messages, mixed

    good, merged_messages, mixed = asyncio.run(main())
    for i, result in enumerate(good):
        np.testing.assert_array_equal(result, np.full((1 + i % 3, 2), 2 * i))
    assert merged_messages <= 2, f"40 calls took {merged_messages} messages"
    assert isinstance(mixed[7], ValueError) and "negative" in str(mixed[7])
    assert [r.tolist() for i, r in enumerate(mixed) if i != 7] == [
        [[2 * i]] for i in range(10) if i != 7
    ]
    # the runner process counts the callers' calls, not the messages: 40, then the 10 merged,
    # then the bisection's halves: 0-4 and 5-9 (fails), 5-6 and 7-9 (fails), 7 alone, 8-9
    assert runner.double.stats is not None
    assert runner.double.stats.calls == 40 + 10 + (5 + 5) + (2 + 3) + (1 + 2)


@pytest.mark.slow
def test_in_flight_callers_get_503_when_the_runner_process_dies(runner_process):
    process, socket_path = runner_process
    runner = tiffin.Runner(Slow, name="slow")

    async def main():
        remote = RemoteRunner("slow", [socket_path])
        runner.attach_remote(remote)
        await remote.start()
        while not remote.connected:
            await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(runner.double.async_run(np.arange(4)))
        await asyncio.sleep(0)
        started = time.perf_counter()
        with pytest.raises(RunnerUnavailable):
            await runner.crash.async_run()
        with pytest.raises(RunnerUnavailable) as info:
            await asyncio.gather(waiting)
        elapsed = time.perf_counter() - started
        assert info.value.http_status == 503
        for _ in range(20):  # noticed as gone, new calls fail fast
            if not remote.connected:
                break
            await asyncio.sleep(0.05)
        with pytest.raises(RunnerUnavailable):
            await runner.double.async_run(np.arange(2))
        assert not runner.is_ready
        await remote.aclose()
        return elapsed

    elapsed = asyncio.run(main())
    assert elapsed < 30, "callers hung after the runner process died"  # (they would wait forever)
    process.join(5)
    assert process.exitcode == -signal.SIGKILL
