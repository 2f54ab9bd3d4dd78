"""``/invocations`` answers of plain arrays: the JSON MLflow's scoring server writes for them."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
from mlflow.pyfunc import scoring_server

from tiffin.serving.mlflow_protocol import _SMALL, _predictions_json

RNG = np.random.default_rng(7)
ARRAYS = {
    "float32 row": RNG.random((1, 1)).astype(np.float32),
    "float32 transposed": RNG.random((4, 3)).astype(np.float32).T,
    "float32 extremes": np.array([[1e-45, 3.4e38, -0.0]], dtype=np.float32),
    "float16": RNG.random(3).astype(np.float16),
    "float64": RNG.random((2, 4)),
    "int64": RNG.integers(-5, 5, 4),
    "uint64 high": np.array([2**64 - 1, 0], dtype=np.uint64),
    "bool": np.array([True, False]),
    "0-d": np.array(np.float32(1.5)),
    "NaN": np.array([np.nan, 1.0], dtype=np.float32),
    "Infinity": np.array([[1.0], [-np.inf]]),
    "0-d NaN": np.array(np.nan),
    "large": RNG.random((_SMALL + 1, 2)).astype(np.float32),
    "large with NaN": np.append(RNG.random(_SMALL), np.nan),
}


def _mlflow(raw: Any) -> bytes:
    out = io.StringIO()
    scoring_server.predictions_to_json(raw, out)
    return out.getvalue().encode()


@pytest.mark.parametrize("name", list(ARRAYS))
def test_array_predictions_are_written_as_mlflow_writes_them(name: str) -> None:
    raw = ARRAYS[name]
    ours, theirs = _predictions_json(raw, scoring_server), _mlflow(raw)
    if b"NaN" in theirs or b"Infinity" in theirs:  # not JSON: MLflow's own text, as it is
        assert ours == theirs
    else:
        assert json.loads(ours) == json.loads(theirs)
        assert type(json.loads(ours)["predictions"]) is type(json.loads(theirs)["predictions"])
