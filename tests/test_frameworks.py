"""One contract, checked for every framework module: tiffin.sklearn, tiffin.picklable_model and
tiffin.pytorch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

import tiffin
from tiffin import frameworks
from tiffin.exceptions import CorruptEntry, InvalidArgument, NotFound, TiffinError
from tiffin.store import models


class Threshold:
    """A plain picklable model with predict and predict_proba but no transform."""

    def __init__(self, cut: float) -> None:
        self.cut = cut

    def predict(self, rows: list[list[float]]) -> list[int]:
        return [int(row[0] > self.cut) for row in rows]

    def predict_proba(self, rows: list[list[float]]) -> list[list[float]]:
        return [[1.0 - p, float(p)] for p in self.predict(rows)]


def _torch_model() -> Any:
    import torch

    class ThresholdNet(torch.nn.Module):
        """A module whose forward is the Threshold's predict (a learned cut), plus
        predict_proba; defined here, so its architecture pickle holds its code by value."""

        def __init__(self, cut: float) -> None:
            super().__init__()
            self.cut = torch.nn.Parameter(torch.tensor([cut]))

        def forward(self, rows: torch.Tensor) -> torch.Tensor:
            return (rows[:, 0] > self.cut).long()

        def predict_proba(self, rows: torch.Tensor) -> torch.Tensor:
            p = self.forward(rows).float()
            return torch.stack([1.0 - p, p], dim=1)

    return ThresholdNet(1.5)


def _sklearn_model() -> Any:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    return LogisticRegression().fit(x, [0, 0, 1, 1])


def _as_list(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


@dataclass(frozen=True)
class Case:
    framework: str
    make: Callable[[], Any]
    rows: list[list[float]]
    #: the method saved when no signatures are given
    default_method: str = "predict"

    def call(self, obj: Any, method: str, rows: list[list[float]]) -> Any:
        """``obj.<method>(rows)`` as a list; a PyTorch module takes a tensor, and its
        ``forward`` and ``predict`` are the module itself."""
        if self.framework != "pytorch":
            return _as_list(getattr(obj, method)(rows))
        import torch

        fn = obj if method in ("forward", "predict") else getattr(obj, method)
        return _as_list(fn(torch.tensor(rows)))

    @property
    def module(self) -> ModuleType:
        return importlib.import_module(f"tiffin.frameworks.{self.framework}")

    @property
    def other(self) -> ModuleType:
        name = "picklable_model" if self.framework == "sklearn" else "sklearn"
        return importlib.import_module(f"tiffin.frameworks.{name}")


CASES = {
    "sklearn": Case("sklearn", _sklearn_model, [[0.2], [2.8]]),
    "picklable_model": Case("picklable_model", lambda: Threshold(1.5), [[0.2], [2.8]]),
    "pytorch": Case("pytorch", _torch_model, [[0.2], [2.8]], default_method="forward"),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]


def test_every_registered_framework_is_covered() -> None:
    assert set(frameworks.REGISTRY) >= set(CASES)
    for name in CASES:
        assert getattr(tiffin, name) is CASES[name].module


def test_framework_module_has_the_contract(case: Case) -> None:
    for function in ("save_model", "load_model", "get"):
        assert callable(getattr(case.module, function))
    assert f"tiffin.{case.framework}" == case.module.MODULE


def test_save_get_load_round_trip(case: Case) -> None:
    obj = case.make()
    model = case.module.save_model("clf", obj)
    assert isinstance(model, models.Model)
    assert model.tag.name == "clf" and model.tag.version
    assert model.info.module == f"tiffin.{case.framework}"
    method = case.default_method
    assert model.info.signatures == {method: {"batchable": False, "batch_dim": 0}}

    assert case.module.get("clf") == model
    assert case.module.get(model.tag) == model
    for ref in ("clf", "clf:latest", str(model.tag), model.tag, model):
        loaded = case.module.load_model(ref)
        assert type(loaded) is type(obj)
        assert case.call(loaded, method, case.rows) == case.call(obj, method, case.rows) == [0, 1]

    runner = model.to_runner()
    runner.init_local()
    try:
        assert _as_list(runner.methods[method].run(case.rows)) == [0, 1]
    finally:
        runner.destroy()


def test_declared_methods_are_recorded(case: Case) -> None:
    signatures = {"predict": {"batchable": True}, "predict_proba": {"batchable": True}}
    model = case.module.save_model("clf", case.make(), signatures=signatures)
    assert model.info.signatures == {
        "predict": {"batchable": True, "batch_dim": 0},
        "predict_proba": {"batchable": True, "batch_dim": 0},
    }
    stored = yaml.safe_load(Path(model.path_of("model.yaml")).read_text())
    assert stored["signatures"]["predict_proba"] == {"batchable": True, "batch_dim": 0}
    loaded = case.module.load_model("clf")
    probabilities = case.call(loaded, "predict_proba", case.rows)
    assert len(probabilities) == 2 and len(probabilities[0]) == 2


def test_an_absent_method_is_an_error_at_save_time(case: Case) -> None:
    with pytest.raises(InvalidArgument, match="'transform'") as info:
        case.module.save_model("clf", case.make(), signatures={"transform": {}})
    assert "has no such method" in str(info.value)
    assert models.scan() == ([], [])


def test_loading_with_the_wrong_framework_is_refused(case: Case) -> None:
    case.module.save_model("clf", case.make())
    for call in (case.other.load_model, case.other.get):
        with pytest.raises(InvalidArgument, match=f"saved with tiffin.{case.framework}") as info:
            call("clf")
        assert f"tiffin.{case.framework}.load_model" in str(info.value)


def test_unknown_tag(case: Case) -> None:
    with pytest.raises(NotFound):
        case.module.load_model("nosuch")
    with pytest.raises(NotFound):
        case.module.get("nosuch:v1")


def test_custom_objects_round_trip(case: Case) -> None:
    objects = {"labels": ["setosa", "versicolor"], "scale": lambda x: x * 10}
    case.module.save_model("clf", case.make(), custom_objects=objects)
    restored = case.module.get("clf").custom_objects
    assert restored["labels"] == ["setosa", "versicolor"]
    assert restored["scale"](2) == 20


def test_labels_and_metadata_round_trip(case: Case) -> None:
    labels = {"owner": "ml", "stage": "prod"}
    metadata = {"accuracy": 0.1 + 0.2, "params": {"c": 1.0, "layers": [3, 2]}, "note": None}
    model = case.module.save_model("clf", case.make(), labels=labels, metadata=metadata)
    again = case.module.get(model.tag)
    assert again.info.labels == labels
    assert again.info.metadata == metadata
    assert again.info.metadata["accuracy"] == 0.30000000000000004


def test_a_pickle_changed_after_save_is_refused(case: Case) -> None:
    model = case.module.save_model("clf", case.make())
    pickle_file = Path(model.path_of(model.info.options["file"]))
    replacement = case.make()
    replacement.tampered = True
    import cloudpickle

    pickle_file.write_bytes(cloudpickle.dumps(replacement))  # valid pickle, different bytes
    with pytest.raises(CorruptEntry, match="SHA-256"):
        case.module.load_model("clf")


def test_a_missing_or_unsafe_pickle_file_is_refused(case: Case) -> None:
    model = case.module.save_model("clf", case.make())
    yaml_file = Path(model.path_of("model.yaml"))
    data = yaml.safe_load(yaml_file.read_text())
    data["options"]["file"] = "../../elsewhere.pkl"
    yaml_file.write_text(yaml.safe_dump(data))
    with pytest.raises(CorruptEntry, match="unsafe"):
        case.module.load_model("clf")

    data["options"]["file"] = model.info.options["file"]
    yaml_file.write_text(yaml.safe_dump(data))
    Path(model.path_of(model.info.options["file"])).unlink()
    with pytest.raises(CorruptEntry, match="missing its file"):
        case.module.load_model("clf")


def test_unpicklable_objects_are_refused(case: Case) -> None:
    import threading

    obj = case.make()
    obj.lock = threading.Lock()
    with pytest.raises(InvalidArgument, match="cannot pickle"):
        case.module.save_model("clf", obj)
    assert models.scan() == ([], [])


def test_sklearn_refuses_objects_that_are_not_estimators() -> None:
    with pytest.raises(InvalidArgument, match="picklable_model"):
        tiffin.sklearn.save_model("clf", Threshold(1.0))
    assert models.scan() == ([], [])


def test_sklearn_records_its_version() -> None:
    import sklearn

    model = tiffin.sklearn.save_model("clf", _sklearn_model())
    versions = model.info.context["framework_versions"]
    assert versions == {"scikit-learn": sklearn.__version__}
    assert model.info.options["serialization"] == "cloudpickle"


def test_unknown_framework_module_is_refused() -> None:
    with pytest.raises(TiffinError, match=r"unknown framework module 'tiffin\.nosuch'"):
        frameworks.load("tiffin.nosuch")
    with (
        pytest.raises(TiffinError, match="unknown framework module"),
        models.create("clf", module="os"),
    ):
        pass
    assert models.scan() == ([], [])
