"""A JSON description of a descriptor, and the descriptor rebuilt from it.

The server puts ``describe(descriptor)`` in its OpenAPI document (``x-tiffin-io``); a client
rebuilds the same descriptor with :func:`rebuild` and so encodes requests and decodes
responses exactly as the server expects (dtype, orient, multipart parts, ...). A subclass is
described as the nearest of its classes that ``tiffin.io`` exports; anything else is rebuilt
as ``JSON``.
"""

from __future__ import annotations

import inspect
from typing import Any

import tiffin.io as tio
from tiffin.exceptions import InvalidArgument
from tiffin.io.base import IODescriptor

__all__ = [
    "describe",
    "rebuild",
]

_KNOWN = {name: getattr(tio, name) for name in tio.__all__ if name != "IODescriptor"}


def _plain(value: Any) -> Any:
    """A JSON value for a constructor argument, or ``...`` when it has none."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        items = [_plain(v) for v in value]
        return ... if ... in items else items
    if isinstance(value, dict):
        mapping = {str(k): _plain(v) for k, v in value.items()}
        return ... if ... in mapping.values() else mapping
    if type(value).__module__.startswith("numpy") and hasattr(value, "str"):  # a numpy dtype
        return str(value)
    return ...


def _known_class(descriptor: IODescriptor) -> type[IODescriptor]:
    """The descriptor's class, or the first of its bases a client can rebuild (a server-side
    subclass of :class:`~tiffin.io.rows.Rows` is described as ``Rows``)."""
    for klass in type(descriptor).__mro__:
        if _KNOWN.get(klass.__name__) is klass:
            return klass
    return type(descriptor)


def describe(descriptor: IODescriptor) -> dict[str, Any]:
    klass = _known_class(descriptor)
    kind = klass.__name__
    if kind == "Multipart":
        parts = getattr(descriptor, "descriptors", {})
        return {"type": kind, "parts": {name: describe(d) for name, d in parts.items()}}
    args: dict[str, Any] = {}
    for name, param in inspect.signature(klass.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        value = _plain(getattr(descriptor, name, param.default))
        if value is not ... and value != param.default:
            args[name] = value
    return {"type": kind, "args": args}


def rebuild(description: dict[str, Any]) -> IODescriptor:
    """The descriptor a description names; unknown or custom ones fall back to JSON."""
    kind = description.get("type")
    if kind == "Multipart":
        parts = description.get("parts") or {}
        return tio.Multipart(**{name: rebuild(part) for name, part in parts.items()})
    cls = _KNOWN.get(str(kind))
    if cls is None:
        return tio.JSON()
    try:
        return cls(**(description.get("args") or {}))
    except (InvalidArgument, TypeError):
        return cls()
