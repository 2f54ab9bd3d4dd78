"""A scikit-learn model without a signature given a table of one numeric dtype: fitted on
arrays, it gets that table's array (what scikit-learn would make of the frame, without its
~0.6 ms of frame checks per call); a single estimator fitted on a frame gets the array when the
table's names are the fitted ones in order (a copy of it without the names, through the method
MLflow's pyfunc calls); anything else gets the frame MLflow would give it."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

import tiffin
from tiffin.frameworks.mlflow.sklearn_arrays import array_predict

FEATURES = 6
NAMES = list("abcdef")
RNG = np.random.default_rng(1)
X = RNG.normal(size=(80, FEATURES))
Y = (X[:, 0] - X[:, 2] > 0).astype(int)
FRAME = pd.DataFrame(X, columns=NAMES)
CATEGORIES = FRAME.assign(a=pd.Categorical((X[:, 0] > 0).astype(int)))
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
        # a category column: its fitted preprocessor selects columns by name
        "categories": HistGradientBoostingClassifier(max_iter=5).fit(CATEGORIES, Y),
        "named_trees": HistGradientBoostingClassifier(max_iter=5).fit(FRAME, Y),
    }
    out = {}
    for name, model in models.items():
        mlflow.sklearn.save_model(model, str(root / name), serialization_format="cloudpickle")
        out[name] = root / name
    # MLflow's pyfunc answering predict_proba: the copy answers through the same method
    mlflow.sklearn.save_model(LogisticRegression().fit(FRAME, Y), str(root / "named_proba"),
                              serialization_format="cloudpickle",
                              pyfunc_predict_fn="predict_proba")  # fmt: skip
    out["named_proba"] = root / "named_proba"
    yield out


def test_only_scikit_learns_own_estimators_take_arrays(saved: dict[str, Path]) -> None:
    found = {}
    for name, path in saved.items():
        how = array_predict(mlflow.pyfunc.load_model(str(path)))
        found[name] = how if how is None else how[1]
    # arrays: any names; a frame-fitted single estimator: its own names, in order
    assert found == {"arrays": None, "named": tuple(NAMES), "function": None, "own_class": None,
                     "callable_object": None, "passthrough_first": None, "categories": None,
                     "named_trees": tuple(NAMES), "named_proba": tuple(NAMES)}  # fmt: skip
    assert array_predict(mlflow.pyfunc.load_model(str(saved["arrays"]))) is not None


def test_the_frame_fitted_estimator_keeps_its_names(saved: dict[str, Path]) -> None:
    """The array goes to a copy without ``feature_names_in_``; the model itself keeps them
    (a frame of other names still meets scikit-learn's check)."""
    pyfunc = mlflow.pyfunc.load_model(str(saved["named"]))
    how = array_predict(pyfunc)
    assert how is not None
    predict, names = how
    assert names == tuple(NAMES)
    assert list(pyfunc.get_raw_model().feature_names_in_) == NAMES
    assert predict(X[:3]).tolist() == pyfunc.predict(pd.DataFrame(X[:3], columns=NAMES)).tolist()
    with pytest.raises(ValueError, match="feature names"):
        pyfunc.predict(pd.DataFrame(X[:3], columns=NAMES[::-1]))


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


@pytest.mark.parametrize("kind", ["named", "named_trees", "named_proba"])
def test_a_table_of_the_fitted_names_answers_as_the_frame_does(
    saved: dict[str, Path], kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fitted names in order: the model is given the array, and the copy's answers are the
    frame's, to the last bit (the probabilities too), for floats and for ints; the names in
    another order: scikit-learn's own error, as for the frame."""
    import sklearn.utils.validation as validation

    from tiffin.runner.containers import Table

    checked = []  # what reached scikit-learn's check of names, by type
    original = validation._check_feature_names

    def spy(estimator: Any, X: Any, *, reset: bool) -> None:
        checked.append(type(X).__name__)
        original(estimator, X, reset=reset)

    monkeypatch.setattr(validation, "_check_feature_names", spy)
    pyfunc = mlflow.pyfunc.load_model(str(saved[kind]))
    for rows in (X[:9] * 1.7, np.rint(X[:9] * 5).astype("int64")):
        expected = pyfunc.predict(pd.DataFrame(rows, columns=NAMES))
        checked.clear()
        answer, said = _run(saved, kind, Table(tuple(NAMES), rows.copy()))
        assert checked and set(checked) == {"ndarray"}, checked
        assert np.asarray(answer).tolist() == np.asarray(expected).tolist()
        assert not [w for w in said if NAMES_WARNING in w], said
        columns = {name: rows[:, i].tolist() for i, name in enumerate(NAMES)}
        checked.clear()
        answer, said = _run(saved, kind, columns)  # a dict of columns: framed, then its array
        assert checked and set(checked) == {"ndarray"}, checked
        assert np.asarray(answer).tolist() == np.asarray(expected).tolist()
    with pytest.raises(Exception, match="feature names"):
        _run(saved, kind, Table(tuple(NAMES[::-1]), X[:3].copy()))
