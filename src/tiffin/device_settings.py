"""Where a runner runs: its ``device`` and ``precision`` settings, and the one check of each.

``device`` is ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (N a GPU index, counted among
the GPUs this process sees). ``"auto"`` means a GPU when one is visible, else the CPU; it is
the default of runners whose runnable declares ``"nvidia.com/gpu"`` among its
``SUPPORTED_RESOURCES`` (PyTorch runners), every other runner runs on ``"cpu"``.

``precision`` is ``None`` (the model's own dtype), ``"float32"``, ``"float16"`` or
``"bfloat16"``: the floating dtype a PyTorch model's weights and floating inputs are cast to
(opt-in; meant for GPU inference, accepted on the CPU where torch supports the dtype).

``CUDA_VISIBLE_DEVICES`` for runner processes: with ``n`` visible GPUs, runner process ``i``
of a runner that may use a GPU sees only GPU ``i mod n`` (:func:`gpu_for_process`); a runner
pinned to ``cuda:N`` sees only GPU ``N``. Everything here is plain Python: the settings file,
the runner and the supervisor check and plan with it without importing torch.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from tiffin.exceptions import InvalidArgument

__all__ = [
    "AUTO",
    "CPU",
    "CUDA_VISIBLE_DEVICES",
    "GPU_RESOURCE",
    "PRECISIONS",
    "check_device",
    "check_precision",
    "device_index",
    "gpu_for_process",
    "visible_gpus",
]

AUTO = "auto"
CPU = "cpu"
GPU_RESOURCE = "nvidia.com/gpu"
CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"
PRECISIONS = ("float32", "float16", "bfloat16")
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:(0|[1-9][0-9]{0,3}))$")


def check_device(value: Any) -> str:
    """``value`` as a device setting, or InvalidArgument naming the accepted forms."""
    if isinstance(value, str) and _DEVICE_RE.match(value.strip().lower()):
        return value.strip().lower()
    raise InvalidArgument(
        f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' (N a GPU index), not {value!r}"
    )


def check_precision(value: Any) -> str | None:
    """``value`` as a precision setting (None: the model's own dtype)."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() in PRECISIONS:
        return value.strip().lower()
    raise InvalidArgument(
        f"precision must be one of {', '.join(PRECISIONS)} (or unset), not {value!r}"
    )


def device_index(device: str) -> int | None:
    """The N of ``cuda:N``; None for any other device."""
    return int(device.split(":", 1)[1]) if device.startswith("cuda:") else None


def visible_gpus(environ: Mapping[str, str], count: int | None = None) -> list[str] | None:
    """The GPUs a process may use, as ``CUDA_VISIBLE_DEVICES`` entries: the variable's list
    when it is set (``""`` or ``-1``: none), else ``0 .. count-1`` when ``count`` is known;
    None when neither says (ask torch)."""
    listed = environ.get(CUDA_VISIBLE_DEVICES)
    if listed is not None:
        entries = [item.strip() for item in listed.split(",")]
        visible: list[str] = []
        for entry in entries:
            # CUDA stops at the first invalid entry: "-1" hides every GPU after it
            if not entry or entry.startswith("-"):
                break
            visible.append(entry)
        return visible
    if count is None:
        return None
    return [str(index) for index in range(count)]


def gpu_for_process(device: str, index: int, visible: Sequence[str]) -> str | None:
    """``CUDA_VISIBLE_DEVICES`` for runner process ``index`` of a runner on ``device``, given
    the ``visible`` GPUs; None to leave the variable as it is (no GPU to share out, or a
    runner on the CPU).

    ``auto`` and ``cuda``: GPU ``index mod n``. ``cuda:N``: GPU N for every process (which
    then sees it as ``cuda:0``); an N past the visible GPUs is refused here, before any
    process starts.
    """
    if device == CPU or not visible:
        return None
    pinned = device_index(device)
    if pinned is None:
        return visible[index % len(visible)]
    if pinned >= len(visible):
        from tiffin.exceptions import DeviceUnavailable

        raise DeviceUnavailable(
            f"device {device!r} asked for, but this machine shows {len(visible)} GPU(s) "
            f"(CUDA_VISIBLE_DEVICES entries {list(visible)})"
        )
    return visible[pinned]
