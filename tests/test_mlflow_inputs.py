"""tiffin's own reading of MLflow model inputs (``frameworks.mlflow.inputs``, ``.tables``,
``.casting`` and ``serving.mlflow_inputs``), against MLflow's scoring path.

Models are saved once per module with ``input_example=`` (MLflow infers their signatures as
users get them) and imported into a store. For each model kind and body form, the input tiffin
builds equals (dtype, shape or columns, values, index) what MLflow's ``_parse_json_data`` /
``parse_csv_input`` / ``parse_parquet_input`` and ``_enforce_schema`` build from the same
body, and the model predicts the same on both. Where tiffin accepts a form MLflow refuses, the
answer is compared with MLflow's for the reference form (``inputs`` for tensors,
``dataframe_split`` for columns).
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models.utils import _enforce_schema
from mlflow.pyfunc import scoring_server as ss

import tiffin
from tiffin.exceptions import DecodedTooLarge, InvalidArgument
from tiffin.frameworks.mlflow import casting
from tiffin.frameworks.mlflow.inputs import FALLBACK, InputSchema
from tiffin.io.limits import DECODE_LIMITS, DecodeLimits
from tiffin.serving import mlflow_inputs as serving

pytestmark = pytest.mark.filterwarnings(
    "ignore:X (has|does not have valid) feature names:UserWarning",
    "ignore:.*type hints:UserWarning",
)

with warnings.catch_warnings():  # MLflow asks for type hints; these models have none on purpose
    warnings.simplefilter("ignore", UserWarning)

    class Mixed(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            df = model_input
            return (
                df["age"]
                + df["visits"]
                + df["score"].astype("float64")
                + df["amount"]
                + df["city"].str.len()
                + df["member"].astype(int)
                + df["since"].dt.year
            ).to_numpy(dtype="float64")

    class Optional(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            out = model_input["n"].astype("float64") * 2
            if "x" in model_input:
                out = out + model_input["x"].fillna(0.0)
            if "tag" in model_input:
                out = out + model_input["tag"].fillna("").str.len()
            return out.to_numpy()

    class Multi(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return model_input["a"].sum(axis=1) + model_input["b"].sum(axis=1)

    class Lengths(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return np.array([len(v) for v in model_input["v"]])

    class Hinted(mlflow.pyfunc.PythonModel):  # type: ignore[name-defined,misc]
        def predict(self, model_input: list[str], params=None) -> list[str]:  # type: ignore[no-untyped-def]
            return model_input


@dataclass
class Kind:
    """One saved, imported model and the rows the tests send it."""

    name: str
    path: Path
    pyfunc: Any
    schema: InputSchema | None
    names: list[str]
    rows: list[list[Any]]
    tensor: bool = False


def _sklearn(path: Path, X: Any, example: Any = None) -> Path:
    from sklearn.linear_model import LinearRegression

    y = np.asarray(X, dtype="float64") @ np.arange(1.0, X.shape[1] + 1)
    mlflow.sklearn.save_model(
        LinearRegression().fit(X, y),
        str(path),
        input_example=example,
        pip_requirements=["scikit-learn"],
    )
    return path


def _pyfunc(path: Path, model: Any, example: Any) -> Path:
    mlflow.pyfunc.save_model(
        str(path), python_model=model, input_example=example, pip_requirements=["numpy"]
    )
    return path


MIXED = pd.DataFrame(
    {
        "age": np.array([30, 41], dtype="int32"),
        "visits": np.array([3, 10], dtype="int64"),
        "score": np.array([0.5, 0.25], dtype="float32"),
        "amount": [10.0, 2.5],
        "city": ["Oslo", "Lima"],
        "member": [True, False],
        "since": pd.to_datetime(["2020-01-01T00:00:00", "2021-06-30T12:00:00"]),
    }
)


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Kind]:
    root = tmp_path_factory.mktemp("mlflow-inputs")
    rng = np.random.default_rng(7)
    X = rng.normal(size=(20, 4))
    cols = ["sepal length", "width", "c", "d"]
    frame = pd.DataFrame(X, columns=cols)
    with warnings.catch_warnings():  # MLflow's hints: type hints, integer columns
        warnings.simplefilter("ignore", UserWarning)
        saved = _save_all(root, X, frame)
    store = _store(root / "home")
    floats = [[0.1, 0.2, 0.3, 0.4], [1, 2, 3, 4], [-1.5, 2.25, 1e3, 7]]
    rows = {
        "f32": floats,
        "f64": floats,
        "columns": floats,
        "unsigned": floats,
        "i64": [[1, 2, 3, 4], [5, 6, 7, 8], [-1, 0, 2**40, 3]],
        "mixed": [
            [30, 3, 0.5, 10.0, "Oslo", True, "2020-01-01T00:00:00"],
            [41, 10, 0.25, 2.5, "Lima", False, "2021-06-30T12:00:00"],
            [7, 2**40, 1.1, -3, "Rome", True, "2022-02-02T02:02:02"],
        ],
        "optional": [[1, 1.5, "a"], [2, None, "b"], [3, 2.5, None]],
    }
    names = {"mixed": list(MIXED.columns), "optional": ["n", "x", "tag"], "columns": cols}
    out = {}
    for name, path in saved.items():
        model = tiffin.mlflow.import_model(name, path, store=store)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            pyfunc = mlflow.pyfunc.load_model(str(path))
        out[name] = Kind(
            name,
            path,
            pyfunc,
            InputSchema.from_model(model),
            names.get(name, [f"c{i}" for i in range(4)]),
            rows.get(name, []),
            tensor=name in ("f32", "f64", "i64"),
        )
    return out


def _save_all(root: Path, X: Any, frame: Any) -> dict[str, Path]:
    return {
        "f32": _sklearn(root / "f32", X.astype("float32"), X[:2].astype("float32")),
        "f64": _sklearn(root / "f64", X, X[:2]),
        "i64": _sklearn(root / "i64", (X * 10).astype("int64"), (X[:2] * 10).astype("int64")),
        "columns": _sklearn(root / "columns", frame, frame.head(2)),
        "unsigned": _sklearn(root / "unsigned", X),
        "mixed": _pyfunc(root / "mixed", Mixed(), MIXED),
        "optional": _pyfunc(
            root / "optional",
            Optional(),
            pd.DataFrame({"n": [1, 2], "x": [1.5, None], "tag": ["a", None]}),
        ),
        "multi": _pyfunc(
            root / "multi",
            Multi(),
            {"a": np.ones((2, 3), dtype="float32"), "b": np.ones((2, 2), dtype="int64")},
        ),
        "array": _pyfunc(root / "array", Lengths(), pd.DataFrame({"v": [[1.0, 2.0], [3.0]]})),
        "hinted": _pyfunc(root / "hinted", Hinted(), ["a", "b"]),
    }


def _store(home: Path) -> Any:
    from tiffin.models import MODEL_FILE
    from tiffin.store.versioned import Store

    return Store(home / "models", "model", MODEL_FILE)


# -- MLflow's answers, and comparing -------------------------------------------------------------


def theirs_json(kind: Kind, body: Any) -> Any:
    meta = kind.pyfunc.metadata
    schema = meta.get_input_schema()
    data = ss._parse_json_data(json.dumps(body), meta, schema).data
    return data if schema is None else _enforce_schema(data, schema)


def theirs_frame(kind: Kind, frame: Any) -> Any:
    return _enforce_schema(frame, kind.pyfunc.metadata.get_input_schema())


def reference(kind: Kind) -> Any:
    """MLflow's answer for the form it reads for sure: ``inputs`` (tensors), a split table."""
    if kind.tensor or kind.name == "unsigned":
        return theirs_json(kind, {"inputs": kind.rows})
    return theirs_json(kind, split(kind))


def assert_same(ours: Any, theirs: Any) -> None:
    if isinstance(theirs, pd.DataFrame):
        assert isinstance(ours, pd.DataFrame), type(ours)
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    elif isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs)
        for key in theirs:
            assert_same(ours[key], theirs[key])
    else:
        assert isinstance(ours, np.ndarray), type(ours)
        assert (ours.dtype, ours.shape) == (theirs.dtype, theirs.shape)
        np.testing.assert_array_equal(ours, theirs)


def assert_same_prediction(kind: Kind, ours: Any, theirs: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        logging.disable(logging.WARNING)
        try:
            np.testing.assert_array_equal(
                np.asarray(kind.pyfunc.predict(ours)), np.asarray(kind.pyfunc.predict(theirs))
            )
        finally:
            logging.disable(logging.NOTSET)


# -- the forms -----------------------------------------------------------------------------------


def split(kind: Kind, index: list[Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"columns": kind.names, "data": kind.rows}
    if index is not None:
        body["index"] = index
    return {"dataframe_split": body}


def records(kind: Kind, **extra: Any) -> list[dict[str, Any]]:
    return [dict(zip(kind.names, row, strict=True), **extra) for row in kind.rows]


def columns(kind: Kind) -> dict[str, list[Any]]:
    return {name: [row[j] for row in kind.rows] for j, name in enumerate(kind.names)}


def table(kind: Kind) -> Any:
    """MLflow's reference answer as a DataFrame (a tensor's columns named c0, c1, ...)."""
    expected = reference(kind)
    return pd.DataFrame(expected, columns=kind.names) if kind.tensor else expected


def _csv(kind: Kind) -> bytes:
    return table(kind).to_csv(index=False).encode()


def _parquet(frame: Any) -> bytes:
    out = io.BytesIO()
    frame.to_parquet(out)
    return out.getvalue()


def _npy(array: Any) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _reordered(kind: Kind) -> dict[str, Any]:
    return {
        "dataframe_split": {
            "columns": [*kind.names[::-1], "extra"],
            "data": [[*row[::-1], "junk"] for row in kind.rows],
        }
    }


def _loose(frame: Any) -> Any:
    """The frame with the dtypes a caller's DataFrame usually has (int64, float64)."""
    return frame.astype(
        {
            c: ("int64" if t.kind in "iu" else "float64")
            for c, t in frame.dtypes.items()
            if t.kind in "iuf"
        }
    )


#: MLflow envelopes: tiffin's answer (``from_invocation``) against MLflow's for the same body
ENVELOPES: dict[str, Callable[[Kind], Any]] = {
    "inputs": lambda k: {"inputs": k.rows},
    "instances": lambda k: {"instances": k.rows},
    "split": lambda k: split(k),
    "split index": lambda k: split(k, [9, 8, 7]),
    "split unnamed": lambda k: {"dataframe_split": {"data": k.rows}},
    "split reordered, extra column": _reordered,
    "records": lambda k: {"dataframe_records": records(k)},
    "records, extra key": lambda k: {"dataframe_records": records(k, extra=1)},
    "inputs records": lambda k: {"inputs": records(k)},
    "instances records": lambda k: {"instances": records(k)},
    "inputs columns": lambda k: {"inputs": columns(k)},
    "instances columns": lambda k: {"instances": columns(k)},
    "inputs one row of scalars": lambda k: {"inputs": dict(zip(k.names, k.rows[0], strict=True))},
}
#: other forms: tiffin's answer, and the MLflow body whose answer it must equal (None: the
#: reference form's, where MLflow refuses this one)
OTHERS: dict[str, Callable[[Kind], tuple[Any, Any]]] = {
    "JSON rows": lambda k: (serving.from_json(k.rows, k.schema), None),
    "JSON records": lambda k: (serving.from_json(records(k), k.schema), ENVELOPES["records"](k)),
    "JSON columns": lambda k: (serving.from_json(columns(k), k.schema), {"inputs": columns(k)}),
    "JSON envelope": lambda k: (serving.from_json(split(k), k.schema), split(k)),
    "npy": lambda k: (serving.from_npy(_npy(np.array(k.rows)), k.schema), None),
    "runner list": lambda k: (_schema(k).convert(k.rows), None),
    "runner ndarray": lambda k: (_schema(k).convert(np.array(k.rows)), None),
    "runner dict": lambda k: (_schema(k).convert(columns(k)), None),
    "runner frame, loose dtypes": lambda k: (_schema(k).convert(_loose(table(k))), None),
}


def _schema(kind: Kind) -> InputSchema:
    assert kind.schema is not None
    return kind.schema


def ours_and_theirs(kind: Kind, form: str) -> tuple[Any, Any]:
    if form in ENVELOPES:
        body = ENVELOPES[form](kind)
        return serving.from_invocation(body, kind.schema), theirs_json(kind, body)
    if form in OTHERS:
        ours, body = OTHERS[form](kind)
        return ours, reference(kind) if body is None else theirs_json(kind, body)
    if form == "runner frame":
        return _schema(kind).convert(table(kind)), theirs_frame(kind, table(kind))
    if form == "parquet":
        body = _parquet(table(kind))
        theirs = theirs_frame(kind, ss.parse_parquet_input(io.BytesIO(body)))
        return serving.from_parquet(body, kind.schema), theirs
    assert form == "csv"
    ours = serving.from_csv(_csv(kind), kind.schema)
    if kind.tensor or kind.name == "mixed":  # MLflow reads neither tensors nor dates from CSV
        theirs = reference(kind)
        return ours, theirs.astype({"city": object}) if kind.name == "mixed" else theirs
    schema = kind.pyfunc.metadata.get_input_schema()
    csv = io.StringIO(_csv(kind).decode())
    return ours, _enforce_schema(ss.parse_csv_input(csv, schema), schema)


TENSOR = [
    "inputs",
    "instances",
    "split",
    "split unnamed",
    "records",
    "JSON rows",
    "JSON envelope",
    "csv",
    "parquet",
    "npy",
    "runner list",
    "runner ndarray",
]
COLUMNS = [
    "split",
    "split index",
    "split reordered, extra column",
    "records",
    "records, extra key",
    "inputs records",
    "instances records",
    "inputs columns",
    "instances columns",
    "inputs one row of scalars",
    "JSON rows",
    "JSON records",
    "JSON columns",
    "JSON envelope",
    "csv",
    "parquet",
    "runner list",
    "runner dict",
    "runner frame",
    "runner frame, loose dtypes",
]
OPTIONAL = [
    "split",
    "split index",
    "split reordered, extra column",
    "records",
    "records, extra key",
    "JSON rows",
    "JSON records",
    "JSON envelope",
    "csv",
    "parquet",
    "runner list",
    "runner frame",
]
CASES = (
    [(k, f) for k in ("f32", "f64", "i64") for f in TENSOR]
    + [(k, f) for k in ("f32", "f64") for f in ("runner frame", "runner frame, loose dtypes")]
    + [("columns", f) for f in [*COLUMNS, "npy", "runner ndarray"]]
    + [("mixed", f) for f in COLUMNS]
    + [("optional", f) for f in OPTIONAL]
)


@pytest.mark.parametrize(("kind_name", "form"), CASES, ids=[f"{k}-{f}" for k, f in CASES])
def test_each_form_builds_what_mlflow_builds_and_predicts_the_same(
    kinds: dict[str, Kind], kind_name: str, form: str
) -> None:
    kind = kinds[kind_name]
    ours, theirs = ours_and_theirs(kind, form)
    assert_same(ours, theirs)
    assert_same_prediction(kind, ours, theirs)


def test_the_signatures_read_from_model_yaml(kinds: dict[str, Kind]) -> None:
    summary = {
        name: (k.schema.kind, k.schema.needs_mlflow) if k.schema else None
        for name, k in kinds.items()
    }
    assert summary == {
        "f32": ("tensor", False),
        "f64": ("tensor", False),
        "i64": ("tensor", False),
        "columns": ("columns", False),
        "mixed": ("columns", False),
        "optional": ("columns", False),
        "multi": ("tensors", False),
        "unsigned": None,
        "array": ("columns", True),
        "hinted": ("columns", True),
    }
    assert [s.required for s in kinds["optional"].schema.specs] == [True, False, False]  # type: ignore[union-attr]
    assert "array" in (kinds["array"].schema.reason or "")  # type: ignore[union-attr]
    assert "type hints" in (kinds["hinted"].schema.reason or "")  # type: ignore[union-attr]


def test_from_model_reads_a_model_imported_into_this_tests_home(
    kinds: dict[str, Kind], tiffin_home: Path
) -> None:
    model = tiffin.mlflow.import_model("mixed", kinds["mixed"].path)
    assert Path(model.path).is_relative_to(tiffin_home)
    schema = InputSchema.from_model(model)
    assert schema is not None and schema.names == list(MIXED.columns)


# -- named tensors, no signature, MLflow's own ----------------------------------------------------

MULTI = {"a": [[1, 2, 3.5], [0.1, 0.2, 0.3]], "b": [[1, 2], [3, 2**40]]}
MULTI_FORMS = {
    "inputs": {"inputs": MULTI},
    "instances": {"instances": MULTI},
    "instances rows": {"instances": [{"a": MULTI["a"][i], "b": MULTI["b"][i]} for i in (0, 1)]},
    "extra input": {"inputs": {**MULTI, "c": [[1]]}},
}


@pytest.mark.parametrize("form", MULTI_FORMS)
def test_named_tensors(kinds: dict[str, Kind], form: str) -> None:
    kind = kinds["multi"]
    body = MULTI_FORMS[form]
    ours, theirs = serving.from_invocation(body, kind.schema), theirs_json(kind, body)
    assert_same(ours, theirs)
    assert_same_prediction(kind, ours, theirs)


def test_named_tensors_from_a_runner_and_as_tables(kinds: dict[str, Kind]) -> None:
    schema, theirs = kinds["multi"].schema, theirs_json(kinds["multi"], {"inputs": MULTI})
    assert schema is not None
    assert_same(schema.convert(MULTI), theirs)
    assert_same(schema.convert({k: np.array(v) for k, v in MULTI.items()}), theirs)
    assert_same(serving.from_json(MULTI, schema), theirs)
    table = [{"a": MULTI["a"][0], "b": MULTI["b"][0]}]
    assert serving.from_invocation({"dataframe_records": table}, schema) is FALLBACK
    with pytest.raises(InvalidArgument, match=r"missing the model's inputs \['b'\]"):
        schema.convert({"a": MULTI["a"]})
    with pytest.raises(InvalidArgument, match=r"input 'b'\[1\]\[0\]: 3.5"):
        schema.convert({"a": MULTI["a"], "b": [[1, 2], [3.5, 4]]})


@pytest.mark.parametrize("form", ["split", "records", "inputs"])
def test_no_signature_same_as_mlflow(kinds: dict[str, Kind], form: str) -> None:
    kind = kinds["unsigned"]
    body = {
        "split": split(kind),
        "records": {"dataframe_records": records(kind)},
        "inputs": {"inputs": kind.rows},
    }[form]
    ours, theirs = serving.from_invocation(body, None), theirs_json(kind, body)
    if isinstance(theirs, pd.DataFrame):
        pd.testing.assert_frame_equal(ours, theirs)
    else:
        assert_same(ours, theirs)
    assert_same_prediction(kind, ours, theirs)


def test_no_signature_a_dict_of_columns_becomes_a_frame(kinds: dict[str, Kind]) -> None:
    kind = kinds["unsigned"]
    ours = serving.from_invocation({"inputs": columns(kind)}, None)
    assert isinstance(ours, pd.DataFrame) and list(ours.columns) == kind.names
    assert isinstance(theirs_json(kind, {"inputs": columns(kind)}), dict)  # MLflow: a dict
    assert_same_prediction(kind, ours, reference(kind))
    assert isinstance(serving.from_json(records(kind), None), pd.DataFrame)
    assert serving.from_json(kind.rows, None).shape == (3, 4)
    assert serving.from_invocation({"inputs": {"prompt": "hi"}}, None) is FALLBACK


@pytest.mark.parametrize(
    "body",
    [
        {"inputs": [[1.0]], "params": {"k": 1}},
        {"messages": [{"role": "user"}]},
        {"prompt": "hi"},
        {"inputs": [[1.0]], "instances": [[1.0]]},
        {"columns": ["a"]},
        [[1.0]],
    ],
)
def test_mlflow_reads_what_tiffin_does_not(kinds: dict[str, Kind], body: Any) -> None:
    assert serving.from_invocation(body, kinds["f64"].schema) is FALLBACK


def test_array_columns_and_type_hints_are_left_to_mlflow(kinds: dict[str, Kind]) -> None:
    for name in ("array", "hinted"):
        schema = kinds[name].schema
        assert schema is not None and schema.needs_mlflow
        assert serving.from_invocation({"inputs": [[1.0]]}, schema) is FALLBACK
        assert serving.from_json([[1.0]], schema) is FALLBACK
        assert serving.from_csv(b"v\n1\n", schema) is FALLBACK
        assert schema.convert(pd.DataFrame({"v": [[1.0]]})) is FALLBACK
    body = {"dataframe_records": [{"v": [1.0, 2.0]}]}
    assert_same_prediction(
        kinds["array"], theirs_json(kinds["array"], body), theirs_json(kinds["array"], body)
    )  # MLflow's path still serves it


# -- exactness -----------------------------------------------------------------------------------

ROW = dict(zip(MIXED.columns, [30, 3, 0.5, 10.0, "Oslo", True, "2020-01-01T00:00:00"], strict=True))
REFUSED = [
    ("i64", {"inputs": [[1, 2, 3, 4], [5, 6, 3.5, 8]]}, r"input\[1\]\[2\]: 3\.5 is not a whole"),
    ("i64", {"inputs": [[1, 2, 3, 2**63]]}, r"input\[0\]\[3\]: 9223372036854775808 is outside"),
    ("i64", {"inputs": [[1, None, 3, 4]]}, r"input\[0\]\[1\]: null is missing"),
    ("i64", {"dataframe_split": {"data": [[1, 2, 3, 4.5]]}}, r"input\[0\]\[3\]: 4\.5"),
    ("f32", {"inputs": [[0.1, 0.2, 0.3, 1e40]]}, r"input\[0\]\[3\]: 1e\+40 is too large"),
    ("f32", {"inputs": [[0.1, "abc", 0.3, 0.4]]}, r"input\[0\]\[1\]: 'abc' is a string"),
    ("f32", {"inputs": [[0.1, "0.2", 0.3, 0.4]]}, r"input\[0\]\[1\]: '0\.2' is a string"),
    ("f64", {"inputs": [[0.1, 0.2], [0.3, 0.4]]}, r"shape \[2, 2\]; the model takes \[-1, 4\]"),
    ("mixed", {"dataframe_records": [{**ROW, "age": 3.5}]}, r"column 'age' row 0: 3\.5"),
    ("mixed", {"dataframe_records": [{**ROW, "age": 2**40}]}, r"column 'age' row 0: 1099511627776"),
    (
        "mixed",
        {
            "dataframe_split": {
                "columns": list(ROW),
                "data": [
                    list(ROW.values()),
                    [*list(ROW.values())[:3], "abc", *list(ROW.values())[4:]],
                ],
            }
        },
        r"column 'amount' row 1: 'abc' is a string",
    ),
    (
        "mixed",
        {"inputs": {**{k: [v] for k, v in ROW.items()}, "member": [1.5]}},
        r"column 'member' row 0: 1\.5 is not a boolean",
    ),
    ("mixed", {"dataframe_records": [{**ROW, "member": 2}]}, r"column 'member' row 0: 2 "),
    ("mixed", {"dataframe_records": [{**ROW, "member": "yes"}]}, r"column 'member' row 0: 'yes'"),
    ("mixed", {"dataframe_records": [{**ROW, "member": None}]}, r"column 'member' row 0: null"),
    ("mixed", {"dataframe_records": [{**ROW, "visits": None}]}, r"column 'visits' row 0: null"),
    ("mixed", {"dataframe_records": [{**ROW, "city": None}]}, r"column 'city' row 0: null .*requ"),
    ("mixed", {"dataframe_records": [{**ROW, "city": 5}]}, r"column 'city' row 0: 5 is not a str"),
    ("mixed", {"dataframe_records": [{**ROW, "since": 5}]}, r"column 'since' row 0: 5 is not a d"),
    (
        "mixed",
        {"dataframe_records": [{**ROW, "since": "2020-01-01T00:00:00+02:00"}]},
        r"column 'since': date-times must be timezone-naive",
    ),
    (
        "mixed",
        {"dataframe_records": [{k: v for k, v in ROW.items() if k != "city"}]},
        r"missing required columns \['city'\]",
    ),
    ("optional", {"dataframe_records": [{"x": 1.0}]}, r"missing required columns \['n'\]"),
]


@pytest.mark.parametrize(
    ("kind_name", "body", "match"), REFUSED, ids=[f"{k}-{m[:24]}" for k, _, m in REFUSED]
)
def test_what_the_declared_type_cannot_hold_is_a_400_naming_where(
    kinds: dict[str, Kind], kind_name: str, body: Any, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match) as caught:
        serving.from_invocation(body, kinds[kind_name].schema)
    assert caught.value.http_status == 400


@pytest.mark.parametrize(
    ("value", "dtype", "expected"),
    [
        ([1, 2**7 - 1, -(2**7)], "int8", None),
        ([2**7], "int8", "outside"),
        ([255, 0], "uint8", None),
        ([256], "uint8", "outside"),
        ([-1], "uint8", "outside"),
        ([1.0, 2.0], "int16", None),
        ([0.5], "int16", "not a whole number"),
        ([65504.0, -1.5], "float16", None),
        ([70000], "float16", "too large"),
        ([float("nan"), float("inf")], "float32", None),
        ([None, 1], "float32", None),
        ([True, 0, 1, 0.0, 1.0], "bool", None),
        ([2], "bool", "not a boolean"),
        ([None], "bool", "missing"),
        (["true"], "bool", "string"),
        ([True, 2.5], "int64", "whole"),
        ([2**53 + 1, 0.5], "int64", "whole"),
        ([[2**53 + 1, 1.0]], "int64", None),
    ],
)
def test_exact_casts_of_every_numeric_dtype(value: Any, dtype: str, expected: str | None) -> None:
    where = casting.at("input")
    if expected is not None:
        with pytest.raises(InvalidArgument, match=expected):
            casting.to_array(value, np.dtype(dtype), where)
        with pytest.raises(InvalidArgument, match=expected):  # a few values, one at a time
            casting.values(list(np.array(value, dtype=object).ravel()), np.dtype(dtype), where)
        return
    out = casting.to_array(value, np.dtype(dtype), where)
    assert out.dtype == np.dtype(dtype)
    flat = np.array(value, dtype=object).ravel()
    assert [x != x or x is None for x in flat] == list(
        np.isnan(out.ravel()) if out.dtype.kind == "f" else [False] * len(flat)
    )
    if dtype == "int64" and isinstance(value[0], list):  # integers numpy would round: exact
        assert out.tolist() == [[2**53 + 1, 1]]


def test_integers_beside_floats_stay_exact() -> None:
    schema = InputSchema.from_signature(
        [{"type": "long", "name": "v"}, {"type": "double", "name": "w"}]
    )
    assert schema is not None
    big = 2**53 + 1
    column = [1.0] * 9 + [big]
    assert schema.from_inputs({"v": column, "w": column})["v"].tolist() == [1] * 9 + [big]
    rows = [[big, 0.5]] * 3
    assert schema.from_inputs(rows)["v"].tolist() == [big] * 3
    assert schema.from_inputs({"v": big, "w": 0.5})["v"].tolist() == [big]


def test_strings_and_nulls(kinds: dict[str, Kind]) -> None:
    kind = kinds["mixed"]
    body = {"dataframe_records": [{**ROW, "city": ""}]}
    assert_same(serving.from_invocation(body, kind.schema), theirs_json(kind, body))
    optional = kinds["optional"]
    for body in (
        {"dataframe_records": [{"n": 1, "tag": None}]},  # all null: object
        {"dataframe_records": [{"n": 1, "tag": "a"}, {"n": 2}]},  # str with NaN
        {"dataframe_records": [{"n": 1, "x": None}]},
    ):  # NaN
        assert_same(serving.from_invocation(body, optional.schema), theirs_json(optional, body))


# -- optional and extra columns -----------------------------------------------------------------


@pytest.mark.parametrize("sent", [["n"], ["n", "x"], ["n", "tag"], ["tag", "n", "x", "junk"]])
def test_optional_columns_may_be_absent_and_extra_ones_are_dropped(
    kinds: dict[str, Kind], sent: list[str]
) -> None:
    kind = kinds["optional"]
    values = {"n": 4, "x": 0.5, "tag": "abc", "junk": "?"}
    for body in (
        {"dataframe_records": [{k: values[k] for k in sent}]},
        {"dataframe_split": {"columns": sent, "data": [[values[k] for k in sent]]}},
    ):
        ours, theirs = serving.from_invocation(body, kind.schema), theirs_json(kind, body)
        assert list(ours.columns) == [c for c in ("n", "x", "tag") if c in sent]
        assert_same(ours, theirs)
        assert_same_prediction(kind, ours, theirs)


# -- decode limits ------------------------------------------------------------------------------


def test_bodies_are_measured_before_anything_is_built(kinds: dict[str, Kind]) -> None:
    token = DECODE_LIMITS.set(DecodeLimits(max_decoded_cells=40, max_columns=6))
    try:
        with pytest.raises(DecodedTooLarge, match="max_decoded_cells"):
            serving.from_invocation({"inputs": [[0.5] * 4] * 11}, kinds["f64"].schema)
        with pytest.raises(DecodedTooLarge, match="max_decoded_cells"):
            serving.from_json([[0.5] * 4] * 11, kinds["columns"].schema)
        with pytest.raises(DecodedTooLarge, match="max_columns"):
            serving.from_invocation(
                {"dataframe_split": {"columns": [f"c{i}" for i in range(7)], "data": [[0] * 7]}},
                kinds["columns"].schema,
            )
        with pytest.raises(DecodedTooLarge):
            serving.from_npy(_npy(np.zeros((11, 4))), kinds["f64"].schema)
        with pytest.raises(DecodedTooLarge):
            serving.from_csv(("a,b,c,d\n" + "1,2,3,4\n" * 11).encode(), kinds["columns"].schema)
        # keys outside a column signature are dropped before they are measured
        junk = {f"junk{i}": 0 for i in range(20)}
        row = dict(zip(kinds["columns"].names, [1.0, 2.0, 3.0, 4.0], strict=True))
        out = serving.from_invocation(
            {"dataframe_records": [{**row, **junk}]}, kinds["columns"].schema
        )
        assert list(out.columns) == kinds["columns"].names
    finally:
        DECODE_LIMITS.reset(token)


# -- the plain tensor fast path -----------------------------------------------------------------

PLAIN = [  # (dtype, shape, payload, taken: the fast path builds it)
    ("float64", [-1, 3], [[0.5, 1.0, -2.25]], True),
    ("float32", [-1, 3], [[0.5, 1.0, -2.25], [3.0, 4.0, 5.0]], True),
    ("float32", [-1, 3], [[0.5, 1.0, 1e300]], False),  # too large for float32: the 400 below
    ("float32", [-1, 2], [[1, 2]], True),  # integers as floats
    ("float16", [-1, 2], [[70000.0, 1.0]], False),
    ("int64", [-1, 2], [[1, 2], [3, 4]], True),
    ("int64", [-1, 2], [[1.5, 2.0]], False),  # not whole: the 400 below
    ("int64", [-1, 2], [[2.0, 3.0]], False),  # whole floats: the general path's exact cast
    ("int32", [-1, 2], [[1, 2]], False),
    ("uint8", [-1, 2], [[1, 2]], False),
    ("bool", [-1, 2], [[True, False]], True),
    ("float64", [-1, 2], [[1.0, "2"]], False),  # a string: the 400 below
    ("float64", [-1, 2], [[1.0, 2.0], [3.0]], False),  # ragged
    ("float64", [-1, 2], [[1.0, 2.0, 3.0]], False),  # wrong width
    ("float64", [-1, 2, 2], [[[1.0, 2.0], [3.0, 4.0]]], True),
    ("float64", [-1, 2, 2], [[1.0, 2.0]], False),  # shallower than declared
    ("float64", [-1], [1.0, 2.0], True),
    ("float64", [-1], [[1.0], [2.0]], False),  # deeper than declared
    ("float64", [2, -1], [[1.0], [2.0], [3.0]], False),  # a fixed first dimension
    ("float64", [-1, 2], [], False),
]


@pytest.mark.parametrize(("dtype", "shape", "payload", "taken"), PLAIN)
def test_plain_tensor_bodies_give_what_the_general_path_gives(
    dtype: str, shape: list[int], payload: Any, taken: bool
) -> None:
    schema = InputSchema.from_signature(
        [{"type": "tensor", "tensor-spec": {"dtype": dtype, "shape": shape}}]
    )
    assert schema is not None
    fast = serving.plain_tensor(payload, schema)
    assert (fast is not None) == taken
    try:
        general = schema.from_inputs(payload)
    except InvalidArgument as exc:
        assert fast is None
        for body in ({"inputs": payload}, {"instances": payload}):
            with pytest.raises(InvalidArgument) as caught:
                serving.from_invocation(body, schema)
            assert str(caught.value) == str(exc)
        with pytest.raises(InvalidArgument):
            serving.from_json(payload, schema)
        return
    for out in (
        serving.from_invocation({"inputs": payload}, schema),
        serving.from_invocation({"instances": payload}, schema),
        serving.from_json(payload, schema),
    ):
        assert out.dtype == general.dtype == np.dtype(dtype)
        assert out.shape == general.shape
        assert np.array_equal(out, general)


def test_plain_tensor_bodies_are_measured_before_anything_is_built() -> None:
    schema = InputSchema.from_signature(
        [{"type": "tensor", "tensor-spec": {"dtype": "float64", "shape": [-1, 4]}}]
    )
    assert schema is not None
    token = DECODE_LIMITS.set(DecodeLimits(max_decoded_cells=40))
    try:
        assert serving.plain_tensor([[0.5] * 4] * 10, schema) is not None
        assert serving.plain_tensor([[0.5] * 4] * 11, schema) is None
        with pytest.raises(DecodedTooLarge, match="max_decoded_cells"):
            serving.from_invocation({"inputs": [[0.5] * 4] * 11}, schema)
    finally:
        DECODE_LIMITS.reset(token)


def test_small_float_bodies_for_a_narrower_float_take_one_numpy_call() -> None:
    """A small 1-D or 2-D body of floats for a float32 (float16) tensor is checked in Python
    and made into the array at once: the very array numpy's read and cast give, and None
    (numpy reads it first) for ints, bools, NaN, values out of range and ragged rows."""
    rng = np.random.default_rng(11)
    taken = 0
    for trial in range(600):
        dtype = np.dtype("float32" if trial % 3 else "float16")
        top = float(np.finfo(dtype).max)
        rows, width = int(rng.integers(1, 5)), int(rng.integers(1, 9))
        scale = 10.0 ** rng.integers(0, 6)
        cells: list[Any] = [float(v) for v in rng.normal(0, scale, rows * width)]
        spice = trial % 10
        if spice == 1:
            cells[0] = top * (1 + 1e-9)  # just past the largest value
        elif spice == 2:
            cells[-1] = top  # the largest value itself
        elif spice == 3:
            cells[rng.integers(len(cells))] = float("nan")
        elif spice == 4:
            cells[0] = 3
        elif spice == 5:
            cells[0] = True
        payload: Any = [cells[i * width : (i + 1) * width] for i in range(rows)]
        depth = 2
        if spice == 6 and rows > 1:
            payload[-1] = payload[-1][:-1] or [1.5, 2.5]  # ragged
        if spice == 7:
            payload, depth = cells, 1
        try:
            fast = serving._narrow_floats(payload, depth, len(cells), dtype)
        except ValueError:  # ragged rows: numpy's own error, as its read of them gives
            with pytest.raises(ValueError):
                np.array(payload)
            continue
        if fast is None and spice == 6:
            continue  # ragged, and refused before numpy saw it
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            read = np.array(payload)
            cast = read.astype(dtype)
        if fast is None:
            assert spice in (1, 3, 4, 5, 6) or np.abs(read).max() > top
            continue
        taken += 1
        assert fast.dtype == dtype and fast.shape == read.shape
        assert fast.tobytes() == cast.tobytes()
    assert taken > 250


def test_an_array_already_of_the_declared_dtype_is_not_copied() -> None:
    schema = InputSchema.from_signature(
        [{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3]}}]
    )
    assert schema is not None
    ready = np.ones((2, 3), dtype=np.float32)
    assert schema.convert(ready) is ready
    widened = schema.convert(np.ones((2, 3), dtype=np.float16))
    assert widened.dtype == np.float32
    with pytest.raises(InvalidArgument, match="shape"):
        schema.convert(np.ones((2, 4), dtype=np.float32))


SPLITS = [  # (dtype, shape, split, taken)
    ("float64", [-1, 2], {"columns": ["a", "b"], "data": [[1.0, 2.0], [3.0, 4.5]]}, True),
    ("float32", [-1, 2], {"data": [[1.0, 2.0]], "index": [7]}, True),
    ("int64", [-1, 2], {"columns": ["a", "b"], "data": [[1, 2]]}, True),
    ("float64", [-1, 2], {"columns": ["a", "b", "c"], "data": [[1.0, 2.0]]}, False),
    ("float64", [-1, 2], {"columns": ["a", "b"], "data": [[1.0, "x"]]}, False),
    ("float64", [-1, 1], {"columns": ["a"], "data": [[1.0], [2.0]]}, True),
    ("float64", [-1], {"columns": ["a"], "data": [[1.0], [2.0]]}, False),
    ("float64", [-1, 2], {"columns": ["a", "b"], "data": [[1.0, 2.0]], "extra": 1}, False),
    ("float64", [-1, 2, 2], {"data": [[[1.0, 2.0], [3.0, 4.0]]]}, False),
]


@pytest.mark.parametrize(("dtype", "shape", "split", "taken"), SPLITS)
def test_dataframe_split_of_plain_numbers_gives_what_the_general_path_gives(
    dtype: str, shape: list[int], split: dict[str, Any], taken: bool
) -> None:
    schema = InputSchema.from_signature(
        [{"type": "tensor", "tensor-spec": {"dtype": dtype, "shape": shape}}]
    )
    assert schema is not None
    fast = serving.plain_tensor(serving._tensor_payload("dataframe_split", split), schema)
    assert (fast is not None) == taken
    try:
        general = schema.from_envelope("dataframe_split", split)
    except InvalidArgument as exc:
        assert fast is None
        with pytest.raises(InvalidArgument) as caught:
            serving.from_invocation({"dataframe_split": split}, schema)
        assert str(caught.value) == str(exc)
        return
    out = serving.from_invocation({"dataframe_split": split}, schema)
    if general is FALLBACK:
        assert out is FALLBACK and fast is None
        return
    assert out.dtype == general.dtype and out.shape == general.shape
    assert np.array_equal(out, general)
