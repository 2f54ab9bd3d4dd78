"""The MLflow page's code, run as written with ``tiffin`` for ``bentoml`` (../shared/seed).

Only the MLflow side is adapted where MLflow 3 itself rejects the page's code, each marked
``# MLflow 3:``: ``input_example=`` for ``mlflow.pytorch.log_model`` (or
``serialization_format="pickle"``), ``run_id`` for the removed ``run_uuid``, no ``.eval()``
on a pt2 GraphModule, ``skops_trusted_types`` for tree models, and a real run id where the
page shows a placeholder. Every ``tiffin``
line is the page's line. These are end-to-end tests against a real ``mlflow server``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from click.testing import CliRunner

import tiffin
from tests.fixtures_mlflow import Server, fitted_classifier, iris_like
from tiffin.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("mlflow_env")]


def _cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


def _mnist_like() -> tuple[torch.nn.Module, np.ndarray]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()
    test_input_arr = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    return model, test_input_arr


# -- "Import an MLflow model" ------------------------------------------------------------------


def test_import_an_mlflow_model_from_a_local_path() -> None:
    model = fitted_classifier()

    mlflow.sklearn.save_model(model, "./my_model")
    tiffin.mlflow.import_model("my_sklearn_model", model_uri="./my_model")

    rows = json.loads(_cli("models", "list", "my_sklearn_model", "-o", "json"))
    assert [row["module"] for row in rows] == ["tiffin.mlflow"]
    X, _y = iris_like()
    pyfunc = tiffin.mlflow.load_model("my_sklearn_model:latest")
    np.testing.assert_array_equal(pyfunc.predict(X), model.predict(X))


@pytest.mark.parametrize("fmt", ["pt2", "pickle"])
def test_import_pytorch_model_in_a_run_then_load_it_both_ways(
    tracking_server: Server, fmt: str
) -> None:
    model, test_input_arr = _mnist_like()
    device = "cpu"
    with torch.no_grad():
        expected = model(torch.from_numpy(test_input_arr)).numpy()
    # MLflow 3: pt2 (the default format) needs an input example; or use the pickle format.
    adapt: dict = (
        {"input_example": test_input_arr} if fmt == "pt2" else {"serialization_format": "pickle"}
    )

    with mlflow.start_run():
        mlflow.pytorch.log_model(model, artifact_path="pytorch-model", **adapt)

        model_uri = mlflow.get_artifact_uri("pytorch-model")
        bento_model = tiffin.mlflow.import_model(
            'mlflow_pytorch_mnist',
            model_uri,
            signatures={'predict': {'batchable': True}}
        )

    # bentoml models list mlflow_pytorch_mnist
    listed = _cli("models", "list", "mlflow_pytorch_mnist")
    assert str(bento_model.tag) in listed

    # Loading original model flavor
    bento_model = tiffin.mlflow.get("mlflow_pytorch_mnist:latest")
    mlflow_model_path = bento_model.path_of(tiffin.mlflow.MLFLOW_MODEL_FOLDER)

    loaded_pytorch_model = mlflow.pytorch.load_model(mlflow_model_path)
    loaded_pytorch_model.to(device)
    if fmt == "pickle":  # MLflow 3: a pt2 GraphModule has no .eval()
        loaded_pytorch_model.eval()
    with torch.no_grad():
        input_tensor = torch.from_numpy(test_input_arr).to(device)
        predictions = loaded_pytorch_model(input_tensor)
    np.testing.assert_allclose(predictions.numpy(), expected, rtol=1e-5, atol=1e-6)

    # Loading Pyfunc flavor
    pyfunc_model: mlflow.pyfunc.PyFuncModel = tiffin.mlflow.load_model("mlflow_pytorch_mnist:latest")  # noqa: E501
    predictions = pyfunc_model.predict(test_input_arr)
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-6)
    assert bento_model.info.signatures["predict"]["batchable"] is True


# -- "MLflow 🤝 BentoML Workflow" ---------------------------------------------------------------


def test_workflow_1_model_uri_from_log_model_and_optimizations(
    tracking_server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    X, y = iris_like()
    lr = fitted_classifier()
    score = lr.score(X, y)
    mlflow.log_metric("score", score)  # from the example this snippet comes from

    logged_model = mlflow.sklearn.log_model(lr, "model")
    print("Model saved in run %s" % mlflow.active_run().info.run_id)  # noqa: UP031 (MLflow 3: run_id)

    # Import logged mlflow model to BentoML model store for serving:
    bento_model = tiffin.mlflow.import_model('logistic_regression_model', logged_model.model_uri)
    print("Model imported to BentoML: %s" % bento_model)  # noqa: UP031

    printed = capsys.readouterr().out
    assert "Model imported to BentoML: Model(tag='logistic_regression_model:" in printed
    assert bento_model.info.context["mlflow"]["model_id"] == logged_model.model_id
    np.testing.assert_array_equal(tiffin.mlflow.load_model(bento_model).predict(X), lr.predict(X))

    # "Optimizations": save the model directly, or load the original flavor and save it.
    clf = lr
    tiffin.sklearn.save_model("iris_clf", clf)
    loaded_model = mlflow.sklearn.load_model(logged_model.model_uri)
    tiffin.sklearn.save_model("iris_clf", loaded_model)
    assert len(tiffin.models.list("iris_clf")) == 2
    np.testing.assert_array_equal(tiffin.sklearn.load_model("iris_clf").predict(X), lr.predict(X))


def test_workflow_2_artifact_path_inside_the_run(tracking_server: Server) -> None:
    model, test_input_arr = _mnist_like()

    # https://github.com/bentoml/BentoML/tree/main/examples/mlflow/pytorch
    with mlflow.start_run():
        # MLflow 3: input_example for the pt2 format
        mlflow.pytorch.log_model(model, artifact_path="pytorch-model", input_example=test_input_arr)
        model_uri = mlflow.get_artifact_uri("pytorch-model")
        bento_model = tiffin.mlflow.import_model('mlflow_pytorch_mnist', model_uri)

    with torch.no_grad():
        expected = model(torch.from_numpy(test_input_arr)).numpy()
    predictions = tiffin.mlflow.load_model(bento_model.tag).predict(test_input_arr)
    np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-6)


def test_workflow_3_autolog(tracking_server: Server, capsys: pytest.CaptureFixture[str]) -> None:
    from sklearn.linear_model import LinearRegression

    try:
        # enable autologging
        mlflow.sklearn.autolog()

        # prepare training data
        X = np.array([[1, 1], [1, 2], [2, 2], [2, 3]])
        y = np.dot(X, np.array([1, 2])) + 3

        # train a model
        model = LinearRegression()
        model.fit(X, y)

        # import logged MLflow model to BentoML
        run_id = mlflow.last_active_run().info.run_id
        artifact_path = "model"
        model_uri = f"runs:/{run_id}/{artifact_path}"
        bento_model = tiffin.mlflow.import_model('logistic_regression_model', model_uri)
        print(f"Model imported to BentoML: {bento_model}")
    finally:
        mlflow.sklearn.autolog(disable=True)

    assert "Model imported to BentoML: Model(tag=" in capsys.readouterr().out
    assert bento_model.info.context["mlflow"]["run_id"] == run_id
    pyfunc = tiffin.mlflow.load_model(bento_model)
    np.testing.assert_allclose(pyfunc.predict(np.array([[3, 4]])), [14.0])


@pytest.mark.filterwarnings("ignore:.*transition_model_version_stage:FutureWarning")
def test_workflow_4_registered_model_by_version_and_stage(tracking_server: Server) -> None:
    from sklearn.datasets import make_regression
    from sklearn.ensemble import RandomForestRegressor

    # MLflow side (the MLflow registry docs): register version 1, move it to Staging.
    X, y = make_regression(n_features=4, n_informative=2, random_state=0, shuffle=False)
    with mlflow.start_run():
        forest = RandomForestRegressor(max_depth=2, random_state=42).fit(X, y)
        mlflow.sklearn.log_model(
            forest,
            name="sklearn-model",
            registered_model_name="sk-learn-random-forest-reg-model",
            skops_trusted_types=["sklearn.tree._tree.Tree"],  # MLflow 3: skops needs this
        )
    mlflow.MlflowClient().transition_model_version_stage(
        "sk-learn-random-forest-reg-model", "1", "Staging"
    )

    # Import from a version:
    model_name = "sk-learn-random-forest-reg-model"
    model_version = 1
    model_uri=f"models:/{model_name}/{model_version}"
    tiffin.mlflow.import_model('my_mlflow_model', model_uri)

    # Import from a stage:
    model_name = "sk-learn-random-forest-reg-model"
    stage = 'Staging'
    model_uri=f"models:/{model_name}/{stage}"
    tiffin.mlflow.import_model('my_mlflow_model', model_uri)

    imported = tiffin.models.list("my_mlflow_model")
    assert sorted(m.info.context["mlflow"]["source_uri"] for m in imported) == [
        "models:/sk-learn-random-forest-reg-model/1",
        "models:/sk-learn-random-forest-reg-model/Staging",
    ]
    pyfunc = tiffin.mlflow.load_model("my_mlflow_model:latest")
    np.testing.assert_allclose(pyfunc.predict(X[:5]), forest.predict(X[:5]))


# -- "Additional Tips" --------------------------------------------------------------------------


def test_attach_params_metrics_and_tags_and_dependency_files(tracking_server: Server) -> None:
    X, y = iris_like()
    clf = fitted_classifier()
    with mlflow.start_run() as logged_run:  # MLflow side: the run the page refers to
        mlflow.log_params({"C": 1.0, "max_iter": 200, "solver": "lbfgs"})
        mlflow.log_metrics({"accuracy": clf.score(X, y), "loss": 0.1 + 0.2, "tiny": 1e-12})
        mlflow.set_tags({"team": "ranking", "stage": "candidate"})
        mlflow.sklearn.log_model(clf, name="model")

    run_id = logged_run.info.run_id  # the page: run_id = '0e4425ecbf3e4672ba0c1741651bb47a'
    run = mlflow.get_run(run_id)
    model_uri = f"{run.info.artifact_uri}/model"
    tiffin.mlflow.import_model(
        "my_mlflow_model",
        model_uri,
        labels=run.data.tags,
        metadata={
            "metrics": run.data.metrics,
            "params": run.data.params,
        }
    )

    shown = json.loads(_cli("models", "get", "my_mlflow_model:latest", "-o", "json"))
    assert shown["labels"] == run.data.tags and shown["labels"]["team"] == "ranking"
    assert shown["metadata"]["params"] == {"C": "1.0", "max_iter": "200", "solver": "lbfgs"}
    assert shown["metadata"]["metrics"] == run.data.metrics
    assert shown["metadata"]["metrics"]["loss"] == 0.1 + 0.2
    assert math.isclose(shown["metadata"]["metrics"]["accuracy"], clf.score(X, y))

    # Use MLflow model dependencies config: export BENTOML_MLFLOW_MODEL_PATH=$(... -o path)
    path = Path(_cli("models", "get", "my_mlflow_model:latest", "-o", "path").strip())
    assert (path / "mlflow_model" / "requirements.txt").is_file()
    assert (path / "mlflow_model" / "conda.yaml").is_file()
