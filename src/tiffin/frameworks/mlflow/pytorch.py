"""MLflow PyTorch models (``mlflow.pytorch.log_model``, pickle and pt2 formats) on a device.

* Native (``flavor="native"`` or ``"pytorch"``): ``mlflow.pytorch.load_model`` loads the
  module (MLflow's own checks, on the CPU); a runner moves it to its device
  (:mod:`~tiffin.frameworks.pytorch_runnable`). A pt2 model's weights cannot be moved by
  ``.to()`` (MLflow refuses other devices for it), so for a GPU its ``ExportedProgram`` is read
  again and moved with torch's ``move_to_device_pass``.
* pyfunc (``flavor=None``): MLflow's own ``predict`` with the runner's device as MLflow's
  ``model_config={"device": ...}``; a pt2 model is loaded on the CPU and its module handed
  to MLflow's wrapper moved as above (MLflow would refuse the device).
* Warm-up example: zeros of one row shaped as the MLflow signature's tensor (``-1`` lengths
  as 1), or one row of its numeric columns as float32.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import LoadFailed
from tiffin.frameworks.mlflow.loading import MLFLOW_MODEL_FOLDER, load_flavor
from tiffin.store import uris

if TYPE_CHECKING:
    from tiffin.store.models import Model

__all__ = [
    "TORCH_FLAVOR",
    "exported_file",
    "is_torch_model",
    "load_native_torch",
    "load_pyfunc_torch",
    "signature_example",
]

TORCH_FLAVOR = "pytorch"
_EXPORTED = "model.pt2"
_NUMERIC_COLUMNS = {"double", "float", "integer", "long", "boolean"}


def is_torch_model(model: Model) -> bool:
    """Whether the imported MLflow model has the ``pytorch`` flavor."""
    return TORCH_FLAVOR in ((model.info.context.get("mlflow") or {}).get("flavors") or [])


def _model_dir(model: Model) -> Path:
    return Path(model.path_of(MLFLOW_MODEL_FOLDER))


def exported_file(model_dir: Path) -> Path | None:
    """The ``.pt2`` file of a model logged in MLflow's pt2 format, or None (pickle format)."""
    from mlflow.models import Model as MLflowModel

    conf = MLflowModel.load(str(model_dir / uris.MLMODEL)).flavors.get(TORCH_FLAVOR) or {}
    path = model_dir / str(conf.get("model_data", "data")) / _EXPORTED
    return path if path.is_file() else None


def _exported_on(path: Path, device: str, what: str) -> Any:
    import torch
    from torch.export.passes import move_to_device_pass

    try:
        return move_to_device_pass(torch.export.load(str(path)), device).module()
    except Exception as exc:
        raise LoadFailed(
            f"cannot move MLflow model {what} (pt2 format) to {device}: "
            f"{type(exc).__name__}: {uris.one_line(str(exc))}"
        ) from exc


def load_native_torch(model: Model, device: str) -> Any:
    """The module of an MLflow PyTorch model, ready to go to ``device``."""
    from tiffin.frameworks.mlflow.loading import load_native

    module = load_native(model)  # MLflow's loader and checks, on the CPU
    exported = exported_file(_model_dir(model)) if device != "cpu" else None
    if exported is not None:
        module = _exported_on(exported, device, f"'{model.tag}'")
    return module


def load_pyfunc_torch(model: Model, device: str) -> Any:
    """The model as MLflow's pyfunc, predicting on ``device``."""
    from tiffin.frameworks.mlflow.requirements import warn_version_mismatch

    warn_version_mismatch(model)
    model_dir = _model_dir(model)
    what = f"'{model.tag}'"
    exported = exported_file(model_dir) if device != "cpu" else None
    pyfunc = load_flavor(
        None, model_dir, what, model_config={"device": "cpu" if exported else device}
    )
    if exported is not None:
        wrapper: Any = getattr(pyfunc, "_model_impl", None)
        if not (hasattr(wrapper, "pytorch_model") and hasattr(wrapper, "device")):
            raise LoadFailed(
                f"cannot run MLflow model {what} (pt2 format) as python_function on {device}: "
                "this MLflow's PyTorch wrapper is not the one tiffin knows; import it with "
                "flavor='native', or run it on the CPU"
            )
        wrapper.pytorch_model = _exported_on(exported, device, what)
        wrapper.device = device
    return pyfunc


def signature_example(model: Model) -> tuple[Any, ...] | None:
    """One row of zeros shaped as the model's MLflow signature says, or None."""
    import numpy as np

    signature = (model.info.context.get("mlflow") or {}).get("signature") or {}
    inputs = [item for item in signature.get("inputs") or [] if isinstance(item, dict)]
    if len(inputs) == 1 and inputs[0].get("type") == "tensor":
        spec = inputs[0].get("tensor-spec") or {}
        shape = spec.get("shape")
        if not isinstance(shape, list) or not shape:
            return None
        try:
            dtype = np.dtype(str(spec.get("dtype")))
        except TypeError:
            return None
        if dtype.kind not in "biuf":
            return None
        dims = [1 if not isinstance(d, int) or d < 1 else d for d in shape]
        return (np.zeros(dims, dtype=dtype),)
    if inputs and all(item.get("type") in _NUMERIC_COLUMNS for item in inputs):
        return (np.zeros((1, len(inputs)), dtype=np.float32),)
    return None
