"""Runnable, Runner, init_local, run/async_run, and framework runners (sklearn, picklable)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

import tiffin
from tiffin.exceptions import InvalidArgument, Overloaded, RunnerError

pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")


@pytest.fixture(scope="module")
def iris():
    data = load_iris(as_frame=True)
    clf = LogisticRegression(max_iter=500).fit(data.data, data.target)
    return data.data, clf


class Recorder(tiffin.Runnable):
    """Records every batch it sees; doubles its input."""

    SUPPORTED_RESOURCES = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING = False

    def __init__(self, delay: float = 0.0) -> None:
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.delay = delay

    @tiffin.Runnable.method(batchable=True, batch_dim=0)
    def double(self, x):
        import time

        self.batches.append(len(x))
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        return x * 2

    @tiffin.Runnable.method
    def echo(self, x, suffix=""):
        return f"{x}{suffix}"


def test_runnable_collects_marked_methods():
    assert Recorder.methods["double"].batchable is True
    assert Recorder.methods["echo"].batchable is False
    assert "__init__" not in Recorder.methods


def test_runner_needs_a_runnable_with_methods():
    class Empty(tiffin.Runnable):
        pass

    with pytest.raises(InvalidArgument, match="no methods"):
        tiffin.Runner(Empty)
    with pytest.raises(InvalidArgument, match=r"subclass of tiffin\.Runnable"):
        tiffin.Runner(object)  # type: ignore[arg-type]


def test_calling_before_init_local_says_what_to_do():
    runner = tiffin.Runner(Recorder)
    with pytest.raises(RunnerError, match=r"init_local\(\)"):
        runner.echo.run("x")
    with pytest.raises(RunnerError, match="not initialised"):
        asyncio.run(runner.echo.async_run("x"))


def test_unknown_method_is_a_clear_attribute_error():
    runner = tiffin.Runner(Recorder)
    with pytest.raises(AttributeError, match="has no method 'nope'"):
        runner.nope  # noqa: B018


def test_run_and_async_run_from_several_event_loops_and_threads():
    runner = tiffin.Runner(Recorder, name="rec", runnable_init_params={"delay": 0.0})
    runner.init_local()
    try:
        assert runner.echo.run("a", suffix="!") == "a!"
        # several asyncio.run calls one after another, each a new loop
        for i in range(3):
            out = asyncio.run(runner.double.async_run(np.array([i, i + 1])))
            assert out.tolist() == [2 * i, 2 * i + 2]
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda i: runner.double.run(np.array([i])), range(32)))
        assert [r.tolist() for r in results] == [[2 * i] for i in range(32)]
        # every call ran on the runner's one worker thread, or inline on the background event
        # loop that blocking callers share (a cheap batch: tests/test_inline.py)
        threads = runner.backend.instance.threads  # type: ignore[union-attr]
        assert {t.rsplit("_", 1)[0] for t in threads} <= {"tiffin-rec", "tiffin-runner-loop"}
    finally:
        runner.destroy()


def test_concurrent_async_calls_are_batched_and_each_gets_its_own_rows():
    runner = tiffin.Runner(Recorder, runnable_init_params={"delay": 0.01})
    runner.init_local()

    async def main():
        return await asyncio.gather(
            *(runner.double.async_run(np.array([[i, i]])) for i in range(40))
        )

    try:
        results = asyncio.run(main())
        assert [r.tolist() for r in results] == [[[2 * i, 2 * i]] for i in range(40)]
        batches = runner.backend.instance.batches  # type: ignore[union-attr]
        assert sum(batches) == 40
        assert max(batches) > 1, "concurrent calls were never batched"
        snap = runner.double.stats.snapshot()  # type: ignore[union-attr]
        assert snap["calls"] == 40 and snap["batches"] == len(batches)
    finally:
        runner.destroy()


def test_max_batch_size_and_latency_come_from_runner_and_method_configs():
    runner = tiffin.Runner(
        Recorder,
        max_batch_size=8,
        max_latency_ms=100,
        method_configs={"double": {"max_batch_size": 4}},
    )
    assert runner.double.settings.max_batch_size == 4
    assert runner.double.settings.max_latency_ms == 100
    runner.init_local()
    try:
        out = runner.double.run(np.arange(10))
        assert out.tolist() == list(range(0, 20, 2))
        assert max(runner.backend.instance.batches) <= 4  # type: ignore[union-attr]
    finally:
        runner.destroy()
    with pytest.raises(InvalidArgument, match="unknown method"):
        tiffin.Runner(Recorder, method_configs={"nope": {}})
    with pytest.raises(InvalidArgument, match="max_batch_size"):
        tiffin.Runner(Recorder, max_batch_size=0)


class Gate(tiffin.Runnable):
    """Its first batch waits until the test opens the gate."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()

    @tiffin.Runnable.method(batchable=True)
    def double(self, x):
        self.started.set()
        assert self.gate.wait(30)
        return x * 2


def test_overload_past_max_latency_is_a_distinct_error():
    runner = tiffin.Runner(Gate, max_latency_ms=50)
    runner.init_local()
    gate = runner.backend.instance  # type: ignore[union-attr]

    async def main():
        first = asyncio.ensure_future(runner.double.async_run(np.array([1])))
        assert await asyncio.to_thread(gate.started.wait, 30)  # the first batch is running
        try:
            # queued behind it for longer than max_latency_ms: answered, not left waiting
            second = await asyncio.gather(
                runner.double.async_run(np.array([2])), return_exceptions=True
            )
        finally:
            gate.gate.set()
        return await first, second[0]

    try:
        first, second = asyncio.run(main())
        assert first.tolist() == [2]
        assert isinstance(second, Overloaded)
        assert second.http_status == 503
    finally:
        runner.destroy()


@pytest.mark.parametrize(
    "make_input",
    [
        pytest.param(lambda X: X.iloc[:5], id="dataframe"),
        pytest.param(lambda X: X.to_numpy()[:5], id="ndarray"),
        pytest.param(lambda X: X.to_numpy()[:5].tolist(), id="list"),
    ],
)
@pytest.mark.parametrize("batchable", [True, False])
def test_sklearn_runner_every_declared_method(iris, make_input, batchable):
    X, clf = iris
    model = tiffin.sklearn.save_model(
        "iris_clf",
        clf,
        signatures={"predict": {"batchable": batchable}, "predict_proba": {"batchable": batchable}},
    )
    runner = tiffin.sklearn.get(model.tag).to_runner()
    assert sorted(runner.methods) == ["predict", "predict_proba"]
    runner.init_local()
    try:
        data = make_input(X)
        np.testing.assert_array_equal(runner.predict.run(data), clf.predict(data))
        np.testing.assert_allclose(runner.predict_proba.run(data), clf.predict_proba(data))
    finally:
        runner.destroy()


def test_sklearn_runner_batches_dataframes_from_concurrent_callers(iris):
    X, clf = iris
    tiffin.sklearn.save_model("iris_clf", clf, signatures={"predict": {"batchable": True}})
    runner = tiffin.sklearn.get("iris_clf").to_runner()
    runner.init_local()

    async def main():
        return await asyncio.gather(
            *(runner.predict.async_run(X.iloc[i : i + 3]) for i in range(0, 60, 3))
        )

    try:
        results = asyncio.run(main())
        for i, got in zip(range(0, 60, 3), results, strict=True):
            np.testing.assert_array_equal(got, clf.predict(X.iloc[i : i + 3]))
    finally:
        runner.destroy()


def test_picklable_model_runner_with_dict_and_list_inputs():
    class Summer:
        def predict(self, batch):
            if isinstance(batch, dict):
                return [a + b for a, b in zip(batch["a"], batch["b"], strict=True)]
            return [sum(row) for row in batch]

    tiffin.picklable_model.save_model(
        "summer", Summer(), signatures={"predict": {"batchable": True}}
    )
    runner = tiffin.picklable_model.get("summer").to_runner(name="sum")
    assert runner.name == "sum"
    runner.init_local()
    try:
        assert runner.predict.run([[1, 2], [3, 4]]) == [3, 7]

        async def main():
            return await asyncio.gather(
                runner.predict.async_run({"a": [1, 2], "b": [10, 20]}),
                runner.predict.async_run({"a": [3], "b": [30]}),
            )

        assert asyncio.run(main()) == [[11, 22], [33]]
    finally:
        runner.destroy()


def test_model_exception_reaches_every_caller_and_runner_keeps_working():
    class Picky:
        def predict(self, batch):
            if any(v < 0 for v in batch):
                raise ValueError("negative input")
            return [v + 1 for v in batch]

    tiffin.picklable_model.save_model("picky", Picky(), signatures={"predict": {}})
    runner = tiffin.picklable_model.get("picky").to_runner()
    runner.init_local()
    try:
        with pytest.raises(ValueError, match="negative input"):
            runner.predict.run([-1])
        assert runner.predict.run([1, 2]) == [2, 3]
    finally:
        runner.destroy()


def test_configure_changes_every_method():
    runner = tiffin.Runner(Recorder)
    runner.configure(max_batch_size=16, max_latency_ms=250)
    assert runner.double.settings.max_batch_size == 16
    assert runner.echo.settings.max_latency_ms == 250
    with pytest.raises(InvalidArgument):
        runner.configure(max_latency_ms=-1)


def test_dataframe_rows_keep_their_index_through_batching():
    class Identity(tiffin.Runnable):
        @tiffin.Runnable.method(batchable=True)
        def same(self, df):
            return df

    runner = tiffin.Runner(Identity)
    runner.init_local()

    async def main():
        a = pd.DataFrame({"x": [1, 2]}, index=[10, 11])
        b = pd.DataFrame({"x": [3]}, index=[99])
        return await asyncio.gather(runner.same.async_run(a), runner.same.async_run(b))

    try:
        first, second = asyncio.run(main())
        assert first.index.tolist() == [10, 11] and first["x"].tolist() == [1, 2]
        assert second.index.tolist() == [99] and second["x"].tolist() == [3]
    finally:
        runner.destroy()


def test_runner_threads_setting_is_checked(monkeypatch):
    class Threaded(tiffin.Runnable):
        SUPPORTS_CPU_MULTI_THREADING = True

        @tiffin.Runnable.method
        def threads(self):
            from threadpoolctl import threadpool_info

            return {info["internal_api"]: info["num_threads"] for info in threadpool_info()}

    monkeypatch.setenv("TIFFIN_RUNNER_THREADS", "lots")
    with pytest.raises(InvalidArgument, match="TIFFIN_RUNNER_THREADS"):
        tiffin.Runner(Threaded).init_local()
    monkeypatch.delenv("TIFFIN_RUNNER_THREADS")
    runner = tiffin.Runner(Threaded)
    runner.init_local()
    try:
        # by default the worker thread's native pools (OpenMP, BLAS) run one thread each
        assert set(runner.threads.run().values()) == {1}
    finally:
        runner.destroy()


class Single(tiffin.Runnable):
    """Methods that are not batchable: one blocks until the test opens its gate."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()
        self.ran: list[int] = []

    @tiffin.Runnable.method
    def hold(self):
        self.started.set()
        assert self.gate.wait(30)
        return "held"

    @tiffin.Runnable.method
    def record(self, n):
        self.ran.append(n)
        return n


def test_a_call_that_is_not_batchable_is_overloaded_past_max_latency_and_never_runs():
    """The same queue deadline as batchable methods: 503 at max_latency_ms, not a wait for
    ever behind a stuck call; and the call it refused does not run later either."""
    runner = tiffin.Runner(Single, max_latency_ms=50)
    runner.init_local()
    single = runner.backend.instance  # type: ignore[union-attr]

    async def main():
        held = asyncio.ensure_future(runner.hold.async_run())
        assert await asyncio.to_thread(single.started.wait, 30)
        try:
            refused = await asyncio.gather(runner.record.async_run(1), return_exceptions=True)
        finally:
            single.gate.set()
        return await held, refused[0], await runner.record.async_run(2)

    try:
        held, refused, later = asyncio.run(main())
        assert held == "held" and later == 2
        assert isinstance(refused, Overloaded) and refused.http_status == 503
        assert single.ran == [2]
    finally:
        runner.destroy()


def test_a_call_that_is_not_batchable_whose_caller_goes_away_never_runs():
    runner = tiffin.Runner(Single)
    runner.init_local()
    single = runner.backend.instance  # type: ignore[union-attr]

    async def main():
        held = asyncio.ensure_future(runner.hold.async_run())
        assert await asyncio.to_thread(single.started.wait, 30)
        queued = asyncio.ensure_future(runner.record.async_run(1))
        await asyncio.sleep(0)  # it is queued behind the held call
        queued.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await queued  # its caller has gone
        single.gate.set()
        await held
        return await runner.record.async_run(2)

    try:
        assert asyncio.run(main()) == 2
        assert single.ran == [2]
    finally:
        runner.destroy()


def test_a_blocking_run_waits_no_longer_than_the_request_deadline():
    """A sync API function's ``run()`` used to wait for ever on a stuck model; within a
    request it gives up at the request's deadline, and its queued call leaves the queue."""
    from tiffin.runner.runner import REQUEST_DEADLINE

    runner = tiffin.Runner(Single)
    runner.init_local()
    single = runner.backend.instance  # type: ignore[union-attr]
    stuck = ThreadPoolExecutor(1).submit(runner.hold.run)
    assert single.started.wait(30)
    token = REQUEST_DEADLINE.set(time.monotonic() + 0.2)
    try:
        with pytest.raises(TimeoutError, match="deadline"):
            runner.record.run(1)  # queued behind the stuck call
    finally:
        REQUEST_DEADLINE.reset(token)
        single.gate.set()
    try:
        assert stuck.result(30) == "held"
        assert runner.record.run(2) == 2
        assert single.ran == [2]  # the call given up never ran
    finally:
        runner.destroy()
