"""The baseline of ``bench/serve.py --matrix``: a bare Starlette app that decodes each request
format with its direct decoder and calls the model's own ``predict`` inline.

``python bench/_bare_matrix.py MODEL_DIR PORT``: ``POST /f/FORMAT`` for each format that
tests/mlflow_kinds.py's ``bodies`` writes (``dataframe_split``, ``dataframe_records``,
``instances``, ``inputs``, ``csv``, ``parquet``, ``predict_json``, ``predict_npy``); ``GET
/ping`` answers 200 once the model is loaded. The decoders are the plain ones a hand-written
server would use -- orjson, then numpy (``np.asarray`` to the signature's tensor dtype) or
pandas (``pd.DataFrame``, its numeric columns cast to the signature's types); ``pd.read_csv``;
``pd.read_parquet`` (pyarrow); ``np.load`` -- and the model is the MLflow flavor's own
wrapper (``PyFuncModel._model_impl.predict``), so MLflow's schema enforcement is not run: no
validation at all, the fastest correct path. uvicorn with its fast defaults (uvloop,
httptools), no access log.
"""

from __future__ import annotations

import io
import sys
from typing import Any

import mlflow.pyfunc
import numpy as np
import orjson
import pandas as pd
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

pyfunc = mlflow.pyfunc.load_model(sys.argv[1])
impl = pyfunc._model_impl  # the flavor's model: no schema enforcement
schema = pyfunc.metadata.get_input_schema()
TENSOR_DTYPE = None
COLUMN_TYPES: dict[str, Any] = {}
if schema is not None and schema.is_tensor_spec():
    TENSOR_DTYPE = schema.numpy_types()[0]
elif schema is not None:
    numeric = {"integer": "int32", "long": "int64", "float": "float32", "double": "float64",
               "boolean": "bool"}  # fmt: skip
    for spec in schema.inputs:
        dtype = numeric.get(str(spec.type))
        if dtype is not None:
            COLUMN_TYPES[spec.name] = dtype


def as_input(value: Any) -> Any:
    """Rows (lists), records, a dict of columns, an ndarray or a DataFrame, as the model's
    declared input: an ndarray of the tensor dtype, or a DataFrame with typed columns."""
    if TENSOR_DTYPE is not None:
        if isinstance(value, pd.DataFrame):
            return value.to_numpy(dtype=TENSOR_DTYPE)
        return np.asarray(value, dtype=TENSOR_DTYPE)
    frame = value if isinstance(value, pd.DataFrame) else pd.DataFrame(value)
    return frame.astype(COLUMN_TYPES) if COLUMN_TYPES else frame


def decode(fmt: str, body: bytes) -> Any:
    if fmt == "csv":
        return as_input(pd.read_csv(io.BytesIO(body)))
    if fmt == "parquet":
        return as_input(pd.read_parquet(io.BytesIO(body)))
    if fmt == "predict_npy":
        return as_input(np.load(io.BytesIO(body), allow_pickle=False))
    value = orjson.loads(body)
    if fmt == "dataframe_split":
        split = value["dataframe_split"]
        if TENSOR_DTYPE is not None:
            return np.asarray(split["data"], dtype=TENSOR_DTYPE)
        return as_input(pd.DataFrame(split["data"], columns=split["columns"]))
    if fmt == "dataframe_records":
        return as_input(pd.DataFrame(value[fmt]))
    if fmt in ("instances", "inputs"):
        return as_input(value[fmt])
    return as_input(value)  # predict_json: rows, or an object of columns


def encode(predictions: Any) -> bytes:
    if isinstance(predictions, pd.DataFrame):
        predictions = predictions.to_dict(orient="records")
    elif isinstance(predictions, pd.Series):
        predictions = predictions.to_numpy()
    elif hasattr(predictions, "detach"):
        predictions = predictions.detach().numpy()
    return orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY)


async def endpoint(request: Request) -> Response:
    data = decode(request.path_params["fmt"], await request.body())
    predictions = impl.predict(data)  # on the event loop: no thread hop, no batching
    return Response(encode(predictions), media_type="application/json")


async def ping(request: Request) -> Response:
    return Response(b"\n", media_type="application/json")


app = Starlette(
    routes=[Route("/f/{fmt}", endpoint, methods=["POST"]), Route("/ping", ping, methods=["GET"])]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=False,
                log_level="warning")
