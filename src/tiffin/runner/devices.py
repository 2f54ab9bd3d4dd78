"""Devices at run time: a runner's device setting resolved against the GPUs this process sees.

* :func:`resolve_device`: ``auto`` -> ``cuda:0`` when torch sees a GPU, else ``cpu``;
  ``cuda`` / ``cuda:N`` -> itself when that GPU exists, else
  :class:`~tiffin.exceptions.DeviceUnavailable` with one line saying what is visible. A
  runnable that runs only on the CPU may be asked for ``cpu`` or ``auto`` only.
* :func:`check_available`: the same check without loading anything, for start-up (a server
  refuses to start instead of failing at its first request).
* :func:`count_gpus`: the GPUs visible here (``CUDA_VISIBLE_DEVICES`` first; torch only when
  the variable is unset).
* :func:`device_memory`: GPU memory allocated and reserved by this process, per GPU, named as
  the machine names it (``CUDA_VISIBLE_DEVICES`` entries); empty until CUDA is in use.

torch is imported only when a device other than ``cpu`` is asked about (and it is installed:
without torch, ``auto`` is the CPU and ``cuda`` is unavailable).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tiffin.device_settings import AUTO, CPU, CUDA_VISIBLE_DEVICES, device_index, visible_gpus
from tiffin.exceptions import DeviceUnavailable

__all__ = ["check_available", "count_gpus", "device_memory", "resolve_device"]


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        return None
    return torch


def _cuda_count(torch: Any) -> int:
    if torch is None or not torch.cuda.is_available():
        return 0
    return int(torch.cuda.device_count())


def count_gpus() -> int:
    """GPUs this process may use: ``CUDA_VISIBLE_DEVICES``' entries when it is set (torch is
    not imported then), else what torch counts (0 without torch)."""
    listed = visible_gpus(os.environ)
    if listed is not None:
        return len(listed)
    return _cuda_count(_torch())


def _visible_text() -> str:
    listed = os.environ.get(CUDA_VISIBLE_DEVICES)
    if listed is None:
        return "CUDA_VISIBLE_DEVICES unset"
    return f"CUDA_VISIBLE_DEVICES={listed!r}"


def resolve_device(device: str, *, supports_gpu: bool = True, what: str = "the model") -> str:
    """The concrete device (``cpu`` or ``cuda:N``) for the setting ``device``."""
    if device == CPU:
        return CPU
    if not supports_gpu:
        if device == AUTO:
            return CPU
        raise DeviceUnavailable(
            f"{what} runs on the CPU only (its runnable's SUPPORTED_RESOURCES have no "
            f"'nvidia.com/gpu'), but device {device!r} was asked for"
        )
    torch = _torch()
    count = _cuda_count(torch)
    if device == AUTO:
        return "cuda:0" if count else CPU
    index = device_index(device) or 0
    if torch is None:
        raise DeviceUnavailable(
            f"device {device!r} asked for {what}, but torch is not installed; install a CUDA "
            "build of torch, or use device='cpu'"
        )
    if index >= count:
        seen = f"{count} GPU(s)" if count else "no GPU"
        raise DeviceUnavailable(
            f"device {device!r} asked for {what}, but torch sees {seen} ({_visible_text()}, "
            f"torch {torch.__version__}); use device='auto' or 'cpu', or a machine with a GPU"
        )
    return f"cuda:{index}"


def check_available(device: str, *, supports_gpu: bool, what: str) -> None:
    """Refuse, before anything loads, a device this process cannot have (``auto`` and ``cpu``
    always can); imports torch only for an explicit ``cuda`` device."""
    if device in (AUTO, CPU):
        return
    resolve_device(device, supports_gpu=supports_gpu, what=what)


def device_memory() -> dict[str, dict[str, int]]:
    """``{gpu: {"allocated": bytes, "reserved": bytes}}`` of this process; ``gpu`` is the
    machine's name for it (its ``CUDA_VISIBLE_DEVICES`` entry, else its index). Empty when
    torch is not loaded or has not used CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return {}
    names = visible_gpus(os.environ) or []
    memory: dict[str, dict[str, int]] = {}
    for index in range(torch.cuda.device_count()):
        name = names[index] if index < len(names) else str(index)
        memory[name] = {
            "allocated": int(torch.cuda.memory_allocated(index)),
            "reserved": int(torch.cuda.memory_reserved(index)),
        }
    return memory
