"""tiffin.mlflow against real tracking stores: an `mlflow server` (sqlite + proxied artifacts),
the file store, and a sqlite store without a server."""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

import tiffin
from tests.fixtures_mlflow import Server, fitted_classifier, iris_like, log_sklearn, store_is_empty
from tiffin.exceptions import ImportFailed, NotFound


def _predicts_like_the_original(model: tiffin.models.Model) -> None:
    X, _y = iris_like()
    pyfunc = tiffin.mlflow.load_model(model)
    np.testing.assert_array_equal(pyfunc.predict(X), fitted_classifier().predict(X))


@dataclass(frozen=True)
class Logged:
    run_id: str
    info: Any  # mlflow.models.model.ModelInfo
    registered_name: str


@pytest.fixture
def logged(tracking_server: Server) -> Logged:
    """A run on the server with a logged sklearn model, registered as version 1."""
    name = f"reg-{uuid.uuid4().hex[:8]}"
    with mlflow.start_run() as run:
        info = log_sklearn("model", registered_model_name=name)
    return Logged(run.info.run_id, info, name)


# -- runs:/ and run-artifact URIs -----------------------------------------------------------------


def test_runs_uri_on_tracking_server(logged: Logged) -> None:
    run_id, info = logged.run_id, logged.info
    model = tiffin.mlflow.import_model("from_run", f"runs:/{run_id}/model")
    facts = model.info.context["mlflow"]
    assert facts["run_id"] == run_id
    assert facts["model_id"] == info.model_id
    assert facts["source_uri"] == f"runs:/{run_id}/model"
    _predicts_like_the_original(model)


def test_run_artifact_uris_resolve_to_the_logged_model(tracking_server: Server) -> None:
    with mlflow.start_run() as run:
        info = log_sklearn("model")
        inside = mlflow.get_artifact_uri("model")
    assert inside.startswith("mlflow-artifacts:/")  # proxied artifacts, as on a team server
    outside = f"{mlflow.get_run(run.info.run_id).info.artifact_uri}/model"
    for uri in (inside, outside):
        model = tiffin.mlflow.import_model("from_artifact_uri", uri)
        facts = model.info.context["mlflow"]
        assert facts["source_uri"] == uri
        assert facts["resolved_uri"] == f"runs:/{run.info.run_id}/model"
        assert facts["model_id"] == info.model_id
        _predicts_like_the_original(model)


def test_plain_run_artifacts_still_import(tracking_server: Server, tmp_path: Path) -> None:
    """A model directory logged as ordinary run artifacts (as MLflow 2 stored models)."""
    from tests.fixtures_mlflow import save_sklearn

    local = save_sklearn(tmp_path / "as_artifacts")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(local), artifact_path="exported")
    for uri in (f"runs:/{run.info.run_id}/exported", f"{run.info.artifact_uri}/exported"):
        model = tiffin.mlflow.import_model("artifacts", uri)
        assert model.info.context["mlflow"]["resolved_uri"] == uri
        _predicts_like_the_original(model)


# -- models:/ -------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:.*transition_model_version_stage:FutureWarning")
def test_models_uris_by_version_stage_alias_latest_and_id(logged: Logged) -> None:
    run_id, info, reg_name = logged.run_id, logged.info, logged.registered_name
    client = MlflowClient()
    client.transition_model_version_stage(reg_name, "1", "Staging")
    client.set_registered_model_alias(reg_name, "champion", "1")
    uris = [
        f"models:/{reg_name}/1",
        f"models:/{reg_name}/Staging",
        f"models:/{reg_name}@champion",
        f"models:/{reg_name}/latest",
        info.model_uri,
    ]
    assert info.model_uri.startswith("models:/m-")
    for uri in uris:
        model = tiffin.mlflow.import_model("registered", uri)
        facts = model.info.context["mlflow"]
        assert facts["source_uri"] == uri
        assert facts["run_id"] == run_id and facts["model_id"] == info.model_id, uri
    _predicts_like_the_original(model)
    assert len(tiffin.models.list("registered")) == len(uris)


# -- bad input ------------------------------------------------------------------------------------


def _fails(uri: str, error: type[Exception], *words: str) -> Exception:
    with pytest.raises(error) as err:
        tiffin.mlflow.import_model("broken", uri)
    message = str(err.value)
    assert repr(uri) in message, message
    for word in words:
        assert word in message, message
    assert isinstance(err.value.__cause__, MlflowException), repr(err.value.__cause__)
    return err.value


def test_unknown_run_id(tracking_server: Server, tiffin_home: Path) -> None:
    run_id = uuid.uuid4().hex
    _fails(f"runs:/{run_id}/model", NotFound, f"run {run_id!r} not found", tracking_server.url)
    assert store_is_empty(tiffin_home)


def test_known_run_wrong_path(logged: Logged, tiffin_home: Path) -> None:
    _fails(
        f"runs:/{logged.run_id}/nomodel",
        NotFound,
        "no artifact or logged model",
        "models logged in this run: model",
    )
    assert store_is_empty(tiffin_home)


@pytest.mark.parametrize(
    ("suffix", "words"),
    [
        ("/1", ["Registered Model", "not found"]),
        ("@champion", ["not found"]),
        ("/Staging", ["not found"]),
    ],
)
def test_unknown_registered_model(
    tracking_server: Server, tiffin_home: Path, suffix: str, words: list[str]
) -> None:
    _fails(f"models:/no-such-model-{uuid.uuid4().hex[:6]}{suffix}", NotFound, *words)
    assert store_is_empty(tiffin_home)


@pytest.mark.parametrize(
    ("suffix", "words"),
    [
        ("/99", ["version=99", "not found"]),
        ("/Production", ["stage 'Production'"]),
        ("@nosuchalias", ["alias nosuchalias not found"]),
    ],
)
def test_unknown_version_stage_or_alias(
    logged: Logged, tiffin_home: Path, suffix: str, words: list[str]
) -> None:
    _fails(f"models:/{logged.registered_name}{suffix}", NotFound, *words)
    assert store_is_empty(tiffin_home)


def test_unknown_logged_model_id(tracking_server: Server, tiffin_home: Path) -> None:
    _fails(f"models:/m-{uuid.uuid4().hex}", NotFound, "not found")
    assert store_is_empty(tiffin_home)


def test_tracking_server_down_fails_fast(
    mlflow_env: Path, monkeypatch: pytest.MonkeyPatch, tiffin_home: Path
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    for uri in (f"runs:/{uuid.uuid4().hex}/model", "models:/some-model/1"):
        started = time.monotonic()
        error = _fails(uri, ImportFailed, "reachable", url)
        assert time.monotonic() - started < 30, error
    assert store_is_empty(tiffin_home)


def test_user_http_settings_are_respected(
    mlflow_env: Path, monkeypatch: pytest.MonkeyPatch, tiffin_home: Path
) -> None:
    """A server that accepts connections but never answers: MLflow's own timeout (set by the
    user, shorter than tiffin's bound) decides how long the import waits."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        started = time.monotonic()
        # the user's 1 s read timeout, not tiffin's own bound (7 s per attempt) ...
        _fails("models:/some-model/1", ImportFailed, "timed out", "read timeout=1)")
        elapsed = time.monotonic() - started
        # ... and no retries: one connection (tiffin's own bound retries twice)
        silent.setblocking(False)
        attempts = 0
        with contextlib.suppress(BlockingIOError):
            while True:
                silent.accept()[0].close()
                attempts += 1
    assert attempts == 1, attempts
    assert elapsed < 30, elapsed  # a generous bound: a slow machine is no failure
    assert store_is_empty(tiffin_home)


# -- other tracking stores ------------------------------------------------------------------------


def test_file_store(mlflow_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    with mlflow.start_run() as run:
        info = log_sklearn("model")
        artifact_uri = mlflow.get_artifact_uri("model")
    assert artifact_uri.startswith("file://")
    for uri in (f"runs:/{run.info.run_id}/model", artifact_uri, info.model_uri):
        model = tiffin.mlflow.import_model("file_store", uri)
        assert model.info.context["mlflow"]["model_id"] == info.model_id
        _predicts_like_the_original(model)
    with pytest.raises(NotFound, match="not found"):
        tiffin.mlflow.import_model("file_store", f"runs:/{uuid.uuid4().hex}/model")


def test_sqlite_store_without_server(
    mlflow_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'local.db'}")
    with mlflow.start_run() as run:
        info = log_sklearn("model")
        artifact_uri = mlflow.get_artifact_uri("model")
    assert artifact_uri.startswith(str(mlflow_env))  # a plain path under ./mlruns
    for uri in (f"runs:/{run.info.run_id}/model", artifact_uri):
        model = tiffin.mlflow.import_model("sqlite_store", uri)
        assert model.info.context["mlflow"]["resolved_uri"] == f"runs:/{run.info.run_id}/model"
        assert model.info.context["mlflow"]["model_id"] == info.model_id
        _predicts_like_the_original(model)
    missing = artifact_uri.replace("/artifacts/model", "/artifacts/other")
    with pytest.raises(NotFound, match="no artifact or logged model") as err:
        tiffin.mlflow.import_model("sqlite_store", missing)
    assert repr(missing) in str(err.value)
