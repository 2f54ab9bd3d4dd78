"""What adaptive batching buys: latency and throughput of concurrent one-row callers.

Run with ``python bench/batching.py`` (``--help`` for options). Two models are called through
``tiffin.Runner`` ``async_run`` with the default batching settings (max_batch_size 1024,
max_latency_ms 5000):

* ``synthetic``: a ``tiffin.Runnable`` whose batch of n rows costs ``a·n + b`` (a sleep in the
  runner's worker thread) and returns its input, so every row is its own identity.
* ``sklearn``: a HistGradientBoostingClassifier on 32 features, trained on synthetic data and
  sized so that ``predict_proba`` costs about 1.5 ms for one row and 6 ms for 1024 rows (the
  script measures and prints the real figures), saved with ``tiffin.sklearn.save_model`` into
  a temporary store and run by ``model.to_runner()``; OpenMP and BLAS are held to one thread
  (``OMP_NUM_THREADS=1``) so the model is one CPU, as in serving.

For each, 1, 16 and 64 callers loop: take the next row of a pool, call, check the answer is
exactly that row's (the input itself, or the model's output precomputed for that row), repeat.
A fourth measurement ("failing") has 64 callers of which one always sends a row the model
rejects (its first feature ``inf``: both models do their normal work on the batch, then raise
``ValueError`` if it holds such a row, so a failed batch costs what a good one costs). The 63
good callers check their rows as above; the bad caller must get its ``ValueError`` every time
(counted). Its table shows the good callers' rows/s beside the all-good 64-caller figure of
the same rounds, as a ratio, and the model calls per failure.
Every measurement gets ``--seconds`` in all, spread over ``--rounds`` rounds that take turns, so
a shared machine's changing load falls on all of them alike. The baseline is the model called
directly and serially, one row at a time, in the same process and run; the table also shows one
caller calling through the worker thread without the dispatcher ("thread"), which separates the
cost of the thread hop from the cost of batching. Targets: with one caller, median latency
within 1.2x of a direct call; with 64 callers, at least 10x the baseline's rows/s with p99
latency under 50 ms; with one failing caller among 64, the good callers keep at least 0.5x
the all-good 64-caller rows/s. The script exits 1 when a target is missed.

:func:`measure` only needs an ``async def call(rows)``; point it at ``Runner.async_run`` to time
the whole runner path.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

# One thread for OpenMP/BLAS in every thread (the model's worker thread included), set before
# numpy loads: the model is one CPU, as in serving. threadpoolctl would limit the calling
# thread only, and OpenMP's default of one thread per core makes a worker thread's small
# predictions ten times slower on a busy machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

import tiffin

FEATURES = 32
POOL = 8192
CONCURRENCY = (1, 16, 64)
SYNTH_A = 4.4e-6  # seconds per row
SYNTH_B = 1.5e-3  # seconds per batch
FAILING_TARGET = 0.5  # good callers' rows/s with one failing caller, over all-good rows/s


def rejects(x: np.ndarray) -> bool:
    """Whether a batch holds a row the models reject: its first feature is ``inf``."""
    return bool(np.isinf(x[:, 0]).any())


Call = Callable[[np.ndarray], Awaitable[np.ndarray]]


class Synthetic(tiffin.Runnable):
    """A model whose batch of n rows costs ``SYNTH_A·n + SYNTH_B`` seconds; returns its input."""

    @staticmethod
    def cost(x: np.ndarray) -> np.ndarray:
        time.sleep(SYNTH_A * len(x) + SYNTH_B)
        if rejects(x):
            raise ValueError("the synthetic model rejects a row whose first feature is inf")
        return x

    @tiffin.Runnable.method(batchable=True)
    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.cost(x)


@dataclass
class Result:
    label: str
    kind: str  # "direct", "thread", "batched" or "failing"
    concurrency: int
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    batch_rows: float | None = None  # mean rows per model call, when batched
    errors: int = 0  # errors the failing caller got ("failing" only)
    runs: int = 0  # model calls made, by the method's stats ("failing" only)

    @property
    def calls(self) -> int:
        return len(self.latencies)

    @property
    def rows_per_s(self) -> float:
        return self.calls / self.seconds

    @property
    def median_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] * 1000

    def add(self, other: Result) -> None:
        self.latencies += other.latencies
        self.seconds += other.seconds
        self.errors += other.errors


async def measure(
    call: Call,
    concurrency: int,
    pool: np.ndarray,
    expected: np.ndarray,
    *,
    seconds: float,
) -> Result:
    """``concurrency`` closed-loop callers of one-row ``call``\\s for ``seconds``.

    Every answer is checked against ``expected`` for exactly the row that was sent.
    """
    rows = itertools.count()
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller() -> None:
        while time.perf_counter() < stop:
            i = next(rows) % len(pool)
            started = time.perf_counter()
            out = await call(pool[i : i + 1])
            latencies.append(time.perf_counter() - started)
            if out.shape[0] != 1 or not np.array_equal(out[0], expected[i]):
                raise AssertionError(f"a caller sent row {i} and got someone else's rows back")

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return Result("", "", concurrency, latencies, time.perf_counter() - started)


async def measure_failing(
    call: Call,
    concurrency: int,
    pool: np.ndarray,
    expected: np.ndarray,
    *,
    seconds: float,
) -> Result:
    """:func:`measure` with one of the ``concurrency`` callers sending, again and again, a row
    the model rejects: it must get a ``ValueError`` every time (counted in ``errors``); the
    others must get exactly their own rows, and only their calls are in ``latencies``."""
    rows = itertools.count()
    latencies: list[float] = []
    errors = 0
    stop = time.perf_counter() + seconds
    bad = pool[:1].copy()
    bad[0, 0] = np.inf

    async def caller() -> None:
        while time.perf_counter() < stop:
            i = next(rows) % len(pool)
            started = time.perf_counter()
            out = await call(pool[i : i + 1])
            latencies.append(time.perf_counter() - started)
            if out.shape[0] != 1 or not np.array_equal(out[0], expected[i]):
                raise AssertionError(f"a caller sent row {i} and got someone else's rows back")

    async def failing() -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            try:
                await call(bad)
            except ValueError as exc:
                if "inf" not in str(exc):
                    raise
                errors += 1
            else:
                raise AssertionError("the failing caller got an answer instead of its error")

    started = time.perf_counter()
    await asyncio.gather(failing(), *(caller() for _ in range(concurrency - 1)))
    result = Result("", "", concurrency, latencies, time.perf_counter() - started)
    result.errors = errors
    return result


def direct(
    predict: Callable[[np.ndarray], np.ndarray],
    pool: np.ndarray,
    expected: np.ndarray,
    *,
    seconds: float,
) -> Result:
    """The baseline: serial one-row calls straight to the model, no event loop involved."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds
    started = time.perf_counter()
    for i in itertools.cycle(range(len(pool))):
        if time.perf_counter() >= stop:
            break
        t0 = time.perf_counter()
        out = predict(pool[i : i + 1])
        latencies.append(time.perf_counter() - t0)
        assert np.array_equal(out[0], expected[i])
    return Result("", "", 1, latencies, time.perf_counter() - started)


def train(trees: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    class Picky(HistGradientBoostingClassifier):
        """Predicts every batch, then rejects one that holds a row with an ``inf`` first
        feature (which the trees themselves accept): a failed batch costs a good one's time."""

        def predict_proba(self, X: np.ndarray) -> np.ndarray:
            out = super().predict_proba(X)
            if rejects(X):
                raise ValueError("the model rejects a row whose first feature is inf")
            return out

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, FEATURES))
    y = (x[:, :4].sum(axis=1) + rng.normal(size=len(x)) > 0).astype(int)
    return Picky(max_iter=trees, max_depth=2, early_stopping=False, random_state=0).fit(x, y)


def cost_of(predict: Callable[[np.ndarray], Any], x: np.ndarray, repeat: int = 30) -> float:
    predict(x)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        predict(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


async def scenario(
    label: str,
    method: Any,
    infer: Callable[..., Awaitable[Any]],
    predict: Callable[[np.ndarray], np.ndarray] | None,
    pool: np.ndarray,
    expected: np.ndarray,
    seconds: float,
    rounds: int,
) -> list[Result]:
    """Baseline, thread hop and batched runs of one model, interleaved in ``rounds``.

    Each round runs every measurement for ``seconds / rounds``, so that a shared machine's
    changing load falls on all of them alike.
    """
    submit = method.async_run
    await measure(submit, 16, pool, expected, seconds=0.2)  # warm-up
    results = [Result(label, "direct", 1)]
    if predict is not None:
        results.append(Result(label, "thread", 1))
    batched = {c: Result(label, "batched", c) for c in CONCURRENCY}
    results += batched.values()
    failing = Result(label, "failing", CONCURRENCY[-1])
    results.append(failing)
    counts = {c: [0, 0] for c in CONCURRENCY}  # rows, batches
    step = seconds / rounds
    for _ in range(rounds):
        if predict is not None:
            results[0].add(direct(predict, pool, expected, seconds=step))
            results[1].add(await measure(infer, 1, pool, expected, seconds=step))
        else:  # the synthetic model is async: its direct call is awaited
            results[0].add(await measure(infer, 1, pool, expected, seconds=step))
        for concurrency, result in batched.items():
            stats = method.stats
            rows, batches = stats.rows, stats.batches
            result.add(await measure(submit, concurrency, pool, expected, seconds=step))
            counts[concurrency][0] += stats.rows - rows
            counts[concurrency][1] += stats.batches - batches
        batches = method.stats.batches
        failing.add(
            await measure_failing(submit, failing.concurrency, pool, expected, seconds=step)
        )
        failing.runs += method.stats.batches - batches
    for concurrency, result in batched.items():
        rows, batches = counts[concurrency]
        result.batch_rows = rows / max(batches, 1)
    return results


def table(results: list[Result]) -> str:
    lines = [
        "| model     | callers | calls  | median ms | p99 ms | rows/s  | rows/batch |",
        "|-----------|--------:|-------:|----------:|-------:|--------:|-----------:|",
    ]
    for r in results:
        if r.kind == "failing":
            continue  # in failing_table()
        batch = r.kind if r.batch_rows is None else f"{r.batch_rows:.1f}"
        lines.append(
            f"| {r.label:<9} | {r.concurrency:>7} | {r.calls:>6} | {r.median_ms:>9.2f} "
            f"| {r.p99_ms:>6.2f} | {r.rows_per_s:>7.0f} | {batch:>10} |"
        )
    return "\n".join(lines)


def failing_table(results: list[Result]) -> str:
    """The failing-caller runs (a table of its own: bench/compare.py reads the first one)."""
    lines = [
        "| model     | callers | failing | good calls | errors | median ms | p99 ms "
        "| good rows/s | all-good rows/s | ratio | model calls/error |",
        "|-----------|--------:|--------:|-----------:|-------:|----------:|-------:"
        "|------------:|----------------:|------:|------------------:|",
    ]
    for r in results:
        if r.kind != "failing":
            continue
        good = next(
            g for g in results if (g.label, g.kind, g.concurrency) == (r.label, "batched", 64)
        )
        lines.append(
            f"| {r.label:<9} | {r.concurrency:>7} | {1:>7} | {r.calls:>10} | {r.errors:>6} "
            f"| {r.median_ms:>9.2f} | {r.p99_ms:>6.2f} | {r.rows_per_s:>11.0f} "
            f"| {good.rows_per_s:>15.0f} | {r.rows_per_s / good.rows_per_s:>5.2f} "
            f"| {r.runs / max(r.errors, 1):>17.1f} |"
        )
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(POOL, FEATURES))
    seconds = args.seconds

    model = train(args.trees)
    costs = {n: cost_of(model.predict_proba, pool[:n]) for n in (1, 64, 1024)}
    print(
        f"sklearn model: HistGradientBoostingClassifier({args.trees} trees, depth 2) on "
        f"{FEATURES} features; predict_proba costs "
        + ", ".join(f"{ms:.2f} ms for {n} rows" for n, ms in costs.items())
    )
    expected = model.predict_proba(pool)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bench-model")
    loop = asyncio.get_running_loop()

    async def infer_model(x: np.ndarray) -> np.ndarray:
        return await loop.run_in_executor(executor, model.predict_proba, x)

    async def infer_synthetic(x: np.ndarray) -> np.ndarray:
        return await loop.run_in_executor(executor, Synthetic.cost, x)

    with tempfile.TemporaryDirectory() as home:
        os.environ["TIFFIN_HOME"] = home
        saved = tiffin.sklearn.save_model(
            "bench_hgb", model, signatures={"predict_proba": {"batchable": True}}
        )
        runner = saved.to_runner()
        synthetic = tiffin.Runner(Synthetic, name="synthetic")
        runner.init_local()
        synthetic.init_local()
        results = await scenario(
            "sklearn", runner.predict_proba, infer_model, model.predict_proba, pool, expected,
            seconds, args.rounds,
        )
        results += await scenario(
            "synthetic", synthetic.predict, infer_synthetic, None, pool, pool, seconds,
            args.rounds,
        )
        runner.destroy()
        synthetic.destroy()
    executor.shutdown()

    print()
    print(table(results))
    print()
    print(failing_table(results))
    print()
    ok = True
    for label in ("sklearn", "synthetic"):
        mine = {(r.kind, r.concurrency): r for r in results if r.label == label}
        base = mine["direct", 1]
        latency = mine["batched", 1].median_ms / base.median_ms
        speedup = mine["batched", 64].rows_per_s / base.rows_per_s
        p99 = mine["batched", 64].p99_ms
        failing = mine["failing", 64].rows_per_s / mine["batched", 64].rows_per_s
        good = latency <= 1.2 and speedup >= 10 and p99 < 50 and failing >= FAILING_TARGET
        ok = ok and good
        print(
            f"{label:<9}: 1 caller median latency {latency:.2f}x direct (target <= 1.2x); "
            f"64 callers {speedup:.1f}x direct rows/s (target >= 10x), "
            f"p99 {p99:.1f} ms (target < 50 ms); 1 failing caller of 64: {failing:.2f}x "
            f"all-good rows/s (target >= {FAILING_TARGET}x)  {'OK' if good else 'MISSED'}"
        )
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement (2)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--trees", type=int, default=330, help="size of the sklearn model (330)")
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
