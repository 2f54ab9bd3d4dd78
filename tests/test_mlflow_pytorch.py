"""tiffin.mlflow with PyTorch models logged by mlflow.pytorch, in both of MLflow 3's formats:
as pyfunc (MLflow's semantics, on the runner's device) and natively (the module itself, every
declared method, on the runner's device)."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

import tiffin
from tests.test_serving_support import asgi_client
from tiffin.exceptions import DeviceUnavailable, InvalidArgument
from tiffin.serving.app import build_app
from tiffin.serving.model_service import build_service

pytestmark = pytest.mark.usefixtures("mlflow_env")


def _tiny_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


@pytest.mark.parametrize("fmt", ["pt2", "pickle"])
def test_pytorch_model_imports_and_runs_through_pyfunc(fmt: str, tmp_path: Path) -> None:
    net = _tiny_mlp().eval()
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    kwargs = {"input_example": x} if fmt == "pt2" else {"serialization_format": "pickle"}
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(
            net, name="pytorch-model", pip_requirements=["torch"], **kwargs
        )
        artifact_uri = mlflow.get_artifact_uri("pytorch-model")

    model = tiffin.mlflow.import_model(
        "mlflow_pytorch_mlp", artifact_uri, signatures={"predict": {"batchable": True}}
    )
    facts = model.info.context["mlflow"]
    assert facts["flavors"] == ["python_function", "pytorch"]
    assert facts["model_id"] == info.model_id
    assert model.info.signatures["predict"]["batchable"] is True

    pyfunc = tiffin.mlflow.load_model("mlflow_pytorch_mlp:latest")
    assert isinstance(pyfunc, mlflow.pyfunc.PyFuncModel)
    np.testing.assert_allclose(pyfunc.predict(x), expected, rtol=1e-5, atol=1e-6)

    native = mlflow.pytorch.load_model(model.path_of(tiffin.mlflow.MLFLOW_MODEL_FOLDER))
    with torch.no_grad():
        out = native(torch.from_numpy(x))
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)

    # natively too: the module itself, on the runner's device
    native_model = tiffin.mlflow.import_model(
        "mlflow_pytorch_mlp", info.model_uri, flavor="native"
    )
    assert native_model.info.options["native_flavor"] == "pytorch"
    module = tiffin.mlflow.load_native(native_model)
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), expected, rtol=1e-5,
                                   atol=1e-6)


class WithEmbed(torch.nn.Module):
    """A module with a method of its own (MLflow's pickle format keeps it; pt2 keeps forward)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Linear(4, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.body(x)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _logged(net: torch.nn.Module, fmt: str, x: np.ndarray, tmp_path: Path) -> str:
    path = tmp_path / f"model-{fmt}"
    kwargs = {"input_example": x} if fmt == "pt2" else {"serialization_format": "pickle"}
    mlflow.pytorch.save_model(net, str(path), pip_requirements=["torch"], **kwargs)
    return str(path)


@pytest.mark.parametrize("flavor", ["native", "pytorch"])
@pytest.mark.parametrize("fmt", ["pt2", "pickle"])
def test_native_pytorch_imports_run_on_the_runners_device(
    fmt: str, flavor: str, tmp_path: Path
) -> None:
    net = _tiny_mlp().eval()
    x = np.random.default_rng(0).normal(size=(6, 4)).astype("float32")
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    model = tiffin.mlflow.import_model(
        "mlp", _logged(net, fmt, x, tmp_path), flavor=flavor,
        signatures={"predict": {"batchable": True}},
    )  # fmt: skip
    assert model.info.options["native_flavor"] == "pytorch"
    runner = model.to_runner()
    assert runner.device == "auto"
    runner.init_local()
    try:
        assert runner.backend.device == ("cuda:0" if torch.cuda.is_available() else "cpu")
        np.testing.assert_allclose(runner.predict.run(x), expected, rtol=1e-5, atol=1e-5)
        # pt2 carries a tensor signature: a warm-up batch shaped by it ran while loading
        assert runner.backend.instance.warmed_up is (fmt == "pt2")
    finally:
        runner.destroy()
    half = model.to_runner(device="cpu", precision="bfloat16")
    half.init_local()
    try:
        np.testing.assert_allclose(half.predict.run(x), expected, rtol=0.1, atol=0.1)
    finally:
        half.destroy()


def test_a_native_pytorch_import_serves_forward_and_every_declared_method(
    tmp_path: Path,
) -> None:
    net = WithEmbed().eval()
    x = np.random.default_rng(1).normal(size=(3, 4)).astype("float32")
    uri = _logged(net, "pickle", x, tmp_path)
    with pytest.raises(InvalidArgument, match="'decode'"):
        tiffin.mlflow.import_model("embedder", uri, flavor="pytorch",
                                   signatures={"predict": {}, "decode": {}})
    model = tiffin.mlflow.import_model(
        "embedder", uri, flavor="pytorch",
        signatures={"predict": {"batchable": True}, "forward": {}, "embed": {}},
    )  # fmt: skip
    with torch.no_grad():
        expected = {"predict": net(torch.from_numpy(x)).numpy(),
                    "forward": net(torch.from_numpy(x)).numpy(),
                    "embed": net.embed(torch.from_numpy(x)).numpy()}  # fmt: skip

    async def over_http() -> None:
        buffer = io.BytesIO()
        np.save(buffer, x)
        async with asgi_client(build_app(build_service(model))) as client:
            for method, values in expected.items():
                answer = await client.post(
                    f"/{method}", content=buffer.getvalue(),
                    headers={"content-type": "application/octet-stream",
                             "accept": "application/octet-stream"},
                )  # fmt: skip
                assert answer.status_code == 200, (method, answer.text)
                got = np.load(io.BytesIO(answer.content))
                np.testing.assert_allclose(got, values, rtol=1e-5, atol=1e-6)

    asyncio.run(over_http())


def test_pyfunc_keeps_mlflow_semantics_with_the_device_honoured(tmp_path: Path) -> None:
    import pandas as pd

    net = _tiny_mlp().eval()
    x = np.random.default_rng(0).normal(size=(4, 4)).astype("float32")
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    for fmt in ("pt2", "pickle"):
        model = tiffin.mlflow.import_model(f"mlp_{fmt}", _logged(net, fmt, x, tmp_path))
        assert model.info.options["native_flavor"] is None
        runner = model.to_runner(device="cpu")
        assert "nvidia.com/gpu" in runner.runnable_class.SUPPORTED_RESOURCES
        runner.init_local()
        try:
            pyfunc = runner.backend.instance.model
            assert isinstance(pyfunc, mlflow.pyfunc.PyFuncModel)
            assert pyfunc._model_impl.device == "cpu"  # MLflow's own wrapper, told the device
            # pyfunc semantics, MLflow's wrapper deciding: without a signature (pickle) a
            # DataFrame in is a DataFrame out; pt2's tensor signature makes it an array first
            answer = runner.predict.run(pd.DataFrame(x))
            kind = np.ndarray if fmt == "pt2" else pd.DataFrame
            assert isinstance(answer, kind), (fmt, type(answer))
            np.testing.assert_allclose(np.asarray(answer), expected, rtol=1e-5, atol=1e-5)
        finally:
            runner.destroy()
        missing = model.to_runner(device="cuda:63")
        with pytest.raises(DeviceUnavailable, match="cuda:63"):
            missing.init_local()
