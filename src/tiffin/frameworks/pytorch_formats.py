"""The files of a ``tiffin.pytorch`` model: three formats, each written and read back here.

* ``state_dict`` (default): ``architecture.pkl``, a cloudpickle (protocol 5) of the module
  with every tensor of its state dict left out -- the pickle names each one by its state-dict
  key instead (a *persistent id*) -- and ``weights.pt``, ``module.state_dict()`` as
  ``torch.save`` writes it. Reading: ``torch.load(weights_only=True)`` puts the weights
  straight on the device, then the architecture is unpickled with each named tensor taken
  from them (tied weights stay tied; tensors outside the state dict, such as non-persistent
  buffers, travel inside the pickle). torch's own loader refuses a whole pickled module
  since torch 2.6 made ``weights_only=True`` its default; this format never needs
  ``weights_only=False``, and the pickle is code tiffin runs only after its SHA-256 matched.
* ``torchscript``: ``model.pt``, ``torch.jit.save`` of the scripted module (or of the
  ScriptModule given), read with ``torch.jit.load`` onto the device.
* ``export``: ``model.pt2``, ``torch.export.save`` of ``torch.export.export(module,
  example_inputs)`` with dimension 0 of every input dynamic (any batch size; an example of
  one row is traced as two copies of it, which torch would otherwise fix at one), read with
  ``torch.export.load``, moved to the device with torch's ``move_to_device_pass``, and run as
  its ``.module()``.

Every file's SHA-256 is recorded in ``model.yaml`` and checked on the very bytes that are read
(:func:`~tiffin.store.models.read_verified`).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import CorruptEntry, InvalidArgument
from tiffin.frameworks.pytorch_runtime import import_torch
from tiffin.store.models import file_sha256, read_verified

if TYPE_CHECKING:
    from tiffin.store.models import Model

__all__ = [
    "ARCHITECTURE_FILE",
    "EXAMPLE_FILE",
    "FORMATS",
    "as_example",
    "read_example",
    "read_module",
    "write_example",
    "write_module",
]

FORMATS = ("state_dict", "torchscript", "export")
ARCHITECTURE_FILE = "architecture.pkl"
WEIGHTS_FILE = "weights.pt"
SCRIPT_FILE = "model.pt"
EXPORT_FILE = "model.pt2"
EXAMPLE_FILE = "example.pt"
_WEIGHT = "tiffin-weight"


def as_example(value: Any) -> tuple[Any, ...]:
    """Example inputs as a tuple of tensors (a tensor, an ndarray, or a sequence of them)."""
    torch = import_torch()
    items = value if isinstance(value, tuple | list) else (value,)
    out = []
    for item in items:
        if isinstance(item, torch.Tensor):
            out.append(item.detach().cpu())
        elif type(item).__module__ == "numpy" and hasattr(item, "dtype"):
            out.append(torch.from_numpy(item.copy()))
        else:
            raise InvalidArgument(
                "example_inputs must be tensors or ndarrays (or a tuple of them), got "
                f"{type(item).__name__}"
            )
    return tuple(out)


# -- state_dict ----------------------------------------------------------------------------


def _dump_architecture(module: Any, target: Path, by_value: Sequence[ModuleType]) -> None:
    import cloudpickle

    torch = import_torch()
    names: dict[int, str] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        if isinstance(tensor, torch.Tensor):
            names.setdefault(id(tensor), name)

    class Pickler(cloudpickle.CloudPickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, torch.Tensor):
                name = names.get(id(obj))
                if name is not None:
                    parameter = isinstance(obj, torch.nn.Parameter)
                    return (_WEIGHT, name, parameter, bool(obj.requires_grad))
            return None

    registered = []
    try:
        for module_ in by_value:
            cloudpickle.register_pickle_by_value(module_)
            registered.append(module_)
        with target.open("wb") as fh:
            Pickler(fh, protocol=5).dump(module)
    except (TypeError, AttributeError, pickle.PicklingError) as exc:
        raise InvalidArgument(f"cannot pickle {type(module).__name__}: {exc}") from exc
    finally:
        for module_ in registered:
            cloudpickle.unregister_pickle_by_value(module_)


def _load_architecture(data: bytes, weights: dict[str, Any], where: str) -> Any:
    torch = import_torch()
    made: dict[str, Any] = {}

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, pid: Any) -> Any:
            if not (isinstance(pid, tuple) and len(pid) == 4 and pid[0] == _WEIGHT):
                raise CorruptEntry(f"{where}: unknown persistent id {pid!r}")
            _, name, parameter, requires_grad = pid
            if name not in made:
                if name not in weights:
                    raise CorruptEntry(f"{where}: the weights have no tensor {name!r}")
                tensor = weights[name]
                made[name] = (
                    torch.nn.Parameter(tensor, requires_grad=requires_grad) if parameter
                    else tensor
                )
            return made[name]

    return Unpickler(io.BytesIO(data)).load()


# -- every format ----------------------------------------------------------------------------


def write_module(
    module: Any,
    directory: Path,
    fmt: str,
    *,
    example: tuple[Any, ...] | None,
    by_value: Sequence[ModuleType],
) -> tuple[Any, dict[str, Any]]:
    """Write ``module`` in format ``fmt``; the object that will be loaded (to check the
    declared methods on) and the ``options`` to record."""
    torch = import_torch()
    if fmt == "state_dict":
        _dump_architecture(module, directory / ARCHITECTURE_FILE, by_value)
        torch.save(module.state_dict(), directory / WEIGHTS_FILE)
        return module, {
            "file": ARCHITECTURE_FILE,
            "sha256": file_sha256(directory / ARCHITECTURE_FILE),
            "weights": WEIGHTS_FILE,
            "weights_sha256": file_sha256(directory / WEIGHTS_FILE),
        }
    if fmt == "torchscript":
        scripted = module
        if not isinstance(module, torch.jit.ScriptModule):
            try:
                scripted = torch.jit.script(module)
            except Exception as exc:
                raise InvalidArgument(
                    f"cannot script {type(module).__name__} for format='torchscript' "
                    f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                    "pass a module traced with torch.jit.trace, or use format='export'"
                ) from exc
        torch.jit.save(scripted, str(directory / SCRIPT_FILE))
        return scripted, {"file": SCRIPT_FILE, "sha256": file_sha256(directory / SCRIPT_FILE)}
    if example is None:
        raise InvalidArgument("format='export' needs example_inputs (what torch.export traces)")
    dims = tuple({0: torch.export.Dim.DYNAMIC} if t.dim() else None for t in example)
    # a batch of one would be traced as "always one row": trace two copies of it instead
    traced = tuple(torch.cat([t, t]) if t.dim() and t.shape[0] == 1 else t for t in example)
    try:
        exported = torch.export.export(module.eval(), traced, dynamic_shapes=dims)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise InvalidArgument(
            f"torch.export cannot export {type(module).__name__}: {type(exc).__name__}: {first}"
        ) from exc
    torch.export.save(exported, str(directory / EXPORT_FILE))
    return exported.module(), {
        "file": EXPORT_FILE, "sha256": file_sha256(directory / EXPORT_FILE),
    }


def _verified(model: Model, key: str) -> bytes:
    filename = model.info.options.get(key, "")
    if not isinstance(filename, str) or not filename or "/" in filename or filename[0] == ".":
        raise CorruptEntry(f"{model.path_of('model.yaml')}: options.{key} is missing or unsafe")
    path = Path(model.path_of(filename))
    if not path.is_file():
        raise CorruptEntry(f"model '{model.tag}' is missing its file {path}")
    sha_key = "sha256" if key == "file" else f"{key}_sha256"
    return read_verified(path, model.info.options.get(sha_key))


def read_module(model: Model, device: str) -> Any:
    """The stored module, its weights on ``device`` ("cpu", "cuda:0")."""
    torch = import_torch()
    fmt = model.info.options.get("format")
    where = f"model '{model.tag}'"
    if fmt == "state_dict":
        weights = torch.load(
            io.BytesIO(_verified(model, "weights")), map_location=device, weights_only=True
        )
        return _load_architecture(_verified(model, "file"), weights, where)
    if fmt == "torchscript":
        return torch.jit.load(io.BytesIO(_verified(model, "file")), map_location=device)
    if fmt == "export":
        exported = torch.export.load(io.BytesIO(_verified(model, "file")))
        if device != "cpu":
            from torch.export.passes import move_to_device_pass

            exported = move_to_device_pass(exported, device)
        return exported.module()
    raise CorruptEntry(f"{where}: unknown format {fmt!r} in model.yaml (known: {FORMATS})")


def write_example(example: tuple[Any, ...], directory: Path) -> dict[str, Any]:
    torch = import_torch()
    torch.save(example, directory / EXAMPLE_FILE)
    return {"example": EXAMPLE_FILE, "example_sha256": file_sha256(directory / EXAMPLE_FILE)}


def read_example(model: Model) -> tuple[Any, ...] | None:
    """The example inputs saved with the model (tensors only), or None."""
    if not model.info.options.get("example"):
        return None
    torch = import_torch()
    data = _verified(model, "example")
    return tuple(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))
