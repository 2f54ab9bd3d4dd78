"""On a CUDA GPU: placement, pinned host copies, precision, a real out-of-memory split, the
memory gauges and MLflow's PyTorch formats moved to the GPU. Marked ``gpu``; skipped where
torch sees no GPU (the only skip the suite allows). Everything around the GPU itself is tested
on the CPU by tests/test_pytorch.py, test_pytorch_runtime.py, test_devices.py and
test_mlflow_pytorch.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import tiffin
from tiffin.exceptions import OutOfDeviceMemory

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)"),
]


def _cnn() -> torch.nn.Module:
    """The MLflow guide's MNIST-shaped CNN."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(8 * 13 * 13, 10),
    ).eval()  # fmt: skip


def _images(rows: int) -> np.ndarray:
    return np.random.default_rng(0).random((rows, 1, 28, 28), dtype=np.float32)


def _expected(net: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


def test_a_runner_on_the_gpu_copies_through_pinned_buffers() -> None:
    net = _cnn()
    model = tiffin.pytorch.save_model("cnn", net, signatures={"forward": {"batchable": True}},
                                      example_inputs=_images(1))
    runner = model.to_runner()  # auto: the GPU
    runner.init_local()
    try:
        instance = runner.backend.instance
        assert runner.backend.device == "cuda:0"
        assert next(instance.model.parameters()).device.type == "cuda"
        assert instance.warmed_up is True
        x = _images(64)
        np.testing.assert_allclose(runner.forward.run(x), _expected(net, x), rtol=1e-3,
                                   atol=1e-4)
        buffers = list(instance.runtime.staging.buffers.values())
        assert buffers and all(b.is_pinned() for b in buffers)
        pointer = buffers[0].data_ptr()
        runner.forward.run(_images(32))  # a smaller batch: the same pinned memory
        assert next(iter(instance.runtime.staging.buffers.values())).data_ptr() == pointer
    finally:
        runner.destroy()


@pytest.mark.parametrize("precision", ["float16", "bfloat16"])
def test_reduced_precision_on_the_gpu(precision: str) -> None:
    net = _cnn()
    model = tiffin.pytorch.save_model("cnn", net)
    runner = model.to_runner(device="cuda", precision=precision)
    runner.init_local()
    try:
        assert next(runner.backend.instance.model.parameters()).dtype == getattr(torch, precision)
        x = _images(8)
        out = runner.forward.run(x)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, _expected(net, x), rtol=0.05, atol=0.05)
    finally:
        runner.destroy()


class Greedy(torch.nn.Module):
    """Allocates ``per_row`` bytes on the GPU for each row of its batch."""

    def __init__(self, per_row: int) -> None:
        super().__init__()
        self.per_row = per_row
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scratch = torch.empty(x.shape[0] * self.per_row, dtype=torch.uint8, device=x.device)
        return x * 2 + scratch[:1].float() * 0 + self.anchor


def test_a_real_out_of_memory_batch_is_split_and_the_runner_keeps_serving() -> None:
    torch.cuda.empty_cache()
    free, _total = torch.cuda.mem_get_info()
    per_row = int(free * 0.3)  # 3 rows do not fit, 2 do
    model = tiffin.pytorch.save_model("greedy", Greedy(per_row),
                                      signatures={"forward": {"batchable": True}})
    runner = model.to_runner(device="cuda")
    runner.init_local()
    try:
        x = np.arange(8, dtype=np.float32).reshape(8, 1)
        np.testing.assert_array_equal(runner.forward.run(x), x * 2)
        assert runner.backend.instance.runtime.oom_splits >= 1
        huge = tiffin.pytorch.save_model("huge", Greedy(int(free * 4)),
                                         signatures={"forward": {"batchable": True}})
        alone = huge.to_runner(device="cuda")
        alone.init_local()
        try:
            with pytest.raises(OutOfDeviceMemory, match="one row"):
                alone.forward.run(x[:1])
        finally:
            alone.destroy()
        np.testing.assert_array_equal(runner.forward.run(x[:2]), x[:2] * 2)
    finally:
        runner.destroy()


def test_gpu_memory_gauges_show_this_process() -> None:
    from tiffin.serving.metrics import ServerMetrics

    model = tiffin.pytorch.save_model("cnn", _cnn())
    runner = model.to_runner(device="cuda")
    runner.init_local()
    try:
        runner.forward.run(_images(4))
        text = ServerMetrics(tiffin.Service("s", runners=[runner])).render()[0].decode()
        allocated = [line for line in text.splitlines()
                     if line.startswith("tiffin_gpu_memory_allocated_bytes{")]
        assert allocated and 'process="local"' in allocated[0]
        assert float(allocated[0].rpartition(" ")[2]) > 0
    finally:
        runner.destroy()


@pytest.mark.parametrize("fmt", ["pt2", "pickle"])
@pytest.mark.parametrize("flavor", ["native", None])
def test_mlflow_pytorch_models_run_on_the_gpu(fmt: str, flavor: str | None,
                                              tmp_path: Path) -> None:
    import mlflow

    net = _cnn()
    x = _images(16)
    kwargs = {"input_example": x[:1]} if fmt == "pt2" else {"serialization_format": "pickle"}
    mlflow.pytorch.save_model(net, str(tmp_path / "m"), pip_requirements=["torch"], **kwargs)
    model = tiffin.mlflow.import_model("mnist", str(tmp_path / "m"), flavor=flavor,
                                       signatures={"predict": {"batchable": True}})
    runner = model.to_runner(device="cuda")
    runner.init_local()
    try:
        np.testing.assert_allclose(runner.predict.run(x), _expected(net, x), rtol=1e-3,
                                   atol=1e-4)
        instance = runner.backend.instance
        if flavor == "native":
            assert next(instance.model.parameters()).device.type == "cuda"
        else:
            assert instance.model._model_impl.device == "cuda:0"
    finally:
        runner.destroy()
