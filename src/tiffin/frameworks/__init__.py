"""tiffin's registry of framework modules, and what they share.

``model.yaml`` records ``module: tiffin.<framework>``; it is resolved through the fixed table
below, never imported as an arbitrary string, so a hand-edited store cannot make tiffin import
code of its choosing.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import InvalidArgument, TiffinError

if TYPE_CHECKING:
    from tiffin.models import Model
    from tiffin.runner import Runnable
    from tiffin.store import Store
    from tiffin.tag import Tag

REGISTRY: dict[str, str] = {
    "mlflow": "tiffin.frameworks.mlflow",
    "sklearn": "tiffin.frameworks.sklearn",
    "picklable_model": "tiffin.frameworks.picklable_model",
}


def load(module: str) -> ModuleType:
    """The framework module for ``tiffin.<framework>`` (or a bare framework name)."""
    name = module.removeprefix("tiffin.")
    try:
        target = REGISTRY[name]
    except KeyError:
        raise TiffinError(
            f"unknown framework module {module!r}; tiffin knows "
            + ", ".join(f"tiffin.{n}" for n in sorted(REGISTRY))
        ) from None
    return importlib.import_module(target)


def get_model(tag_or_model: Tag | str | Model, module: str, store: Store | None = None) -> Model:
    """Resolve to a stored Model and check it was saved by ``module``."""
    from tiffin import models

    model = tag_or_model if isinstance(tag_or_model, models.Model) else models.get(
        tag_or_model, store=store
    )
    if model.info.module != module:
        raise InvalidArgument(
            f"model '{model.tag}' was saved with {model.info.module}, not {module}; "
            f"load it with {model.info.module}.load_model"
        )
    return model


def check_methods(obj: Any, signatures: Mapping[str, Any], what: str) -> None:
    """Every declared signature must name a callable the object has."""
    for method in signatures:
        if not callable(getattr(obj, method, None)):
            raise InvalidArgument(
                f"signature names method {method!r}, but the {what} ({type(obj).__name__}) "
                "has no such method"
            )


def model_runnable(model: Model, load: Callable[[Model], Any], framework: str) -> type[Runnable]:
    """A Runnable class whose methods are the model's signatures, called on the loaded object."""
    from tiffin.runner import Runnable

    def __init__(self: Any) -> None:
        self.model = load(model)
        check_methods(self.model, model.info.signatures, f"loaded {framework} model")

    runnable: type[Runnable] = type(
        f"{framework.title().replace('_', '')}Runnable",
        (Runnable,),
        {"__init__": __init__, "SUPPORTS_CPU_MULTI_THREADING": True},
    )
    for method, signature in model.info.signatures.items():
        runnable.add_method(
            method,
            _forward(method),
            batchable=signature["batchable"],
            batch_dim=signature["batch_dim"],
        )
    return runnable


def _forward(method: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.model, method)(*args, **kwargs)

    call.__name__ = method
    return call
