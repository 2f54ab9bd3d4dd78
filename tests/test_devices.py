"""Devices: the device and precision settings (tiffin.device_settings), resolving them here
(tiffin.runner.devices), the refusal at start-up of a GPU that is not there, and a GPU per
runner process (CUDA_VISIBLE_DEVICES), with real ``tiffin serve`` processes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest
import torch

import tiffin
from tests.conftest import free_port, tiffin_exe
from tests.test_serving_support import running, server_env, start_tiffin
from tiffin.config import load_settings
from tiffin.device_settings import (
    check_device,
    check_precision,
    gpu_for_process,
    visible_gpus,
)
from tiffin.exceptions import DeviceUnavailable, InvalidArgument
from tiffin.runner.devices import check_available, device_memory, resolve_device
from tiffin.serving.app import build_app

HAS_GPU = torch.cuda.is_available()


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:7", " CUDA:1 "])
def test_device_settings_that_are_accepted(value: str) -> None:
    assert check_device(value) == value.strip().lower()


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:-1", "cuda:01", "mps", "", None, 0])
def test_device_settings_that_are_refused(value: object) -> None:
    with pytest.raises(InvalidArgument, match=r"'auto', 'cpu', 'cuda' or 'cuda:N'"):
        check_device(value)


def test_precision_settings() -> None:
    assert check_precision(None) is None
    assert check_precision("BFloat16") == "bfloat16"
    with pytest.raises(InvalidArgument, match="float32, float16, bfloat16"):
        check_precision("fp8")


def test_visible_gpus_reads_cuda_visible_devices_as_cuda_does() -> None:
    assert visible_gpus({}) is None
    assert visible_gpus({}, 2) == ["0", "1"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "3, 5"}, 8) == ["3", "5"]
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, 8) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}) == []
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "2,-1,4"}) == ["2"]  # CUDA stops at -1
    assert visible_gpus({"CUDA_VISIBLE_DEVICES": "GPU-8a1f,GPU-77c2"}) == ["GPU-8a1f", "GPU-77c2"]


def test_runner_process_i_gets_gpu_i_mod_n() -> None:
    gpus = ["3", "5"]
    assert [gpu_for_process("auto", i, gpus) for i in range(5)] == ["3", "5", "3", "5", "3"]
    assert [gpu_for_process("cuda", i, gpus) for i in range(3)] == ["3", "5", "3"]
    assert [gpu_for_process("cuda:1", i, gpus) for i in range(3)] == ["5", "5", "5"]
    assert gpu_for_process("cpu", 0, gpus) is None
    assert gpu_for_process("auto", 0, []) is None
    with pytest.raises(DeviceUnavailable, match=r"'cuda:2'.*2 GPU"):
        gpu_for_process("cuda:2", 0, gpus)


def test_resolving_a_device_here() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda:0" if HAS_GPU else "cpu")
    assert resolve_device("auto", supports_gpu=False) == "cpu"
    with pytest.raises(DeviceUnavailable, match="CPU only"):
        resolve_device("cuda", supports_gpu=False)
    with pytest.raises(DeviceUnavailable, match=r"'cuda:63' asked for runner 'r'") as info:
        resolve_device("cuda:63", what="runner 'r'")
    assert "CUDA_VISIBLE_DEVICES" in str(info.value) and "\n" not in str(info.value)
    check_available("auto", supports_gpu=True, what="x")  # never refused
    with pytest.raises(DeviceUnavailable):
        check_available("cuda:63", supports_gpu=True, what="x")
    if not HAS_GPU:
        with pytest.raises(DeviceUnavailable, match="torch sees no GPU"):
            resolve_device("cuda")
        assert device_memory() == {}  # CUDA never used: nothing to report


def test_device_and_precision_in_the_settings_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "tiffin.yaml"
    config.write_text("runners:\n  mnist:\n    device: cuda:1\n    precision: float16\n")
    settings = load_settings(config, environ={})
    assert settings.runners["mnist"].device == "cuda:1"
    assert settings.runners["mnist"].precision == "float16"
    assert not settings.runner_processes
    from_env = load_settings(environ={"TIFFIN_RUNNERS__MNIST__DEVICE": "CPU",
                                      "TIFFIN_RUNNERS__MNIST__WORKERS": "2"})
    assert from_env.runners["mnist"].device == "cpu"
    assert from_env.runner_processes  # a runner with processes of its own: a process tree
    with pytest.raises(InvalidArgument, match=r"runners\.mnist\.device: device must be"):
        load_settings(environ={"TIFFIN_RUNNERS__MNIST__DEVICE": "gpu0"})


def _torch_model() -> tiffin.models.Model:
    torch.manual_seed(0)
    return tiffin.pytorch.save_model(
        "mnist", torch.nn.Linear(4, 2), signatures={"forward": {"batchable": True}}
    )


def test_the_settings_place_a_runner_and_a_missing_gpu_stops_the_app_before_it_serves() -> None:
    from tiffin.serving.model_service import build_service

    model = _torch_model()
    settings = load_settings(environ={"TIFFIN_RUNNERS__MNIST__DEVICE": "cuda:63",
                                      "TIFFIN_RUNNERS__MNIST__PRECISION": "bfloat16"})
    service = build_service(model)
    with pytest.raises(DeviceUnavailable, match="'cuda:63' asked for runner 'mnist'"):
        build_app(service, settings)
    runner = service.runners[0]
    assert (runner.device, runner.precision) == ("cuda:63", "bfloat16")


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_model_refuses_a_missing_gpu_in_one_line(
    tmp_path: Path, tiffin_home: Path, workers: str
) -> None:
    model = _torch_model()
    env = server_env(tiffin_home, TIFFIN_RUNNERS__MNIST__DEVICE="cuda:63")
    done = subprocess.run(
        [tiffin_exe(), "serve-model", str(model.tag), "--workers", workers,
         "--host", "127.0.0.1", "--port", str(free_port())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("tiffin: error: device 'cuda:63' asked for runner 'mnist'"), last
    assert "Traceback" not in done.stderr


PROBE = """\
import os

import tiffin
from tiffin.io import JSON


class Probe(tiffin.Runnable):
    SUPPORTED_RESOURCES = ("nvidia.com/gpu", "cpu")

    def __init__(self, device):
        self.device = device

    @tiffin.Runnable.method
    def where(self, _):
        return {"pid": os.getpid(), "device": self.device,
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


probe = tiffin.Runner(Probe, name="probe")
svc = tiffin.Service("probe", runners=[probe])


@svc.api(input=JSON(), output=JSON())
async def where(x):
    return await probe.where.async_run(x)
"""


@pytest.mark.slow
@pytest.mark.parametrize(("device", "expected"), [("auto", {"4", "7"}), ("cpu", {"4,7"})])
def test_each_runner_process_sees_its_own_gpu(
    tmp_path: Path, tiffin_home: Path, device: str, expected: set[str]
) -> None:
    """Three runner processes, one API worker, GPUs 4 and 7 visible: processes 0 and 2 see
    GPU 4, process 1 GPU 7 (and a runner on the CPU is left as it was)."""
    (tmp_path / "probe.py").write_text(PROBE)
    (tmp_path / "tiffin.yaml").write_text(
        f"runners:\n  probe:\n    workers: 3\n    device: {device}\n"
    )
    env = server_env(tiffin_home, CUDA_VISIBLE_DEVICES="4,7")
    server = start_tiffin(["serve", "probe.py:svc", "--config", "tiffin.yaml"],
                          cwd=tmp_path, env=env, log=tmp_path / "serve.log")
    with running(server):
        answers = {}
        for _ in range(30):  # calls go to each process in turn
            answer = httpx.post(server.url + "/where", json=0, timeout=30).json()
            answers[answer["pid"]] = answer
            if len(answers) == 3:
                break
        assert len(answers) == 3, answers
        assert server.proc.pid not in answers  # the runner lives in processes of its own
        assert {a["visible"] for a in answers.values()} == expected
        if device == "auto":
            assert sorted(a["visible"] for a in answers.values()) == ["4", "4", "7"]
        # a GPU this machine lacks (CUDA_VISIBLE_DEVICES names it): the runner falls back
        assert {a["device"] for a in answers.values()} == {"cpu"}
        metrics = httpx.get(server.url + "/metrics", timeout=30)
        assert metrics.status_code == 200  # each runner process answered for its GPU memory
