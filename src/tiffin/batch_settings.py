"""How one runner method is called: :class:`BatchSettings`, and the one check of each field.

A method is *batchable* or not; a batchable method's calls are merged along ``batch_dim``
(an int, or an ``(input_dim, output_dim)`` pair when the result is batched along another
dimension than the inputs) into batches of at most ``max_batch_size`` rows, and a call may
wait at most ``max_latency_ms`` in the queue before its batch starts (a load-shedding
deadline, not a wait window).

These are the settings BentoML calls a model's *signatures* (``model.yaml`` keeps that name
for ``{method: {batchable, batch_dim}}``). The model store, the runner, the dispatcher and the
server's settings file all check them here, so each rule and each default is written once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tiffin.exceptions import InvalidArgument

__all__ = [
    "DEFAULT_MAX_BATCH_SIZE",
    "DEFAULT_MAX_LATENCY_MS",
    "BatchDim",
    "BatchSettings",
    "check_batch_dim",
    "check_max_batch_size",
    "check_max_latency_ms",
    "input_dim",
    "output_dim",
]

DEFAULT_MAX_BATCH_SIZE = 1024
DEFAULT_MAX_LATENCY_MS = 5000.0

#: the dimension calls are merged along, or (input_dim, output_dim)
BatchDim = int | tuple[int, int]


def check_batch_dim(value: Any) -> BatchDim:
    """``value`` as an int or an ``(input_dim, output_dim)`` tuple; anything else is an error."""
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, Sequence) and not isinstance(value, str):
        dims = tuple(value)
        if len(dims) == 2 and all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            return (int(dims[0]), int(dims[1]))
    raise InvalidArgument(
        f"batch_dim must be an int or an (input_dim, output_dim) pair, not {value!r}"
    )


def input_dim(batch_dim: BatchDim) -> int:
    return batch_dim[0] if isinstance(batch_dim, tuple) else batch_dim


def output_dim(batch_dim: BatchDim) -> int:
    return batch_dim[1] if isinstance(batch_dim, tuple) else batch_dim


def check_max_batch_size(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgument(f"max_batch_size must be a positive integer (rows), not {value!r}")
    return int(value)


def check_max_latency_ms(value: Any) -> float:
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise InvalidArgument(f"max_latency_ms must be a positive number, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class BatchSettings:
    """How one runnable method is called (see the module docstring)."""

    batchable: bool = False
    batch_dim: BatchDim = 0
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_latency_ms: float = DEFAULT_MAX_LATENCY_MS

    def __post_init__(self) -> None:
        if not isinstance(self.batchable, bool):
            raise InvalidArgument(f"batchable must be true or false, not {self.batchable!r}")
        object.__setattr__(self, "batch_dim", check_batch_dim(self.batch_dim))
        object.__setattr__(self, "max_batch_size", check_max_batch_size(self.max_batch_size))
        object.__setattr__(self, "max_latency_ms", check_max_latency_ms(self.max_latency_ms))

    @property
    def input_dim(self) -> int:
        return input_dim(self.batch_dim)

    @property
    def output_dim(self) -> int:
        return output_dim(self.batch_dim)

    def with_overrides(self, **overrides: Any) -> BatchSettings:
        """A copy with the given fields replaced; ``None`` values leave a field as it is."""
        unknown = set(overrides) - set(self.__dataclass_fields__)
        if unknown:
            raise InvalidArgument(
                f"unknown method option(s) {sorted(unknown)}; known: "
                f"{sorted(self.__dataclass_fields__)}"
            )
        values = {k: v for k, v in overrides.items() if v is not None}
        if not values:
            return self
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return BatchSettings(**{**fields, **values})
