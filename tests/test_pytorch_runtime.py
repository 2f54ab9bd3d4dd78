"""A PyTorch model in a runner: device and precision, inference mode, inputs and outputs,
host staging buffers, out-of-memory splitting and the warm-up batch (on the CPU; the GPU
itself is tests/test_gpu.py's)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

import tiffin
from tests.test_serving_support import asgi_client
from tiffin.exceptions import DeviceUnavailable, InvalidArgument, OutOfDeviceMemory
from tiffin.frameworks.pytorch_runtime import HostStaging, TorchRuntime
from tiffin.serving.app import build_app
from tiffin.serving.model_service import build_service


class Recorder(torch.nn.Module):
    """A linear layer that records what each call saw."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(3, 2)
        self.seen: list[dict[str, Any]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append({"rows": x.shape[0], "dtype": x.dtype,
                          "inference": torch.is_inference_mode_enabled()})
        return self.linear(x)


class Hungry(torch.nn.Module):
    """Runs out of "device memory" on batches of more than ``limit`` rows, and on any batch
    holding a row of 666s."""

    def __init__(self, limit: int, library: bool = False) -> None:
        super().__init__()
        self.limit = limit
        self.library = library  # fail as a CUDA library does: a RuntimeError saying so
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(x.shape[0])
        if x.shape[0] > self.limit or bool((x == 666).all(dim=1).any()):
            if self.library:
                raise RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling ...")
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return x * 2


def _runner(model: tiffin.models.Model, **kwargs: Any) -> tiffin.Runner:
    runner = model.to_runner(**kwargs)
    runner.init_local()
    return runner


@pytest.fixture
def recorder() -> tiffin.models.Model:
    return tiffin.pytorch.save_model("recorder", Recorder(),
                                     signatures={"forward": {"batchable": True}})


def test_a_pytorch_runner_runs_on_its_device_under_inference_mode(recorder) -> None:
    runner = _runner(recorder)
    try:
        assert runner.device == "auto"  # the default for a runnable that supports a GPU
        assert runner.runnable_class.SUPPORTED_RESOURCES == ("nvidia.com/gpu", "cpu")
        expected = "cuda:0" if torch.cuda.is_available() else "cpu"
        assert runner.backend.device == expected
        x = np.arange(6, dtype=np.float64).reshape(2, 3)  # float64, as JSON rows decode
        out = runner.forward.run(x)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == (2, 2)
        seen = runner.backend.instance.model.seen
        assert seen[-1] == {"rows": 2, "dtype": torch.float32, "inference": True}
        # a tensor in, a (CPU) tensor out; lists and DataFrames are taken as arrays
        assert isinstance(runner.forward.run(torch.ones(1, 3)), torch.Tensor)
        assert runner.forward.run([[1.0, 2.0, 3.0]]).shape == (1, 2)
        frame = pd.DataFrame({"a": [1.0], "b": [2.0], "c": [3.0]})
        np.testing.assert_allclose(runner.forward.run(frame), runner.forward.run([[1.0, 2, 3]]))
        with pytest.raises(InvalidArgument, match="takes numbers"):
            runner.forward.run(np.array([["a", "b", "c"]]))
    finally:
        runner.destroy()


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_precision_casts_weights_and_inputs_and_answers_float32(recorder, precision) -> None:
    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    full = _runner(recorder, device="cpu")
    half = _runner(recorder, device="cpu", precision=precision)
    try:
        model = half.backend.instance.model
        assert model.linear.weight.dtype == getattr(torch, precision)
        out = half.forward.run(x)
        assert model.seen[-1]["dtype"] == getattr(torch, precision)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, full.forward.run(x), rtol=0.05, atol=0.05)
    finally:
        full.destroy()
        half.destroy()


def test_device_and_precision_settings_are_checked(recorder) -> None:
    with pytest.raises(InvalidArgument, match="device must be"):
        recorder.to_runner(device="gpu")
    with pytest.raises(InvalidArgument, match="precision must be"):
        recorder.to_runner(precision="float8")
    runner = recorder.to_runner(device="cuda:63")
    with pytest.raises(DeviceUnavailable, match="'cuda:63'"):
        runner.init_local()
    assert runner.backend is None

    from sklearn.linear_model import LinearRegression

    sk = tiffin.sklearn.save_model("lr", LinearRegression().fit([[0.0], [1.0]], [0.0, 1.0]))
    assert sk.to_runner().device == "cpu"
    with pytest.raises(InvalidArgument, match="CPU only"):
        sk.to_runner(device="cuda")
    with pytest.raises(InvalidArgument, match="no precision"):
        sk.to_runner(precision="float16")


@pytest.mark.parametrize("library", [False, True], ids=["torch", "cuda-library"])
def test_an_out_of_memory_batch_is_split_and_the_runner_keeps_serving(library: bool) -> None:
    model = tiffin.pytorch.save_model("hungry", Hungry(limit=4, library=library),
                                      signatures={"forward": {"batchable": True}})
    runner = _runner(model, device="cpu")
    try:
        x = np.arange(11 * 2, dtype=np.float32).reshape(11, 2)
        np.testing.assert_array_equal(runner.forward.run(x), x * 2)  # all 11 rows, in order
        instance = runner.backend.instance
        assert instance.runtime.oom_splits >= 2  # 11 -> 5 + 6 -> 2 + 3 + 3 + 3
        assert max(s for s in instance.model.sizes if s <= 4) <= 4
        # one row that does not fit: a clear error, and the next call is served
        bad = np.full((1, 2), 666, dtype=np.float32)
        with pytest.raises(OutOfDeviceMemory, match="one row"):
            runner.forward.run(bad)
        np.testing.assert_array_equal(runner.forward.run(x[:3]), x[:3] * 2)
    finally:
        runner.destroy()


def test_other_errors_are_not_taken_for_out_of_memory() -> None:
    runtime = TorchRuntime("cpu")

    def broken(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        runtime.run(broken, (np.ones((4, 2), dtype=np.float32),), {}, 0)
    assert runtime.oom_splits == 0


def test_a_method_that_is_not_batchable_is_never_split() -> None:
    model = tiffin.pytorch.save_model("hungry", Hungry(limit=4))  # forward, not batchable
    runner = _runner(model, device="cpu")
    try:
        with pytest.raises(OutOfDeviceMemory, match="cannot split"):
            runner.forward.run(np.ones((6, 2), dtype=np.float32))
        assert runner.backend.instance.model.sizes == [6]
    finally:
        runner.destroy()


@pytest.mark.anyio
async def test_out_of_device_memory_is_a_503_naming_it() -> None:
    model = tiffin.pytorch.save_model("hungry", Hungry(limit=4),
                                      signatures={"forward": {"batchable": True}})
    async with asgi_client(build_app(build_service(model))) as client:
        ok = await client.post("/forward", json=[[1.0, 2.0]] * 9)
        assert ok.status_code == 200 and ok.json() == [[2.0, 4.0]] * 9
        bad = await client.post("/forward", json=[[666.0, 666.0]])
        assert bad.status_code == 503
        assert bad.json()["error"] == "OUT_OF_DEVICE_MEMORY"


def test_the_warm_up_batch_runs_while_the_runner_loads(caplog) -> None:
    example = np.zeros((1, 3), dtype=np.float32)
    warm = tiffin.pytorch.save_model("warm", Recorder(), example_inputs=example)
    cold = tiffin.pytorch.save_model("cold", Recorder())
    with caplog.at_level(logging.INFO, logger="tiffin.pytorch"):
        runner = _runner(warm)
    try:
        assert runner.backend.instance.warmed_up is True
        assert runner.backend.instance.model.seen == [
            {"rows": 1, "dtype": torch.float32, "inference": True}
        ]  # before any call
        assert "warm-up batch ran" in caplog.text
    finally:
        runner.destroy()
    runner = _runner(cold)
    try:
        assert runner.backend.instance.warmed_up is False
        assert runner.backend.instance.model.seen == []
    finally:
        runner.destroy()


def test_a_failing_warm_up_is_logged_and_the_runner_still_loads(caplog) -> None:
    wrong = np.zeros((1, 5), dtype=np.float32)  # the model takes 3 features
    model = tiffin.pytorch.save_model("warm", Recorder(), example_inputs=wrong)
    with caplog.at_level(logging.WARNING, logger="tiffin.pytorch"):
        runner = _runner(model)
    try:
        assert runner.backend.instance.warmed_up is False
        assert "warm-up batch failed" in caplog.text
        assert runner.forward.run(np.ones((1, 3), dtype=np.float32)).shape == (1, 2)
    finally:
        runner.destroy()


def test_host_staging_reuses_one_buffer_per_input_and_casts_on_the_copy() -> None:
    staging = HostStaging(torch, torch.device("cpu"), pin=False, buffered=True)
    first = np.arange(6, dtype=np.float64).reshape(2, 3)
    staging.begin()
    a = staging.put(first, torch.float32)
    b = staging.put(np.ones(4, dtype=np.int64))  # a second input: its own buffer
    assert a.dtype == torch.float32 and a.tolist() == first.tolist()
    assert b.dtype == torch.int64 and a.data_ptr() != b.data_ptr()
    pointer = a.data_ptr()
    staging.begin()  # the next batch: same slot, smaller, the same memory
    again = staging.put(np.full((1, 3), 7.0), torch.float32)
    assert again.data_ptr() == pointer and again.tolist() == [[7.0, 7.0, 7.0]]
    assert len(staging.buffers) == 2
    assert staging.put(np.array(3, dtype=np.int32)).tolist() == 3  # a 0-d input


def test_the_runtime_shares_memory_with_numpy_on_the_cpu() -> None:
    runtime = TorchRuntime("cpu")
    x = np.ones((2, 3), dtype=np.float32)
    assert runtime.to_device(x).data_ptr() == x.ctypes.data  # no copy at all
    frozen = np.ones((2, 3), dtype=np.float32)
    frozen.flags.writeable = False  # e.g. np.frombuffer: copied, no warning
    assert runtime.to_device(frozen).tolist() == frozen.tolist()
