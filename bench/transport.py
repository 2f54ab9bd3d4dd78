"""What a runner process costs a call: the Unix-socket, pickle-5 transport of ``--workers N``.

Run with ``python bench/transport.py``. One runner process serves an identity method (it
returns its input, not batchable, so only the transport is measured); this process calls it
through :class:`tiffin.runner.remote.RemoteRunner`, serially and with 64 concurrent callers, for
arrays from one row of 32 floats to 64 MiB, and compares with the same runner loaded
in-process (``init_local``: a hop to its worker thread, no copy). Medians of ``--repeat``
calls; MiB/s counts the array once each way.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import tiffin
from tiffin.runner.remote import RemoteRunner
from tiffin.runner.runner_server import serve_runner

SIZES = {
    "1 row x 32 f32": (1, 32),
    "64 rows x 32": (64, 32),
    "1024 rows x 32": (1024, 32),
    "1 MiB": (1024, 256),
    "16 MiB": (4096, 1024),
    "64 MiB": (16384, 1024),
}


class Identity(tiffin.Runnable):
    @tiffin.Runnable.method
    def same(self, x):
        return x


def _serve(socket_path: str, ready) -> None:  # the runner process
    runner = tiffin.Runner(Identity, name="identity")
    runner.init_local()
    asyncio.run(serve_runner(runner, socket_path, ready.set))


async def _time(call, array: np.ndarray, repeat: int) -> float:
    await call(array)
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        out = await call(array)
        times.append(time.perf_counter() - started)
    assert out.shape == array.shape
    return statistics.median(times)


async def _concurrent(call, array: np.ndarray, calls: int, concurrency: int = 64) -> float:
    started = time.perf_counter()
    remaining = list(range(calls))

    async def worker() -> None:
        while remaining:
            remaining.pop()
            await call(array)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return calls / (time.perf_counter() - started)


async def main_async(socket_path: str, repeat: int) -> None:
    local = tiffin.Runner(Identity, name="identity")
    local.init_local()
    remote_runner = tiffin.Runner(Identity, name="identity")
    remote = RemoteRunner("identity", [socket_path])
    remote_runner.attach_remote(remote)
    await remote.start()
    while not remote.connected:
        await asyncio.sleep(0.01)
    print("| payload | in-process median | runner process median | added | MiB/s |")
    print("|---|---:|---:|---:|---:|")
    for label, shape in SIZES.items():
        array = np.random.default_rng(0).random(shape, dtype=np.float32)
        n = repeat if array.nbytes < (1 << 22) else max(5, repeat // 50)
        here = await _time(local.same.async_run, array, n)
        there = await _time(remote_runner.same.async_run, array, n)
        rate = 2 * array.nbytes / there / (1 << 20)
        print(f"| {label} | {here * 1e3:.3f} ms | {there * 1e3:.3f} ms | "
              f"{(there - here) * 1e3:.3f} ms | {rate:,.0f} |")
    one_row = np.zeros((1, 32), dtype=np.float32)
    here_rate = await _concurrent(local.same.async_run, one_row, 5000)
    there_rate = await _concurrent(remote_runner.same.async_run, one_row, 5000)
    print(f"\n64 concurrent one-row callers: in-process {here_rate:,.0f} calls/s, "
          f"runner process {there_rate:,.0f} calls/s")
    await remote.aclose()
    local.destroy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=500, help="calls per size (500)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        socket_path = str(Path(tmp) / "identity.sock")
        context = multiprocessing.get_context("spawn")
        ready = context.Event()
        process = context.Process(target=_serve, args=(socket_path, ready), daemon=True)
        process.start()
        try:
            if not ready.wait(60):
                print("the runner process did not start", file=sys.stderr)
                return 1
            asyncio.run(main_async(socket_path, args.repeat))
        finally:
            process.terminate()
            process.join(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
