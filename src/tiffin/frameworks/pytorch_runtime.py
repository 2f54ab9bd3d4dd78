"""Calling a PyTorch module on a device: what every PyTorch runner does around the model.

:class:`TorchRuntime` is shared by ``tiffin.pytorch`` and the native PyTorch flavor of
``tiffin.mlflow``. Its rules:

* The module goes to the runner's device once, is cast to ``precision`` when one is set
  (``float16``/``bfloat16``: weights and floating inputs; opt-in), and is put in eval mode.
* Every call runs under ``torch.inference_mode()``.
* Inputs (ndarrays, nested lists, DataFrames, tensors, and tuples/dicts of them) go to the
  device; floating ones take the model's floating dtype (a float64 JSON batch reaches a
  float32 model as float32), integer ones stay integers (token ids, class indices). A batch
  arrives stacked once (the dispatcher merged the callers' rows); on a GPU it is copied once
  more, into a pinned host buffer that is reused from batch to batch, and from there to the
  device without blocking (:class:`HostStaging`).
* Outputs come back to the host: tensors as ndarrays (``float16``/``bfloat16`` as
  ``float32``, which numpy can hold), or as CPU tensors when the caller passed tensors.
* Out of GPU memory: a batchable method's batch is split in halves along its batch dimension
  and each half is run again (split further as needed), the allocator's cache emptied first;
  one row, or a call of a method that is not batchable, that still does not fit is
  :class:`~tiffin.exceptions.OutOfDeviceMemory`, and the runner keeps serving.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from tiffin.batch_settings import BatchDim, input_dim, output_dim
from tiffin.exceptions import InvalidArgument, OutOfDeviceMemory, missing_dependency
from tiffin.runner import containers

__all__ = ["HostStaging", "TorchRuntime", "import_torch", "torch_dtype"]

logger = logging.getLogger("tiffin.pytorch")


def import_torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise missing_dependency("torch", "pytorch") from exc
    return torch


def torch_dtype(precision: str | None) -> Any:
    """The torch dtype of a precision setting (None: None)."""
    if precision is None:
        return None
    return getattr(import_torch(), precision)


#: what CUDA libraries say when an allocation of their own fails (a RuntimeError, not torch's
#: OutOfMemoryError): the same condition, split the same way
_OOM_TEXTS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")


def _is_out_of_memory(torch: Any, exc: BaseException) -> bool:
    errors = tuple(
        error for error in (getattr(torch, "OutOfMemoryError", None),
                            getattr(torch.cuda, "OutOfMemoryError", None))
        if isinstance(error, type)
    )
    if isinstance(exc, errors):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _OOM_TEXTS)


class HostStaging:
    """Host-to-device copies of ndarray inputs through reused (pinned, on a GPU) buffers.

    ``begin()`` starts a call: it waits for the previous call's copies to leave the buffers
    (so reusing them is safe) and numbers this call's inputs from 0; ``put(array, dtype)``
    copies the array into its slot's buffer (cast on the way when ``dtype`` differs) and
    returns it on the device. On the CPU without ``buffered``, an array becomes a tensor
    sharing its memory (no copy at all).
    """

    def __init__(self, torch: Any, device: Any, *, pin: bool, buffered: bool) -> None:
        self.torch = torch
        self.device = device
        self.pin = pin
        self.buffered = buffered
        self.buffers: dict[tuple[int, Any], Any] = {}
        self._slot = 0
        self._copied: Any = None  # the event recorded after the last copies, on a GPU

    def begin(self) -> None:
        if self._copied is not None:
            self._copied.synchronize()
            self._copied = None
        self._slot = 0

    def put(self, array: Any, dtype: Any = None) -> Any:
        torch = self.torch
        if not self.buffered:
            if not (array.flags.writeable and array.flags.c_contiguous):
                array = array.copy()  # torch.from_numpy needs writable, contiguous memory
            tensor = torch.from_numpy(array)
            return tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
        # stage in the wanted dtype when numpy has it (the cast rides on the one copy)
        import numpy as np

        host_dtype = dtype if dtype in (torch.float16, torch.float32, torch.float64) else None
        if host_dtype is None:
            host_dtype = torch.from_numpy(np.empty(0, dtype=array.dtype)).dtype
        key = (self._slot, host_dtype)
        self._slot += 1
        size = int(array.size)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < size:
            capacity = 1 << max(size - 1, 0).bit_length()  # the next power of two
            buffer = torch.empty(capacity, dtype=host_dtype, pin_memory=self.pin)
            self.buffers[key] = buffer
        view = buffer[:size].view(array.shape)
        np.copyto(view.numpy(), array, casting="same_kind")
        moved = view.to(self.device, non_blocking=self.pin)
        if self.pin:  # on the stream of the device the copy went to (not the current one)
            self._copied = torch.cuda.Event()
            self._copied.record(torch.cuda.current_stream(self.device))
        return moved if dtype is None or moved.dtype == dtype else moved.to(dtype)


class TorchRuntime:
    """One runner's device, precision and host copies; see the module docstring."""

    def __init__(self, device: str = "cpu", precision: str | None = None) -> None:
        torch = import_torch()
        self.torch = torch
        self.device = torch.device(device)
        self.precision = torch_dtype(precision)
        #: the floating dtype floating inputs are cast to (the model's, once prepared)
        self.float_dtype: Any = self.precision
        on_gpu = self.device.type == "cuda"
        self.staging = HostStaging(torch, self.device, pin=on_gpu, buffered=on_gpu)
        #: batches split because the device ran out of memory
        self.oom_splits = 0

    def prepare(self, module: Any) -> Any:
        """``module`` on the device, in the precision, in eval mode."""
        torch = self.torch
        if isinstance(module, torch.nn.Module):
            module = module.to(self.device)
            if self.precision is not None:
                module = module.to(self.precision)
            with contextlib.suppress(NotImplementedError):  # torch.export's: eval already
                module.eval()
            if self.float_dtype is None:
                floating = (
                    t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()
                )
                self.float_dtype = next((t.dtype for t in floating), None)
        return module

    # -- inputs and outputs ---------------------------------------------------------------

    def to_device(self, value: Any) -> Any:
        torch = self.torch
        if isinstance(value, torch.Tensor):
            moved = value.to(self.device)
            if moved.is_floating_point() and self.float_dtype is not None:
                moved = moved.to(self.float_dtype)
            return moved
        if isinstance(value, tuple):
            return tuple(self.to_device(item) for item in value)
        if isinstance(value, dict):
            return {key: self.to_device(item) for key, item in value.items()}
        module = type(value).__module__.split(".", 1)[0]
        if module == "pandas" and hasattr(value, "to_numpy"):
            value = value.to_numpy()
        elif isinstance(value, list):
            import numpy as np

            value = np.asarray(value)
        elif module != "numpy" or not hasattr(value, "dtype"):
            return value  # a plain option (a number, a string, None)
        if value.dtype.kind not in "biufc":
            raise InvalidArgument(
                f"a PyTorch model takes numbers, but got an array of dtype {value.dtype} "
                "(strings or mixed values)"
            )
        dtype = self.float_dtype if value.dtype.kind == "f" else None
        return self.staging.put(value, dtype)

    def to_host(self, value: Any, as_tensor: bool) -> Any:
        torch = self.torch
        if isinstance(value, torch.Tensor):
            value = value.detach()
            if value.dtype in (torch.float16, torch.bfloat16):
                value = value.float()
            value = value.cpu()
            return value if as_tensor else value.numpy()
        if isinstance(value, tuple | list):
            return type(value)(self.to_host(item, as_tensor) for item in value)
        if isinstance(value, dict):
            return {key: self.to_host(item, as_tensor) for key, item in value.items()}
        return value

    # -- calls -----------------------------------------------------------------------------

    def call(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``fn`` once on the device, under inference mode, the result on the host."""
        torch = self.torch
        as_tensor = any(isinstance(arg, torch.Tensor) for arg in args)
        # the calling thread's current GPU is the runner's (cuDNN/cuBLAS handles, streams)
        on_device = torch.cuda.device(self.device) if self.device.type == "cuda" else (
            contextlib.nullcontext())
        with on_device, torch.inference_mode():
            self.staging.begin()
            moved = tuple(self.to_device(arg) for arg in args)
            options = {key: self.to_device(value) for key, value in kwargs.items()}
            return self.to_host(fn(*moved, **options), as_tensor)

    def run(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        batch_dim: BatchDim | None,
        what: str = "the model",
    ) -> Any:
        """:meth:`call`, splitting a batch that runs out of device memory (``batch_dim``
        None: not a batch, never split)."""
        try:
            return self.call(fn, args, kwargs)
        except RuntimeError as exc:
            if not _is_out_of_memory(self.torch, exc):
                raise
            # leave the except block first: the traceback holds the failed run's tensors
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else "out of memory"
        self.free_cache()
        rows = containers.count_rows(args[0], input_dim(batch_dim)) if (
            batch_dim is not None and args) else 1
        if rows < 2:
            raise OutOfDeviceMemory(
                f"{what} ran out of memory on {self.device} with "
                f"{'one row' if batch_dim is not None else 'a call it cannot split'}: {reason}"
            )
        assert batch_dim is not None
        self.oom_splits += 1
        half = rows // 2
        logger.warning("%s: out of memory on %s with %d rows; running halves", what,
                       self.device, rows)
        dim = input_dim(batch_dim)
        pieces = [containers.split(arg, [half, rows - half], dim) for arg in args]
        results = [
            self.run(fn, tuple(piece[part] for piece in pieces), kwargs, batch_dim, what)
            for part in (0, 1)
        ]
        return containers.concat(results, output_dim(batch_dim))

    def free_cache(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.empty_cache()

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)
