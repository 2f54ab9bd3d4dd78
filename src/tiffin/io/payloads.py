"""Model inputs from files and JSON, and model outputs as JSON: what ``tiffin models predict``
and ``tiffin serve-model`` share.

JSON forms accepted: an array of rows (numbers, nested arrays -> ndarray; objects ->
DataFrame), an object of columns (-> DataFrame), or one of MLflow's envelopes
(``dataframe_split``, ``dataframe_records``, ``instances``, ``inputs``).

What a payload declares is measured (:mod:`tiffin.io.limits`) before it is built: the whole
value, and each envelope's payload (:func:`check_envelope`, which ``/invocations`` uses too).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from tiffin.exceptions import InvalidArgument, NotFound, missing_dependency
from tiffin.io.limits import check_array, check_json_table, current, nested_shape

__all__ = [
    "ENVELOPES",
    "SUFFIXES",
    "check_envelope",
    "from_json",
    "read_file",
    "to_csv",
    "to_jsonable",
]

SUFFIXES = (".json", ".csv", ".npy", ".parquet")
ENVELOPES = ("dataframe_split", "dataframe_records", "instances", "inputs")


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as exc:
        raise missing_dependency("pandas", "sklearn") from exc
    return pandas


def _ndarray(value: Any) -> Any:
    import numpy as np

    try:
        array = np.asarray(value)
    except ValueError as exc:
        raise InvalidArgument(f"input rows are ragged or mixed: {exc}") from exc
    if array.dtype == object:
        raise InvalidArgument(
            "input rows are ragged (rows of different lengths) or mix types; "
            "send rows of equal length, or objects keyed by column"
        )
    return array


def check_envelope(key: str, body: Any) -> None:
    """Refuse (DecodedTooLarge) the payload of MLflow's envelope ``key`` if it declares more
    than the decode limits allow: the table it makes, and, for an object of named inputs,
    each input's nested lists."""
    what = f"the {key} input"
    check_json_table(body, what)
    if isinstance(body, dict) and key != "dataframe_split":
        limit = current().max_decoded_cells
        for name, value in body.items():
            # (a flat list is its length: only a long one needs the check's words)
            if isinstance(value, list) and (
                len(value) > limit or (value and isinstance(value[0], list))
            ):
                check_array(nested_shape(value), f"{what} {name!r}")


def from_json(value: Any) -> Any:
    """A model payload from parsed JSON (pandas is imported only for a table)."""
    check_json_table(value, "the input")
    if isinstance(value, dict):
        keys = [k for k in ENVELOPES if k in value]
        if len(keys) > 1:
            raise InvalidArgument(f"input names more than one of {list(ENVELOPES)}: {keys}")
        if keys:
            key = keys[0]
            body = value[key]
            if key == "dataframe_split" or isinstance(body, dict):
                check_envelope(key, body)  # the others are measured when from_json recurses
            if key == "dataframe_split":
                if not isinstance(body, dict) or "data" not in body:
                    raise InvalidArgument("dataframe_split must be {columns, data, index?}")
                return _pandas().DataFrame(
                    **{k: body[k] for k in ("columns", "data", "index") if k in body}
                )
            if key == "dataframe_records":
                return from_json(list(body) if isinstance(body, list) else body)
            if isinstance(body, dict):
                return {k: _ndarray(v) for k, v in body.items()}
            return from_json(body)
        if not value:
            raise InvalidArgument("input object has no columns")
        if all(isinstance(v, dict) for v in value.values()):  # pandas' "columns" orient
            return _pandas().DataFrame(value)
        lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
        if -1 in lengths or len(lengths) != 1:
            raise InvalidArgument(
                "an object of columns must map each column name to a list (all of equal "
                "length) or to an object of row labels to values"
            )
        return _pandas().DataFrame(value)
    if isinstance(value, list):
        if not value:
            raise InvalidArgument("input is an empty list; send at least one row")
        if all(isinstance(row, dict) for row in value):
            return _pandas().DataFrame.from_records(value)
        if any(isinstance(row, dict) for row in value):
            raise InvalidArgument("input rows mix objects and arrays")
        return _ndarray(value)
    raise InvalidArgument(
        f"input must be a JSON array of rows or an object of columns, got {type(value).__name__}"
    )


def read_file(path: str | Path) -> Any:
    """Read a .json, .csv, .npy or .parquet file into a model payload."""
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"input file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            import orjson

            return from_json(orjson.loads(path.read_bytes()))
        if suffix == ".csv":
            import pandas as pd

            return pd.read_csv(path)
        if suffix == ".npy":
            import numpy as np

            return np.load(path, allow_pickle=False)
        if suffix == ".parquet":
            import pandas as pd

            return pd.read_parquet(path)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{path}: {exc}") from exc
    except Exception as exc:  # a parser's own error: say which file and why
        raise InvalidArgument(f"cannot read {path} as {suffix[1:]}: {exc}") from exc
    raise InvalidArgument(f"unsupported input file type {suffix!r}; use one of {list(SUFFIXES)}")


def to_jsonable(result: Any) -> Any:
    """Model output as plain JSON values (DataFrame -> records, Series/ndarray -> lists)."""
    module = type(result).__module__.split(".", 1)[0]
    if module == "pandas":
        if hasattr(result, "to_dict") and hasattr(result, "columns"):
            return result.to_dict(orient="records")
        return result.tolist()
    if module in ("numpy", "torch"):
        return result.tolist()
    if isinstance(result, tuple | list):
        return [to_jsonable(item) for item in result]
    if isinstance(result, dict):
        return {str(k): to_jsonable(v) for k, v in result.items()}
    return result


def to_csv(result: Any) -> str:
    import pandas as pd

    frame = result if isinstance(result, pd.DataFrame) else pd.DataFrame(to_jsonable(result))
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()
