"""A scikit-learn model without a signature, fitted on arrays: a frame of one numeric dtype
reaches it as that frame's array (what scikit-learn would make of it, without its ~1 ms of
frame checks per call); anything else reaches it as the frame MLflow would give it."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import tiffin
from tiffin.frameworks.mlflow.runnable import _sklearn_on_arrays

FEATURES = 6
NAMES = list("abcdef")
RNG = np.random.default_rng(1)
X = RNG.normal(size=(80, FEATURES))
Y = (X[:, 0] - X[:, 2] > 0).astype(int)
NAMES_WARNING = "feature names"  # scikit-learn's warning for a frame an array-fitted model gets


class OwnLogistic(LogisticRegression):
    """A user's own estimator class: it might read a frame's columns."""


def _halve(x: Any) -> Any:
    return x / 2


class Halver:
    """A callable object: a function in all but name."""

    def __call__(self, x: Any) -> Any:
        return x / 2


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    root = tmp_path_factory.mktemp("sklearn-arrays")
    models = {
        "arrays": make_pipeline(StandardScaler(), LogisticRegression()).fit(X, Y),
        "named": LogisticRegression().fit(pd.DataFrame(X, columns=NAMES), Y),
        "function": make_pipeline(FunctionTransformer(_halve), LogisticRegression()).fit(X, Y),
        "own_class": OwnLogistic().fit(X, Y),
        "callable_object": make_pipeline(FunctionTransformer(Halver()), LogisticRegression())
        .fit(X, Y),
        # a pipeline opening with "passthrough" has no feature_names_in_ of its own; its
        # model, fitted on the frame, has them
        "passthrough_first": Pipeline([("keep", "passthrough"), ("model", LogisticRegression())])
        .fit(pd.DataFrame(X, columns=NAMES), Y),
    }
    out = {}
    for name, model in models.items():
        mlflow.sklearn.save_model(model, str(root / name), serialization_format="cloudpickle")
        out[name] = root / name
    yield out


def test_only_scikit_learns_own_array_fitted_estimators_take_arrays(
    saved: dict[str, Path],
) -> None:
    found = {name: _sklearn_on_arrays(mlflow.pyfunc.load_model(str(path)))
             for name, path in saved.items()}  # fmt: skip
    assert found == {"arrays": True, "named": False, "function": False, "own_class": False,
                     "callable_object": False, "passthrough_first": False}  # fmt: skip


def _run(saved: dict[str, Path], kind: str, data: Any) -> tuple[Any, list[str]]:
    runner = tiffin.mlflow.get(tiffin.mlflow.import_model(kind, str(saved[kind])).tag).to_runner()
    runner.init_local()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            answer = runner.predict.run(data)
    finally:
        runner.destroy()
    return answer, [str(w.message) for w in caught]


@pytest.mark.parametrize("dtype", ["float64", "int64"])
def test_columns_of_one_dtype_reach_an_array_fitted_model_as_their_array(
    saved: dict[str, Path], dtype: str
) -> None:
    rows = (X[:5] * 3).astype(dtype)
    reference = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, Y)
    columns = {name: rows[:, i].tolist() for i, name in enumerate(NAMES)}
    answer, said = _run(saved, "arrays", columns)
    assert answer.tolist() == reference.predict(rows).tolist()
    assert not [w for w in said if NAMES_WARNING in w], said  # no frame reached the model


def test_mixed_columns_and_other_models_still_get_the_frame(saved: dict[str, Path]) -> None:
    reference = make_pipeline(StandardScaler(), LogisticRegression()).fit(X, Y)
    mixed = {name: X[:5, i].tolist() for i, name in enumerate(NAMES)}
    mixed["a"] = [1, 2, 3, 4, 5]  # an int column beside float ones: not one dtype
    answer, said = _run(saved, "arrays", mixed)
    frame = pd.DataFrame(mixed)
    assert answer.tolist() == reference.predict(frame.to_numpy()).tolist()
    assert [w for w in said if NAMES_WARNING in w], said  # the frame, as MLflow gives it
    own = OwnLogistic().fit(X, Y)
    columns = {name: X[:5, i].tolist() for i, name in enumerate(NAMES)}
    answer, said = _run(saved, "own_class", columns)
    assert answer.tolist() == own.predict(X[:5]).tolist()
    assert [w for w in said if NAMES_WARNING in w], said


@pytest.mark.parametrize("kind", ["arrays", "named", "own_class"])
def test_a_servers_table_of_one_dtype_answers_as_its_columns(
    saved: dict[str, Path], kind: str
) -> None:
    """What a server hands the runnable for an unsigned table of floats (one block) gets the
    answers the dict of columns gets: the array for an array-fitted model, else the frame."""
    from tiffin.runner.containers import Table

    rows = X[:7] * 2
    columns = {name: rows[:, i].tolist() for i, name in enumerate(NAMES)}
    table = Table(tuple(NAMES), rows.copy())
    from_table, said_table = _run(saved, kind, table)
    from_columns, said_columns = _run(saved, kind, columns)
    assert from_table.tolist() == from_columns.tolist()
    named = [w for w in said_table if NAMES_WARNING in w]
    assert bool(named) == bool([w for w in said_columns if NAMES_WARNING in w])
    assert bool(named) == (kind == "own_class")  # a frame reached an array-fitted model
