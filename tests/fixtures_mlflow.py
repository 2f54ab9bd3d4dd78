"""Fixtures for the MLflow tests: a real ``mlflow server`` and a real S3-compatible server.

Both servers are started once per test session (per xdist worker), bound to 127.0.0.1 on a
free port, and stopped by PID (their process group) at the end. Each test gets its own MLflow
state through ``mlflow_env``: a temporary working directory and an explicit tracking URI.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BIN = Path(sys.executable).parent
_MLFLOW_VARS = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_REGISTRY_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_RUN_ID",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
    "MLFLOW_ALLOW_FILE_STORE",
    "MLFLOW_S3_ENDPOINT_URL",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}:\n{tail}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(url, timeout=2) as response,
        ):
            if response.status < 500:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def _start(
    command: Callable[[int], list[str]], cwd: Path, log: Path, env: dict[str, str], ready: str,
    *, timeout: float,
) -> tuple[subprocess.Popen[bytes], str]:
    """``command(port)`` on a free loopback port in its own process group, ready; started
    again on another port when a parallel test took this one first."""
    for attempt in range(5):
        port = _free_port()
        with log.open("wb") as out:
            proc = subprocess.Popen(
                command(port), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                start_new_session=True,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            _wait_http(url + ready, proc, log, timeout=timeout)
            return proc, url
        except RuntimeError as exc:
            _stop(proc)
            if attempt == 4 or "address already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Stop the server we started: its own process group, by its PID."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # helpers it left behind (MLflow's job runner)


def _server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@dataclass(frozen=True)
class Server:
    url: str
    root: Path
    pid: int


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``mlflow server``: sqlite backend store, proxied local artifacts (mlflow-artifacts:/)."""
    root = tmp_path_factory.mktemp("mlflow-server")

    def command(port: int) -> list[str]:
        return [
            str(BIN / "mlflow"), "server",
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"),
            "--serve-artifacts",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
        ]  # fmt: skip

    # no background job runner: nothing here needs it, and it slows start and stop
    env = {**_server_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc, url = _start(command, root, root / "server.log", env, "/health", timeout=90)
    try:
        yield Server(url, root, proc.pid)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """moto's standalone S3-compatible server on loopback."""
    root = tmp_path_factory.mktemp("moto-server")
    proc, url = _start(
        lambda port: [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        root, root / "moto.log", _server_env(), "/moto-api/", timeout=60,
    )  # fmt: skip
    try:
        yield Server(url, root, proc.pid)
    finally:
        _stop(proc)


@pytest.fixture
def mlflow_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Per-test MLflow state: a fresh working directory, a tracking URI of its own (a sqlite
    file in it), no MLflow settings inherited from the environment; runs ended afterwards."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for var in _MLFLOW_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    yield work
    if "mlflow" in sys.modules:
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run()


@pytest.fixture
def tracking_server(
    mlflow_server: Server, mlflow_env: Path, monkeypatch: pytest.MonkeyPatch
) -> Server:
    """The session's mlflow server as this test's tracking URI."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    return mlflow_server


@dataclass(frozen=True)
class Bucket:
    name: str
    client: Any

    def upload_dir(self, local: Path, prefix: str) -> str:
        for path in sorted(local.rglob("*")):
            if path.is_file():
                key = f"{prefix}/{path.relative_to(local).as_posix()}"
                self.client.upload_file(str(path), self.name, key)
        return f"s3://{self.name}/{prefix}"


@pytest.fixture
def s3_bucket(
    moto_server: Server, mlflow_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Bucket:
    """A fresh bucket on the moto server, and the environment MLflow's S3 client reads."""
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", moto_server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    import boto3

    client = boto3.client("s3", endpoint_url=moto_server.url, region_name="us-east-1")
    name = f"tiffin-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return Bucket(name, client)


# -- helpers for the tests (plain functions) --------------------------------------------------


def iris_like() -> tuple[Any, Any]:
    """A small classification data set: 4 features, 3 classes."""
    import numpy as np

    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 4))
    y = (X[:, 0] > 0).astype(int) + (X[:, 1] > 0.5).astype(int)
    return X, y


def fitted_classifier() -> Any:
    from sklearn.linear_model import LogisticRegression

    X, y = iris_like()
    return LogisticRegression(max_iter=200).fit(X, y)


def save_sklearn(path: Path, model: Any | None = None, **kwargs: Any) -> Path:
    """``mlflow.sklearn.save_model`` without requirement inference (which takes seconds)."""
    import mlflow

    model = model if model is not None else fitted_classifier()
    kwargs.setdefault("pip_requirements", ["scikit-learn", "numpy"])
    mlflow.sklearn.save_model(model, str(path), **kwargs)
    return path


def log_sklearn(name: str = "model", model: Any | None = None, **kwargs: Any) -> Any:
    """``mlflow.sklearn.log_model`` in the active run (fast: explicit pip requirements)."""
    import mlflow

    model = model if model is not None else fitted_classifier()
    kwargs.setdefault("pip_requirements", ["scikit-learn", "numpy"])
    return mlflow.sklearn.log_model(model, name=name, **kwargs)


def store_is_empty(home: Path) -> bool:
    """No model and no leftover staging directory in the store under ``home``."""
    root = home / "models"
    if not root.exists():
        return True
    leftovers = [p for p in root.iterdir() if not p.name.startswith(".")]
    staging = list((root / ".tmp").iterdir()) if (root / ".tmp").exists() else []
    return not leftovers and not staging
