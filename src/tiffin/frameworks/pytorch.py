"""``tiffin.pytorch``: PyTorch modules, saved natively and run on a device.

Format: ``options.format`` in ``model.yaml`` is ``state_dict`` (default: a state dict plus a
cloudpickled architecture, loaded with ``weights_only=True`` for the weights), or, opt-in,
``torchscript`` or ``export`` (``torch.export``); :mod:`~tiffin.frameworks.pytorch_formats`
describes the files. Each file's SHA-256 is in ``model.yaml`` and checked before loading;
the torch version that saved the model is in ``context.framework_versions``.
``example_inputs`` (required by ``export``) are saved too: a runner's warm-up batch.

Signatures: default ``{"forward": {"batchable": False}}``; ``"all"`` declares ``forward`` and
every public method the module's own classes define (not ``torch.nn.Module``'s). ``forward``,
and ``predict`` on a module without one, call the module itself. ``external_modules``: Python
modules whose code is pickled by value with the architecture (code the serving machine does
not have installed). A runner's ``device`` defaults to ``auto`` (a GPU when one is visible);
``load_model`` defaults to the CPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tiffin.device_settings import CPU, check_device, check_precision
from tiffin.exceptions import InvalidArgument
from tiffin.frameworks.pytorch_formats import (
    FORMATS,
    as_example,
    read_example,
    read_module,
    write_example,
    write_module,
)
from tiffin.frameworks.pytorch_runnable import (
    FORWARD_METHODS,
    check_torch_methods,
    public_methods,
    torch_runnable,
)
from tiffin.frameworks.pytorch_runtime import TorchRuntime, import_torch
from tiffin.store.models import create, get_saved_with, validate_signatures

if TYPE_CHECKING:
    from tiffin.runner.runnable import Runnable
    from tiffin.store.models import Model
    from tiffin.store.versioned import Store
    from tiffin.tag import Tag

__all__ = ["FORMATS", "MODULE", "get", "get_runnable", "load_model", "save_model"]

MODULE = "tiffin.pytorch"


def _signatures(
    signatures: Mapping[str, Mapping[str, Any]] | str | None, module: Any, torch: Any
) -> dict[str, dict[str, Any]]:
    if signatures == "all":
        base = torch.jit.ScriptModule if isinstance(module, torch.jit.ScriptModule) else (
            torch.nn.Module)
        return validate_signatures({name: {} for name in public_methods(module, base)})
    if isinstance(signatures, str):
        raise InvalidArgument(
            f"signatures must be a mapping of method name to options, or 'all'; got {signatures!r}"
        )
    return validate_signatures(signatures, default={"forward": {"batchable": False}})


def save_model(
    name: str,
    module: Any,
    *,
    signatures: Mapping[str, Mapping[str, Any]] | str | None = None,
    labels: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    custom_objects: Mapping[str, Any] | None = None,
    external_modules: Sequence[ModuleType] | None = None,
    format: str = "state_dict",
    example_inputs: Any = None,
    store: Store | None = None,
) -> Model:
    """Save a ``torch.nn.Module`` (or a ScriptModule) in ``format``; see the module docstring."""
    torch = import_torch()
    if not isinstance(module, torch.nn.Module):
        raise InvalidArgument(
            f"{type(module).__name__} is not a torch.nn.Module; "
            "use tiffin.picklable_model.save_model for other objects"
        )
    if format not in FORMATS:
        raise InvalidArgument(f"format must be one of {', '.join(FORMATS)}, not {format!r}")
    by_value = list(external_modules or [])
    if not all(isinstance(item, ModuleType) for item in by_value):
        raise InvalidArgument("external_modules must be a list of imported Python modules")
    sigs = _signatures(signatures, module, torch)
    others = sorted(set(sigs) - set(FORWARD_METHODS))
    if format == "export" and others:
        raise InvalidArgument(f"format='export' keeps forward only; signatures name {others}")
    example = as_example(example_inputs) if example_inputs is not None else None
    with create(
        name,
        module=MODULE,
        signatures=sigs,
        labels=labels,
        metadata=metadata,
        custom_objects=custom_objects,
        store=store,
    ) as draft:
        loadable, options = write_module(
            module, draft.path, format, example=example, by_value=by_value
        )
        check_torch_methods(loadable, sigs, f"{type(module).__name__} as {format}")
        draft.options.update({"format": format, **options})
        if example is not None:
            draft.options.update(write_example(example, draft.path))
        draft.context["framework_versions"]["torch"] = str(torch.__version__)
    assert draft.model is not None
    return draft.model


def get(tag: Tag | str, *, store: Store | None = None) -> Model:
    return get_saved_with(tag, MODULE, store)


def load_model(
    tag_or_model: Tag | str | Model,
    *,
    device: str = CPU,
    precision: str | None = None,
    store: Store | None = None,
) -> Any:
    """The module, on ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``), in eval mode;
    cast to ``precision`` (``float16``/``bfloat16``) when given."""
    from tiffin.runner.devices import resolve_device

    model = get_saved_with(tag_or_model, MODULE, store)
    resolved = resolve_device(check_device(device), what=f"model '{model.tag}'")
    runtime = TorchRuntime(resolved, check_precision(precision))
    return runtime.prepare(read_module(model, resolved))


def get_runnable(model: Model) -> type[Runnable]:
    """The Runnable behind ``model.to_runner()``: one runner method per declared signature,
    on the runner's device (see :mod:`~tiffin.frameworks.pytorch_runnable`)."""
    return torch_runnable(
        model,
        lambda device: read_module(model, device),
        "pytorch",
        example=lambda: read_example(model),
    )
