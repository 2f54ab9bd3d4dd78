"""tiffin.mlflow with PyTorch models logged by mlflow.pytorch, in both of MLflow 3's formats."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

import tiffin

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
