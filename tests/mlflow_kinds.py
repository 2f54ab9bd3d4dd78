"""The MLflow model kinds tiffin's parity tests and serving benchmark use (no pytest here).

Each kind is saved with ``mlflow.<flavor>.save_model(..., input_example=...)``, so MLflow
infers the signature as a user gets it (``no_signature`` saves its example with
``signature=False``):

========================  =============================================================
``float32_tensor``        scikit-learn on a float32 ndarray: tensor ``float32 (-1, 32)``
``float64_tensor``        scikit-learn on a float64 ndarray: tensor ``float64 (-1, 32)``
``int64_tensor``          scikit-learn on an int64 ndarray: tensor ``int64 (-1, 32)``
``named_columns``         scikit-learn on a DataFrame of 32 float64 columns (``double``)
``mixed_columns``         a pipeline on long, integer, double, float, string and boolean
                          columns (a one-hot encoded category among them)
``no_signature``          scikit-learn on a DataFrame of 32 columns, no signature
``pyfunc_params``         a ``mlflow.pyfunc.PythonModel`` whose scikit-learn model is an
                          artifact, with a ``ParamSchema`` (``scale``: its output is the
                          probability times it; ``output``: the shape it answers in)
``pytorch``               an MLP saved with ``mlflow.pytorch``: tensor ``float32 (-1, 32)``
========================  =============================================================

``cost`` sizes the model: ``"tiny"`` trains in milliseconds (tests); ``"lr"`` is a
LogisticRegression (one linear layer for ``pytorch``); ``"heavy"`` 330 depth-2
gradient-boosted trees on 32 features (an MLP of four 1792-wide layers for ``pytorch``). One-row
``predict`` through MLflow's pyfunc, measured on the 2-CPU dev host (one torch thread): ``lr``
~0.1-0.15 ms for the tensor kinds, ~0.6-2.3 ms for the DataFrame kinds (scikit-learn's checks
of a frame's columns, MLflow's schema enforcement) and ~3 ms for ``mixed_columns`` (its
ColumnTransformer); ``heavy`` ~1.9-2.1 ms for the tensor kinds and ``pytorch``, ~3-5.5 ms for
the DataFrame kinds, ~9 ms for ``mixed_columns``.

:func:`bodies` writes rows of a kind in every request format that applies to it, as
``(route, content_type, body)``: MLflow's four JSON envelopes, CSV and Parquet on
``/invocations``; on ``/predict`` JSON rows (columns for column kinds) and ``.npy`` for
tensor kinds. Every body holds valid input of the kind's declared types (float32 Parquet
columns for a float32 tensor, for instance).
"""

from __future__ import annotations

import io
import json
import pickle
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "COSTS",
    "FEATURES",
    "KINDS",
    "OUTPUTS",
    "TENSOR_KINDS",
    "Body",
    "KindInfo",
    "bodies",
    "save_kind",
]

KINDS: tuple[str, ...] = (
    "float32_tensor",
    "float64_tensor",
    "int64_tensor",
    "named_columns",
    "mixed_columns",
    "no_signature",
    "pyfunc_params",
    "pytorch",
)
#: the kinds whose signature is one unnamed tensor (they also take ``.npy`` on ``/predict``)
TENSOR_KINDS = frozenset({"float32_tensor", "float64_tensor", "int64_tensor", "pytorch"})
COSTS = ("tiny", "lr", "heavy")
FEATURES = 32
#: the shapes ``pyfunc_params`` answers in, by its ``output`` param ("array" by default)
OUTPUTS = ("array", "series", "frame", "dict", "list", "strings", "text")

#: ``(route, content_type, body)``
Body = tuple[str, str, bytes]

_POOL = 64  # rows kept for bodies(info, n)
_TREES = 330
#: what MLflow's skops format must be told to load: the trees of a fitted gradient boosting
#: model (made here, so trusted)
_TRUSTED = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


@dataclass(frozen=True)
class KindInfo:
    """A saved model of one kind, and inputs for it."""

    kind: str
    cost: str
    #: the MLflow model directory
    path: Path
    #: one row, and five, as the model takes them (ndarray for tensor kinds, else DataFrame)
    one_row: Any
    few_rows: Any
    #: the model's params and their defaults (``pyfunc_params`` only)
    params: dict[str, Any] = field(default_factory=dict)
    #: rows to draw from for ``bodies(info, n)``
    pool: Any = None

    @property
    def tensor(self) -> bool:
        return self.kind in TENSOR_KINDS


# -- data ---------------------------------------------------------------------------------------


def _numbers(kind: str, n: int, features: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "int64_tensor":
        return rng.integers(-5, 6, size=(n, features)).astype(np.int64)
    dtype = np.float32 if kind in ("float32_tensor", "pytorch") else np.float64
    return rng.normal(size=(n, features)).astype(dtype)


def _labels(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x, dtype=np.float64)[:, :4].sum(axis=1) > 0).astype(np.int64)


def _names(features: int) -> list[str]:
    return [f"f{j}" for j in range(features)]


CITIES = ("Oslo", "Lima", "Pune", "Kyiv")


def _mixed(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, size=n).astype(np.int64),  # long
            "visits": rng.integers(0, 50, size=n).astype(np.int32),  # integer
            "amount": np.round(rng.gamma(2.0, 30.0, size=n), 2),  # double
            "score": rng.random(size=n).astype(np.float32),  # float
            "city": [CITIES[i] for i in rng.integers(0, len(CITIES), size=n)],  # string
            "member": rng.random(size=n) < 0.5,  # boolean
        }
    )


def _mixed_labels(frame: pd.DataFrame) -> np.ndarray:
    score = frame["score"].to_numpy() + frame["member"].to_numpy() * 0.3
    return (score + (frame["city"] == "Oslo").to_numpy() * 0.2 > 0.75).astype(np.int64)


def _table(kind: str, n: int, features: int, seed: int) -> Any:
    """``n`` rows of the kind's input (ndarray for tensors, else a DataFrame)."""
    if kind == "mixed_columns":
        return _mixed(n, seed)
    x = _numbers(kind, n, features, seed)
    if kind in TENSOR_KINDS:
        return x
    return pd.DataFrame(x, columns=_names(features))


# -- models -------------------------------------------------------------------------------------


def _classifier(cost: str) -> Any:
    if cost == "heavy":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(
            max_iter=_TREES, max_depth=2, early_stopping=False, random_state=0
        )
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=200 if cost == "tiny" else 1000)


def _fit(kind: str, cost: str, features: int) -> Any:
    """A fitted scikit-learn model for ``kind`` (not pytorch)."""
    train = _table(kind, 200 if cost == "tiny" else 4000, features, seed=1)
    if kind == "mixed_columns":
        from sklearn.compose import ColumnTransformer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder

        encode = ColumnTransformer(
            [("city", OneHotEncoder(handle_unknown="ignore", sparse_output=False), ["city"])],
            remainder="passthrough",
        )
        return Pipeline([("encode", encode), ("model", _classifier(cost))]).fit(
            train, _mixed_labels(train)
        )
    return _classifier(cost).fit(train, _labels(np.asarray(train)))


def _torch_model(cost: str, features: int) -> Any:
    import torch

    torch.manual_seed(0)
    nn = torch.nn
    if cost == "lr":
        layers: list[Any] = [nn.Linear(features, 1)]
    else:
        width, depth = (16, 1) if cost == "tiny" else (1792, 4)
        layers = [nn.Linear(features, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        layers.append(nn.Linear(width, 1))
    return nn.Sequential(*layers, nn.Sigmoid()).eval()


class _ScaledProba:
    """``pyfunc_params``'s model: the artifact's probability of class 1 times ``scale``, in
    the shape ``output`` names. Pickled by value, so ``mlflow models serve`` loads it without
    this module."""

    def load_context(self, context: Any) -> None:
        with open(context.artifacts["model"], "rb") as f:
            self.model = pickle.load(f)

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        # (no type hints: MLflow would read them as a signature)
        import numpy as np
        import pandas as pd

        params = params or {}
        p = self.model.predict_proba(model_input)[:, 1] * float(params.get("scale", 1.0))
        label = (p > 0.5).astype(np.int64)
        output = params.get("output", "array")
        if output == "array":
            return p
        if output == "series":
            return pd.Series(p, name="p")
        if output == "frame":
            return pd.DataFrame({"p": p, "label": label})
        if output == "dict":
            return {"p": p, "label": label}
        if output == "list":
            return [float(v) for v in p]
        if output == "strings":
            return ["yes" if v else "no" for v in label]
        if output == "text":
            return f"{int(label.sum())} of {len(label)} rows are yes"
        raise ValueError(f"unknown output {output!r}")


def _python_model() -> Any:
    """:class:`_ScaledProba` as a ``PythonModel`` subclass, made here so that importing this
    module does not import MLflow."""
    import mlflow

    return type("ScaledProba", (_ScaledProba, mlflow.pyfunc.PythonModel), {})()


# -- saving -------------------------------------------------------------------------------------


def save_kind(kind: str, path: Path, *, cost: str = "tiny", features: int = FEATURES) -> KindInfo:
    """Save a model of ``kind`` at ``path`` (a directory that must not exist yet)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {KINDS}")
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}; one of {COSTS}")
    import mlflow

    path = Path(path)
    pool = _table(kind, _POOL, features, seed=2)
    example = pool[:2] if kind in TENSOR_KINDS else pool.head(2)
    params: dict[str, Any] = {}
    with warnings.catch_warnings():  # MLflow's advice on type hints, pickles, int columns
        warnings.simplefilter("ignore")
        if kind == "pytorch":
            mlflow.pytorch.save_model(
                _torch_model(cost, features), str(path), input_example=example,
                pip_requirements=["torch"],
            )  # fmt: skip
        elif kind == "pyfunc_params":
            params = {"scale": 1.0, "output": "array"}
            path.parent.mkdir(parents=True, exist_ok=True)
            artifact = path.parent / f"{path.name}-artifact.pkl"
            artifact.write_bytes(pickle.dumps(_fit(kind, cost, features)))
            try:
                _save_pyfunc(path, artifact, example, params)  # copies the artifact in
            finally:
                artifact.unlink()
        else:
            mlflow.sklearn.save_model(
                _fit(kind, cost, features), str(path), input_example=example,
                signature=False if kind == "no_signature" else None,
                pip_requirements=["scikit-learn"], skops_trusted_types=_TRUSTED,
            )  # fmt: skip
    few = pool[:5] if kind in TENSOR_KINDS else pool.head(5)
    one = pool[:1] if kind in TENSOR_KINDS else pool.head(1)
    return KindInfo(kind, cost, path, one, few, params, pool)


def _save_pyfunc(path: Path, artifact: Path, example: Any, params: dict[str, Any]) -> None:
    import cloudpickle
    import mlflow

    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    try:
        mlflow.pyfunc.save_model(
            str(path), python_model=_python_model(), artifacts={"model": str(artifact)},
            input_example=(example, params), pip_requirements=["scikit-learn", "cloudpickle"],
        )  # fmt: skip
    finally:
        cloudpickle.unregister_pickle_by_value(module)


# -- bodies -------------------------------------------------------------------------------------


def _rows_of(info: KindInfo, rows: Any) -> Any:
    if isinstance(rows, int):
        pool = info.pool
        reps = -(-rows // len(pool))
        if isinstance(pool, np.ndarray):
            return np.concatenate([pool] * reps)[:rows]
        return pd.concat([pool] * reps, ignore_index=True).head(rows)
    return rows


def _js(value: Any) -> bytes:
    return json.dumps(value).encode()


def bodies(info: KindInfo, rows: Any) -> dict[str, Body]:
    """``rows`` (an ndarray or DataFrame like ``info.one_row``, or a row count) in every
    format that applies to ``info``'s kind, by format name."""
    data = _rows_of(info, rows)
    app_json = "application/json"
    out: dict[str, Body] = {}
    if info.tensor:
        array = np.asarray(data)
        listed = array.tolist()
        names = [str(j) for j in range(array.shape[1])]
        frame = pd.DataFrame(array, columns=names)
        out["dataframe_split"] = ("/invocations", app_json, _js({"dataframe_split": {
            "columns": names, "data": listed}}))  # fmt: skip
        out["dataframe_records"] = ("/invocations", app_json, _js({"dataframe_records": [
            dict(zip(names, row, strict=True)) for row in listed]}))  # fmt: skip
        out["instances"] = ("/invocations", app_json, _js({"instances": listed}))
        out["inputs"] = ("/invocations", app_json, _js({"inputs": listed}))
    else:
        frame = data.reset_index(drop=True)
        names = [str(c) for c in frame.columns]
        columns = {name: frame[name].tolist() for name in names}
        listed = [list(row) for row in zip(*columns.values(), strict=True)]
        records = [dict(zip(names, row, strict=True)) for row in listed]
        out["dataframe_split"] = ("/invocations", app_json, _js({"dataframe_split": {
            "columns": names, "data": listed}}))  # fmt: skip
        out["dataframe_records"] = ("/invocations", app_json, _js({"dataframe_records": records}))
        out["instances"] = ("/invocations", app_json, _js({"instances": records}))
        out["inputs"] = ("/invocations", app_json, _js({"inputs": columns}))
    out["csv"] = ("/invocations", "text/csv", frame.to_csv(index=False).encode())
    parquet = io.BytesIO()
    frame.to_parquet(parquet, index=False)
    out["parquet"] = ("/invocations", "application/vnd.apache.parquet", parquet.getvalue())
    if info.tensor:
        npy = io.BytesIO()
        np.save(npy, np.ascontiguousarray(data), allow_pickle=False)
        out["predict_json"] = ("/predict", app_json, _js(listed))
        out["predict_npy"] = ("/predict", "application/octet-stream", npy.getvalue())
    else:
        out["predict_json"] = ("/predict", app_json, _js(columns))
    return out
