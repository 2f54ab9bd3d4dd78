"""Helpers the serving tests share (no tests here): real server processes on free loopback
ports, stopped by PID, and small MLflow models made on the spot."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import BIN, free_port, tiffin_exe

IRIS_COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


@dataclass
class ServerProcess:
    """A server we started: its process, base URL and log file."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logs = self.logs()
            if text in logs:
                return logs
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the server log:\n{self.logs()[-3000:]}")

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM to the process group we started (by its PID), then SIGKILL if it hangs."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        return self.proc.returncode


def server_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a server process: its own TIFFIN_HOME, no inherited TIFFIN_ or
    MLFLOW_ settings, this interpreter's bin first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIFFIN_", "MLFLOW_"))}
    env["TIFFIN_HOME"] = str(home)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTHONWARNINGS", None)
    env.update(extra)
    return env


def start_process(
    cmd: Sequence[str],
    *,
    url: str,
    cwd: Path,
    env: dict[str, str],
    log: Path,
    ready: str | None = "/readyz",
    timeout: float = 90.0,
) -> ServerProcess:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(cmd), stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
            start_new_session=True,
        )  # fmt: skip
    server = ServerProcess(proc, url, log)
    if ready is not None:
        try:
            wait_until(server, ready, timeout=timeout)
        except BaseException:
            server.stop()
            raise
    return server


def start_tiffin(
    args: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log: Path,
    ready: str | None = "/readyz",
    timeout: float = 90.0,
    port: int | None = None,
) -> ServerProcess:
    """``tiffin ARGS --host 127.0.0.1 --port FREE`` in its own process group."""
    return start_on_free_port(
        lambda chosen: [tiffin_exe(), *args, "--host", "127.0.0.1", "--port", str(chosen)],
        cwd=cwd, env=env, log=log, ready=ready, timeout=timeout, port=port,
    )  # fmt: skip


def start_on_free_port(
    command: Callable[[int], list[str]],
    *,
    cwd: Path,
    env: dict[str, str],
    log: Path,
    ready: str | None = "/readyz",
    timeout: float = 90.0,
    port: int | None = None,
) -> ServerProcess:
    """``command(port)`` on a free loopback port, in its own process group.

    A free port can be taken by someone else (a parallel test's server or client socket)
    before the server binds it: when the server says so, it starts again on another one
    (only with ``ready``: otherwise the caller watches the process itself)."""
    attempts = 5 if port is None and ready is not None else 1
    for attempt in range(1, attempts + 1):
        chosen = port or free_port()
        try:
            return start_process(
                command(chosen), url=f"http://127.0.0.1:{chosen}", cwd=cwd, env=env, log=log,
                ready=ready, timeout=timeout,
            )  # fmt: skip
        except RuntimeError as exc:
            if attempt == attempts or "address already in use" not in str(exc).lower():
                raise
    raise AssertionError("unreachable")


def wait_until(server: ServerProcess, path: str, *, status: int = 200, timeout: float = 90) -> None:
    """Poll ``path`` until it answers ``status``; fail with the log if the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(
                f"{server.proc.args} exited with {server.proc.returncode}:\n"
                + server.logs()[-4000:]
            )
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(server.url + path, timeout=2).status_code == status:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{server.url}{path} did not answer {status} in {timeout} s:\n"
                       + server.logs()[-4000:])


@contextlib.contextmanager
def running(server: ServerProcess) -> Iterator[ServerProcess]:
    try:
        yield server
    finally:
        server.stop()


# -- models ------------------------------------------------------------------------------------


def iris_frame() -> tuple[Any, Any]:
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True, as_frame=True)
    return X, y


def save_iris_model(path: Path, *, tensor: bool = False) -> Path:
    """A LogisticRegression on iris saved with ``mlflow.sklearn.save_model``: a column signature
    and an input example (or, with ``tensor``, a float64 tensor signature)."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    X, y = iris_frame()
    model = LogisticRegression(max_iter=500).fit(X.to_numpy(), y)
    if tensor:
        data = X.to_numpy()
        signature = infer_signature(data, model.predict(data))
        example = data[:2]
    else:
        signature = infer_signature(X, model.predict(X.to_numpy()))
        example = X.head(2)
    mlflow.sklearn.save_model(
        model, str(path), signature=signature, input_example=example,
        pip_requirements=["scikit-learn"],
    )  # fmt: skip
    return path


def python() -> str:
    return sys.executable


# -- in process ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def asgi_client(app: Any, *, ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on ``app`` with its lifespan running, once the runners have loaded
    (or failed to, with ``ready=False``)."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tiffin.test") as client:
            state = app.state.tiffin
            deadline = time.monotonic() + 30
            while not (state.ready or state.load_error) and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            assert state.ready is ready, state.load_error
            yield client


def store_at(home: Path) -> Any:
    """The model store under ``home`` (for module-scoped fixtures; tests get their own)."""
    from tiffin.models import MODEL_FILE
    from tiffin.store.versioned import Store

    return Store(home / "models", "model", MODEL_FILE)
