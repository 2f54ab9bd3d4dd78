"""MLflow model URIs: what kind each is, MLflow's HTTP bounds, and MLflow's errors as tiffin's.

Local paths and ``file://`` URIs are copied as they are. Everything else (``runs:/``,
``models:/``, ``mlflow-artifacts:/``, ``s3://``, ``gs://``, ...) is resolved and downloaded by
MLflow's own artifact repositories; tiffin adds three things around them:

* MLflow's HTTP timeout and retries are bounded while tiffin talks to a tracking server, so a
  server that is down fails in seconds instead of minutes (unless the user set them);
* on MLflow 3 a *run-artifact* URI that names a model logged in that run
  (``mlflow.get_artifact_uri("model")``, ``f"{run.info.artifact_uri}/model"``) is read as
  ``runs:/<run_id>/model``, which MLflow resolves to the logged model;
* MLflow's errors become tiffin errors that name the URI and the cause, the original kept as
  ``__cause__``.

Nothing here imports MLflow at module import time.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tiffin.exceptions import ImportFailed, InvalidArgument, NotFound, TiffinError

__all__ = [
    "HTTP_BOUNDS",
    "MLMODEL",
    "as_runs_uri",
    "bounded_http",
    "local_path",
    "one_line",
    "run_artifact_parts",
    "tracking_uri",
    "wrap_error",
]

MLMODEL = "MLmodel"


#: MLflow's HTTP settings and the bounds tiffin applies while importing when they are unset.
#: Worst case against a host that never answers: 3 attempts x 7 s + backoff (0 s, 2 s) and up
#: to 1 s jitter each, so about 25 s; a refused connection fails in about 3 s.
HTTP_BOUNDS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "7",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}

# A run's artifact root ends in ".../<32 hex run id>/artifacts" in every MLflow store.
_RUN_ARTIFACT_RE = re.compile(r"(?:^|[/:])([0-9a-f]{32})/artifacts/(.+?)/*$")
_CONNECTION_HINTS = (
    "max retries exceeded",
    "failed to establish a new connection",
    "connection refused",
    "connection aborted",
    "timed out",
    "name or service not known",
    "could not connect",
    "connecttimeout",
    "readtimeout",
)
_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "ENDPOINT_NOT_FOUND"}
_NOT_FOUND_HINTS = (
    "not found",
    "does not exist",
    "no such",
    "nosuchkey",
    "nosuchbucket",
    "(404)",
    "404 client error",
)


# -- MLflow's HTTP bounds ----------------------------------------------------------------------

_bounds_lock = threading.Lock()
_bounds_users = 0
_bounds_added: dict[str, str] = {}


@contextlib.contextmanager
def bounded_http(extra: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Set :data:`HTTP_BOUNDS` (and ``extra``) in the environment where the user has not.

    MLflow reads these variables on every request, so setting them for the duration of an
    import is enough. Yields the variables tiffin set; they are removed again when the last
    concurrent import leaves.
    """
    global _bounds_users
    wanted = {**HTTP_BOUNDS, **(extra or {})}
    with _bounds_lock:
        added = {k: v for k, v in wanted.items() if k not in os.environ}
        os.environ.update(added)
        _bounds_added.update(added)
        _bounds_users += 1
    try:
        yield added
    finally:
        with _bounds_lock:
            _bounds_users -= 1
            if _bounds_users == 0:
                for key, value in _bounds_added.items():
                    if os.environ.get(key) == value:
                        del os.environ[key]
                _bounds_added.clear()


# -- errors ------------------------------------------------------------------------------------


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def tracking_uri() -> str:
    import mlflow

    return str(mlflow.get_tracking_uri())


def wrap_error(uri: str, exc: BaseException, what: str = "") -> TiffinError:
    """A tiffin error for an MLflow/storage failure on ``uri`` (raise it ``from exc``)."""
    text = one_line(str(exc)) or type(exc).__name__
    lowered = text.lower()
    code = str(getattr(exc, "error_code", "") or "")
    prefix = f"cannot import MLflow model {uri!r}: {what + ': ' if what else ''}"
    if any(hint in lowered for hint in _CONNECTION_HINTS) or isinstance(
        exc, ConnectionError | TimeoutError
    ):
        scheme = urllib.parse.urlparse(uri).scheme
        where = (
            f"the tracking server ({tracking_uri()})"
            if scheme in ("runs", "models", "mlflow-artifacts", "")
            else "the server"
        )
        return ImportFailed(
            f"{prefix}{text}; is {where} reachable? (tiffin bounds MLflow's HTTP timeout and "
            "retries unless MLFLOW_HTTP_REQUEST_TIMEOUT / MLFLOW_HTTP_REQUEST_MAX_RETRIES "
            "are set)"
        )
    if (
        code in _NOT_FOUND_CODES
        or any(hint in lowered for hint in _NOT_FOUND_HINTS)
        or re.search(r"\bno versions? of\b.*\bfound\b", lowered)
    ):
        return NotFound(f"{prefix}{text}")
    if code in {"INVALID_PARAMETER_VALUE", "BAD_REQUEST"}:
        return InvalidArgument(f"{prefix}{text}")
    return ImportFailed(f"{prefix}{text}")


# -- classifying URIs --------------------------------------------------------------------------


def local_path(uri: str) -> Path | None:
    """The local path ``uri`` names (a plain path or ``file:``), or None for remote URIs."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and os.name == "nt"):
        return Path(uri).expanduser().absolute()
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise InvalidArgument(
                f"cannot import MLflow model {uri!r}: file URIs with a host "
                f"({parsed.netloc!r}) are not supported; use file:///absolute/path"
            )
        return Path(urllib.request.url2pathname(parsed.path)).expanduser().absolute()
    return None


def run_artifact_parts(uri: str) -> tuple[str, str] | None:
    """``(run_id, path)`` when ``uri`` looks like ``<run artifact root>/<path>``."""
    if uri.startswith(("runs:", "models:")):
        return None
    match = _RUN_ARTIFACT_RE.search(uri)
    return (match.group(1), match.group(2)) if match else None


def as_runs_uri(uri: str) -> str | None:
    """``runs:/<run_id>/<path>`` for a run-artifact URI of a run the tracking store knows.

    On MLflow 3, ``log_model`` stores models outside the run's artifacts, so
    ``mlflow.get_artifact_uri("model")`` names nothing; ``runs:/`` finds the logged model.
    """
    parts = run_artifact_parts(uri)
    if parts is None:
        return None
    run_id, path = parts
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as exc:
        error = wrap_error(uri, exc, f"looking up run {run_id}")
        if isinstance(error, NotFound):
            return None
        raise error from exc
    if not str(run.info.artifact_uri).rstrip("/").endswith(f"{run_id}/artifacts"):
        return None
    return f"runs:/{run_id}/{path}"
