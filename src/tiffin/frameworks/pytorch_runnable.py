"""The Runnable of a PyTorch model, for ``tiffin.pytorch`` and ``tiffin.mlflow``'s native
PyTorch flavor.

* ``SUPPORTED_RESOURCES = ("nvidia.com/gpu", "cpu")``: the runner's device defaults to
  ``auto`` (a GPU when one is visible); ``__init__`` takes the resolved ``device`` and the
  ``precision`` (:class:`~tiffin.frameworks.pytorch_runtime.TorchRuntime` does the rest).
* Methods are the model's signatures. ``forward``, and ``predict`` on a module that has no
  ``predict`` of its own (the MLflow guide declares ``predict``), call the module itself,
  hooks included; any other name is the module's method of that name.
* Warm-up: when an example input is known (saved with the model, or built from an MLflow
  tensor signature), the first forward-like method runs on it once while the runner loads,
  so CUDA's start-up costs (context, kernels, autotuning) are paid before ``/readyz`` turns
  200. A warm-up that fails is logged, not fatal (an example built from a signature is a
  guess); a model that cannot load is.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from tiffin.device_settings import CPU, GPU_RESOURCE
from tiffin.exceptions import InvalidArgument
from tiffin.frameworks.pytorch_runtime import TorchRuntime
from tiffin.runner.runnable import Runnable

if TYPE_CHECKING:
    from tiffin.store.models import Model

__all__ = [
    "FORWARD_METHODS",
    "bound_method",
    "check_torch_methods",
    "public_methods",
    "torch_runnable",
]

logger = logging.getLogger("tiffin.pytorch")

#: names that call the module itself (``predict`` only where the module has none)
FORWARD_METHODS = ("forward", "predict")

#: loads the model onto a device ("cpu", "cuda:0")
Loader = Callable[[str], Any]
#: the example input to warm up with, or None
Example = Callable[[], "tuple[Any, ...] | None"]


def bound_method(module: Any, name: str) -> Callable[..., Any]:
    """What calling method ``name`` of ``module`` runs (see the module docstring)."""
    if name == "forward" or (name == "predict" and not callable(getattr(module, name, None))):
        if not callable(module):
            raise InvalidArgument(f"the model ({type(module).__name__}) is not callable")
        return module
    method = getattr(module, name, None)
    if not callable(method):
        raise InvalidArgument(
            f"signature names method {name!r}, but the model ({type(module).__name__}) has no "
            "such method"
        )
    return method


def check_torch_methods(module: Any, names: Iterable[str], what: str) -> None:
    for name in names:
        try:
            bound_method(module, name)
        except InvalidArgument as exc:
            raise InvalidArgument(f"{what}: {exc}") from None


def public_methods(obj: Any, base: type) -> list[str]:
    """``forward`` and every public method ``obj``'s own classes define (not ``base``'s)."""
    inherited = set(dir(base))
    names = {"forward"} if callable(getattr(obj, "forward", None)) else set()
    for klass in type(obj).__mro__:
        if klass is base or issubclass(base, klass):
            continue
        for name, value in vars(klass).items():
            if not name.startswith("_") and name not in inherited and callable(value):
                names.add(name)
    return sorted(names)


def _warm_up_method(signatures: Mapping[str, Any]) -> str | None:
    for name in FORWARD_METHODS:
        if name in signatures:
            return name
    return None


def torch_runnable(
    model: Model, load: Loader, framework: str, example: Example | None = None
) -> type[Runnable]:
    """A Runnable class running ``model`` (loaded by ``load(device)``) on a device."""
    signatures = dict(model.info.signatures)
    what = f"model '{model.tag}'"

    def __init__(self: Any, device: str = CPU, precision: str | None = None) -> None:
        self.runtime = TorchRuntime(device, precision)
        self.model = self.runtime.prepare(load(device))
        check_torch_methods(self.model, signatures, f"loaded {framework} model")
        self.methods_bound = {name: bound_method(self.model, name) for name in signatures}
        self.warmed_up = False
        _warm_up(self, example, signatures, what)

    runnable: type[Runnable] = type(
        f"{framework.title().replace('_', '')}Runnable",
        (Runnable,),
        {
            "__init__": __init__,
            "SUPPORTED_RESOURCES": (GPU_RESOURCE, CPU),
            "SUPPORTS_CPU_MULTI_THREADING": True,
        },
    )
    for method, signature in signatures.items():
        batch_dim = signature["batch_dim"] if signature["batchable"] else None
        runnable.add_method(
            method,
            _call(method, batch_dim, what),
            batchable=signature["batchable"],
            batch_dim=signature["batch_dim"],
        )
    return runnable


def _call(method: str, batch_dim: Any, what: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self.runtime.run(self.methods_bound[method], args, kwargs, batch_dim, what)

    call.__name__ = method
    return call


def _warm_up(instance: Any, example: Example | None, signatures: Mapping[str, Any],
             what: str) -> None:
    method = _warm_up_method(signatures)
    inputs = example() if example is not None and method is not None else None
    if inputs is None or method is None:
        logger.debug("%s: no example input, so no warm-up batch", what)
        return
    runtime: TorchRuntime = instance.runtime
    try:
        runtime.call(instance.methods_bound[method], tuple(inputs), {})
        runtime.synchronize()
    except Exception as exc:
        logger.warning("%s: the warm-up batch failed (%s: %s); serving without it", what,
                       type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
        return
    instance.warmed_up = True
    logger.info("%s: warm-up batch ran on %s", what, runtime.device)
