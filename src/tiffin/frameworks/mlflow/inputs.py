"""An imported MLflow model's inputs as its signature declares them, without MLflow's parser.

:class:`InputSchema` is built from the signature ``model.yaml`` records
(``context.mlflow.signature.inputs``, MLflow's JSON form of the input schema; MLflow is not
imported) and turns each request form into what MLflow's ``pyfunc`` ``predict`` receives
after MLflow's own parsing and schema enforcement, so that enforcement finds nothing to do:

* one unnamed tensor: nested lists (``inputs``, ``instances``, JSON rows), an ndarray
  (``.npy``, a runner call), ``dataframe_split``/``dataframe_records`` or a DataFrame of
  scalar columns -> an ndarray of the spec's dtype (float16/32/64, int8-64, uint8, bool) whose
  shape matches the spec (-1 is free);
* named tensors: an object of arrays (``inputs``, ``instances``), rows of objects
  (``instances``), a dict of arrays, or one input's array for a single named tensor -> a dict
  of such ndarrays, the signature's names only;
* named columns: ``dataframe_split``, ``dataframe_records``, records or an object of columns
  (``inputs``, ``instances``, a runner's dict), an object of scalars (one row), rows as lists in
  the signature's column order, a DataFrame (CSV, Parquet, a runner call), a 2-D ndarray (its
  columns in signature order) -> a DataFrame of the signature's columns in its order (optional
  ones only when sent; the others dropped, as MLflow drops them), index kept, each column of its
  declared type: integer int32, long int64, float float32, double float64, boolean bool,
  string pandas' string column (``str``; object where every value is null or the frame gave
  object), datetime ``datetime64[ns]``;
* no signature (:func:`unsigned`, :func:`unsigned_envelope`): an object of equal-length lists
  and records -> a DataFrame, nested lists -> an ndarray (``np.array``, as MLflow).

Values are cast exactly (:mod:`~tiffin.frameworks.mlflow.casting`): what the declared type
cannot hold is an ``InvalidArgument`` (400) naming the column or position and the value; an
input of another shape or form, or missing a required column, is a ``SignatureMismatch`` (400;
MLflow's protocol names it ``INVALID_PARAMETER_VALUE``, as MLflow's schema enforcement does).
Where MLflow answers otherwise, on purpose:

* it truncates or wraps what the type cannot hold (3.5 -> 3 and 2**40 -> 0 for an integer,
  2**63 -> -2**63 for a long, 1e40 -> inf for float32; 2, 1.5, "no" and null -> True/False for
  a boolean); tiffin refuses each;
* it parses numeric strings ("1.5" for a float); it passes a number through a string column,
  and null through a required one (as the string "None" from ``inputs``/``instances``); it
  reads numbers as nanoseconds and null as NaT in a datetime column; tiffin refuses each (null
  is fine in optional columns, and NaN in float ones);
* a null in an optional string column stays null (MLflow's ``inputs``/``instances`` make it
  "None"); an empty CSV cell is null, so it is refused in a required string column;
* datetime strings are read by pandas for every form (MLflow uses numpy's ISO parser for an
  ``inputs`` object);
* it refuses what tiffin converts exactly: rows as lists for a column signature, a 2-D ndarray
  for several columns, a DataFrame or ndarray whose dtypes differ from the signature's (int64
  for integer, float64 for a float32 tensor or column, int64 for double, strings for datetime),
  CSV for a tensor signature or with a datetime column.

:data:`FALLBACK` is returned where MLflow's parser must read the input: any input for a
signature :attr:`InputSchema.needs_mlflow` marks (Array, Object, Map, AnyType or binary columns,
unnamed columns, tensors of strings or objects, signatures from type hints, anything
unreadable), named tensors sent as a table, an object mixing scalars and lists, and what is
not a list, dict, ndarray or DataFrame (a runner passes those through unchanged). Bodies
carrying ``params`` or an LLM key are sent to MLflow by the serving layer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tiffin.exceptions import InvalidArgument, SignatureMismatch
from tiffin.frameworks.mlflow import casting
from tiffin.frameworks.mlflow.loading import MLFLOW_MODEL_FOLDER
from tiffin.frameworks.mlflow.tables import (
    FALLBACK,
    Columns,
    records_to_rows,
    split_parts,
    unsigned,
    unsigned_envelope,
)

if TYPE_CHECKING:
    from tiffin.store.models import Model

__all__ = [
    "COLUMN_DTYPES",
    "ENVELOPES",
    "FALLBACK",
    "InputSchema",
    "Spec",
    "unsigned",
    "unsigned_envelope",
]

ENVELOPES = ("dataframe_split", "dataframe_records", "instances", "inputs")
#: MLflow's column types tiffin converts, and their numpy dtypes (None: not numeric)
COLUMN_DTYPES: dict[str, str | None] = {
    "integer": "int32",
    "long": "int64",
    "float": "float32",
    "double": "float64",
    "boolean": "bool",
    "string": None,
    "datetime": None,
}


class Spec:
    """One input of a signature: a tensor (``dtype``, ``shape``) or a named column."""

    __slots__ = ("dtype", "label", "name", "required", "shape", "type")

    def __init__(self, entry: dict[str, Any]) -> None:
        import numpy as np

        self.name: str | None = entry.get("name")
        self.type: str = str(entry.get("type"))
        self.required: bool = bool(entry.get("required", True))
        self.shape: tuple[int, ...] | None = None
        if self.type == "tensor":
            tensor = entry["tensor-spec"]
            self.dtype: Any = np.dtype(tensor["dtype"])
            self.shape = tuple(int(n) for n in tensor["shape"])
            self.label = str(self.dtype)
        else:
            numeric = COLUMN_DTYPES.get(self.type)
            self.dtype = np.dtype(numeric) if numeric else None
            self.label = f"{self.type} ({numeric})" if numeric else self.type

    def unsupported(self) -> str | None:
        """Why tiffin leaves this input to MLflow, or None."""
        if self.type == "tensor":
            return None if self.dtype.kind in "biuf" else f"a tensor of dtype {self.dtype}"
        if self.type not in COLUMN_DTYPES:
            return f"a column of type {self.type!r}"
        return None if isinstance(self.name, str) else "unnamed columns"


def _hinted(model: Model) -> bool:
    """Whether MLflow took the model's signature from type hints (it then parses nothing)."""
    import yaml

    path = Path(model.path_of(MLFLOW_MODEL_FOLDER)) / "MLmodel"
    try:
        meta = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, yaml.YAMLError):
        return True  # unreadable: let MLflow decide
    return not isinstance(meta, dict) or bool(
        meta.get("is_signature_from_type_hint") or meta.get("type_hint_from_example")
    )


class InputSchema:
    """A signature's inputs, and the conversion of every request form to them.

    ``kind`` is ``"tensor"`` (one unnamed tensor), ``"tensors"`` (named tensors) or
    ``"columns"``; ``reason`` says why MLflow must parse the inputs (None: tiffin does).
    """

    def __init__(
        self, specs: list[Spec], reason: str | None = None, columnar: bool = False
    ) -> None:
        self.specs = specs
        self.names = [s.name for s in specs if s.name is not None]
        self.reason = reason or next(filter(None, (s.unsupported() for s in specs)), None)
        tensors = [s.type == "tensor" for s in specs]
        self.kind = "columns" if not all(tensors) else "tensors" if self.names else "tensor"
        if any(tensors) and not all(tensors):
            self.reason = self.reason or "tensors mixed with columns"
        elif len(specs) != 1 if self.kind == "tensor" else len(self.names) != len(specs):
            self.reason = self.reason or "tensors without names"
        ok = self.kind == "columns" and not self.reason
        self.columns = Columns(specs, columnar) if ok else None

    @classmethod
    def from_signature(
        cls, inputs: Any, *, type_hints: bool = False, columnar: bool = False
    ) -> InputSchema | None:
        """From MLflow's JSON input schema (a list, or its JSON text); None when empty.
        ``columnar``: columns come as dicts of arrays where no index is given
        (:meth:`~tiffin.frameworks.mlflow.tables.Columns.build`; serving asks for it)."""
        try:
            if isinstance(inputs, str):
                inputs = json.loads(inputs)
            if not inputs:
                return None
            specs = [Spec(entry) for entry in inputs]
        except (KeyError, TypeError, ValueError, AttributeError):
            return cls([], "an unreadable signature")
        return cls(specs, "a signature from type hints" if type_hints else None, columnar)

    @classmethod
    def from_model(cls, model: Model, *, columnar: bool = False) -> InputSchema | None:
        """The model's recorded input signature (``model.yaml``); None when it has none."""
        signature = (model.info.context.get("mlflow") or {}).get("signature") or {}
        inputs = signature.get("inputs")
        hinted = bool(inputs) and _hinted(model)
        return cls.from_signature(inputs, type_hints=hinted, columnar=columnar)

    @property
    def needs_mlflow(self) -> bool:
        """True when MLflow's parser must read every input (see ``reason``)."""
        return self.reason is not None

    @property
    def name_set(self) -> frozenset[str]:
        return self.columns.name_set if self.columns is not None else frozenset(self.names)

    @property
    def string_columns(self) -> list[str]:
        return [s.name for s in self.specs if s.type == "string" and s.name]

    def __repr__(self) -> str:
        return f"InputSchema({self.kind}, {len(self.specs)} inputs, reason={self.reason!r})"

    # -- the forms --------------------------------------------------------------------------

    def convert(self, data: Any) -> Any:
        """A runner's argument (list, dict, ndarray, DataFrame) as the model's input."""
        module = type(data).__module__.split(".", 1)[0]
        if module == "pandas" and hasattr(data, "columns"):
            return self.from_frame(data)
        if module == "numpy" and hasattr(data, "ndim"):
            return self.from_array(data)
        if isinstance(data, list | dict):
            return self.from_inputs(data)
        return FALLBACK

    def from_body(self, value: Any) -> Any:
        """A JSON body of rows, records, an object of columns, or one of MLflow's envelopes."""
        if isinstance(value, dict):
            keys = [key for key in ENVELOPES if key in value]
            if len(keys) > 1:
                raise InvalidArgument(f"input names more than one of {list(ENVELOPES)}: {keys}")
            if keys:
                return self.from_envelope(keys[0], value[keys[0]])
        return self.from_inputs(value)

    def from_envelope(self, key: str, payload: Any) -> Any:
        """The payload of MLflow's envelope ``key`` (``dataframe_split`` ... ``inputs``)."""
        if key == "dataframe_split":
            return self.from_split(payload)
        if key == "dataframe_records":
            if not isinstance(payload, list):
                raise InvalidArgument("dataframe_records must be a list of records")
            return self.from_records(payload)
        return self.from_inputs(payload, instances=key == "instances")

    def from_split(self, split: Any) -> Any:
        """``{"columns", "data", "index"}`` (pandas' split orient)."""
        if self.needs_mlflow or self.kind == "tensors":
            return FALLBACK  # named tensors as a table: MLflow reshapes its cells
        data, columns, index = split_parts(split)
        if data and not isinstance(data[0], list | dict):
            data = [[v] for v in data]  # one value per row
        width = len(columns) if columns is not None else len(data[0]) if data else 0
        if self.columns is None:
            return self.from_table(data, width)
        names = columns if columns is not None else list(range(width))
        return self.columns.from_rows(data, names, index)

    def from_records(self, records: list[Any]) -> Any:
        """A list of objects, one per row."""
        if self.needs_mlflow or self.kind == "tensors":
            return FALLBACK
        if not records:
            raise SignatureMismatch("the input holds no records")
        if self.columns is None:
            rows, here = records_to_rows(records, None)
            return self.from_table(rows, len(here))
        rows, here = records_to_rows(records, self.columns.names)
        return self.columns.from_rows(rows, here)

    def from_inputs(self, payload: Any, *, instances: bool = False) -> Any:
        """``inputs``/``instances``, a bare JSON body, or a runner's list, dict or array."""
        if self.needs_mlflow:
            return FALLBACK
        records = bool(isinstance(payload, list) and payload and isinstance(payload[0], dict))
        if self.kind == "tensor":
            if isinstance(payload, dict) or records:
                raise SignatureMismatch(
                    "this model takes one unnamed tensor: send nested lists, not objects"
                )
            return self._tensor(self.specs[0], payload, "input")
        if self.kind == "tensors":
            return self._tensors(payload, records and instances)
        assert self.columns is not None
        if records:
            return self.from_records(payload)
        if isinstance(payload, dict):
            converted = self.columns.from_dict(payload)
            return FALLBACK if converted is None else converted
        if type(payload).__module__ == "numpy":
            return self.from_array(payload)
        if isinstance(payload, list) and payload:
            if all(isinstance(row, list | tuple) for row in payload):
                return self.columns.from_rows(payload, self.columns.names)  # signature order
            if len(self.specs) == 1:
                return self.columns.from_dict({self.names[0]: payload})
        if isinstance(payload, list):
            raise SignatureMismatch("the input is an empty list; send at least one row")
        raise SignatureMismatch(
            f"this model takes columns {self.names}: send records, an "
            "object of columns, or rows as lists in that order"
        )

    def from_frame(self, frame: Any) -> Any:
        """A DataFrame (CSV, Parquet, a runner call)."""
        if self.needs_mlflow or self.kind == "tensors":
            return FALLBACK
        if self.columns is None:
            return self.from_table(frame.to_numpy(), frame.shape[1])
        return self.columns.from_frame(frame)

    def from_array(self, array: Any) -> Any:
        """An ndarray (``.npy``, a runner call); for columns, its columns in signature order."""
        if self.needs_mlflow:
            return FALLBACK
        if self.kind == "tensor":
            return self._tensor(self.specs[0], array, "input")
        if self.kind == "tensors":
            return self._tensors(array, False)
        assert self.columns is not None
        if array.ndim == 1 and len(self.specs) == 1:
            return self.columns.from_dict({self.names[0]: array})
        if array.ndim != 2 or array.shape[1] != len(self.specs):
            raise SignatureMismatch(
                f"an array of shape {list(array.shape)} is not rows of the "
                f"model's {len(self.specs)} columns {self.names}"
            )
        return self.columns.from_dict({n: array[:, j] for j, n in enumerate(self.names)})

    # -- tensors ----------------------------------------------------------------------------

    def _tensor(self, spec: Spec, value: Any, what: str) -> Any:
        array = casting.to_array(value, spec.dtype, casting.at(what))
        shape = spec.shape or ()
        if array.ndim != len(shape) or any(
            s not in (-1, n) for s, n in zip(shape, array.shape, strict=True)
        ):
            raise SignatureMismatch(
                f"{what} has shape {list(array.shape)}; the model takes "
                f"{list(shape)} (-1: any length)"
            )
        return array

    def _tensors(self, payload: Any, rows: bool) -> Any:
        """Named tensors: an object of arrays, rows of objects, or one input's array."""
        if rows:
            table, _ = records_to_rows(payload, self.names, all_required=True)
            payload = {name: [row[i] for row in table] for i, name in enumerate(self.names)}
        elif len(self.specs) == 1 and not isinstance(payload, dict):
            payload = {self.names[0]: payload}
        if not isinstance(payload, dict):
            raise SignatureMismatch(
                f"this model takes named inputs {self.names}: send an object of arrays"
            )
        missing = [name for name in self.names if name not in payload]
        if missing:
            raise SignatureMismatch(f"the input is missing the model's inputs {missing}")
        return {s.name: self._tensor(s, payload[s.name], f"input {s.name!r}") for s in self.specs}

    def from_table(self, rows: Any, width: int) -> Any:
        """A table's cells (rows of scalars, or a 2-D array) as the one unnamed tensor, as
        MLflow reads a DataFrame."""
        import numpy as np

        spec = self.specs[0]
        try:
            table = np.asarray(rows)
        except ValueError as exc:
            raise InvalidArgument(f"the table's rows have unequal lengths ({exc})") from exc
        if table.ndim > 2:
            return FALLBACK  # cells holding lists: MLflow reshapes them
        if table.ndim != 2 or table.shape[1] != width:
            raise InvalidArgument(f"the table is not rows of {width} values")
        array = casting.exact(table, spec.dtype, casting.at("input"), source=lambda: rows)
        if width == 1 and spec.shape in ((-1,), (-1, 1)):
            return array.reshape(spec.shape)
        if spec.shape != (-1, width):
            raise SignatureMismatch(
                f"a table of {width} columns cannot be the model's input of "
                f"shape {list(spec.shape or ())}"
            )
        return array
