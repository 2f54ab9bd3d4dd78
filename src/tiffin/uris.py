"""MLflow model URIs → a local MLflow model directory.

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
import shutil
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tiffin.exceptions import (
    ImportFailed,
    InvalidArgument,
    NotFound,
    TiffinError,
    missing_dependency,
)

MLMODEL = "MLmodel"

#: ``progress(done_bytes, total_bytes_or_None)``, called from a helper thread while fetching.
ProgressCallback = Callable[[int, int | None], None]

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


@dataclass(frozen=True)
class Fetched:
    """Where a model came from: the URI given, what was fetched, and the run if known."""

    uri: str
    resolved_uri: str
    run_id: str | None = None


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


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _tracking_uri() -> str:
    import mlflow

    return str(mlflow.get_tracking_uri())


def wrap_error(uri: str, exc: BaseException, what: str = "") -> TiffinError:
    """A tiffin error for an MLflow/storage failure on ``uri`` (raise it ``from exc``)."""
    text = _one_line(str(exc)) or type(exc).__name__
    lowered = text.lower()
    code = str(getattr(exc, "error_code", "") or "")
    prefix = f"cannot import MLflow model {uri!r}: {what + ': ' if what else ''}"
    if any(hint in lowered for hint in _CONNECTION_HINTS) or isinstance(
        exc, ConnectionError | TimeoutError
    ):
        scheme = urllib.parse.urlparse(uri).scheme
        where = (
            f"the tracking server ({_tracking_uri()})"
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


# -- fetching ----------------------------------------------------------------------------------


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


@contextlib.contextmanager
def _watch(root: Path, total: int | None, progress: ProgressCallback | None) -> Iterator[None]:
    """Report the bytes under ``root`` to ``progress`` every 0.1 s while the block runs."""
    if progress is None:
        yield
        return
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.1):
            progress(_tree_size(root), total)

    thread = threading.Thread(target=poll, name="tiffin-fetch-progress", daemon=True)
    progress(0, total)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
    done = _tree_size(root)
    progress(done, done)


def _check_model_dir(path: Path, uri: str, shown: str) -> None:
    """``path`` must be a directory holding ``MLmodel``; ``shown`` names it in errors."""
    if not path.exists():
        raise NotFound(f"cannot import MLflow model {uri!r}: {shown} does not exist")
    if not path.is_dir():
        raise InvalidArgument(
            f"cannot import MLflow model {uri!r}: {shown} is a file, not an MLflow model "
            f"directory; pass the directory that holds the {MLMODEL} file"
        )
    if not (path / MLMODEL).is_file():
        raise InvalidArgument(
            f"cannot import MLflow model {uri!r}: {shown} is not an MLflow model directory "
            f"(it has no {MLMODEL} file); pass the directory that holds {MLMODEL}"
        )


def _download(uri: str, scratch: Path, shown: str) -> Path:
    """MLflow downloads ``uri`` into ``scratch``; the local path of what it fetched.

    ``shown`` is the URI the user gave, which errors name.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(scratch)))
    except MlflowException as exc:
        raise wrap_error(shown, exc) from exc
    except Exception as exc:  # storage clients (boto3, gcs, azure, ...) raise their own errors
        raise wrap_error(shown, exc) from exc


def _check_run(uri: str, shown: str) -> str:
    """For ``runs:/<id>/<path>``: the run id, after checking the tracking store knows it."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.runs_artifact_repo import RunsArtifactRepository
    from mlflow.tracking import MlflowClient

    try:
        run_id, _path = RunsArtifactRepository.parse_runs_uri(uri)
    except MlflowException as exc:
        raise InvalidArgument(
            f"cannot import MLflow model {shown!r}: {_one_line(str(exc))}"
        ) from exc
    try:
        MlflowClient().get_run(run_id)
    except MlflowException as exc:
        error = wrap_error(shown, exc)
        if isinstance(error, NotFound):
            error = NotFound(
                f"cannot import MLflow model {shown!r}: run {run_id!r} not found in tracking "
                f"store {_tracking_uri()}; check the run id and MLFLOW_TRACKING_URI"
            )
        raise error from exc
    return str(run_id)


def _logged_model_names(run_id: str) -> list[str]:
    """Names of the models logged in a run (for error messages; empty if unknown)."""
    try:
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        run = client.get_run(run_id)
        found = client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}'",
            max_results=50,
        )
        return sorted({str(m.name) for m in found})
    except Exception:
        return []


def _fetch_run(runs_uri: str, scratch: Path, shown: str) -> tuple[Path, str]:
    """Download a ``runs:/`` URI (run artifacts or a model logged in the run)."""
    run_id = _check_run(runs_uri, shown)
    try:
        return _download(runs_uri, scratch, shown), run_id
    except NotFound as exc:
        names = _logged_model_names(run_id)
        logged = f"; models logged in this run: {', '.join(names)}" if names else ""
        where = "that path" if shown == runs_uri else repr(runs_uri)
        raise NotFound(
            f"cannot import MLflow model {shown!r}: run {run_id} has no artifact or logged "
            f"model at {where}{logged}"
        ) from exc.__cause__


def _fetch_remote(uri: str, scratch: Path) -> tuple[Path, str, str | None]:
    """Download ``uri``; a run-artifact URI that names nothing is retried as ``runs:/``.

    Returns the downloaded path, the URI actually fetched and the run id when known.
    """
    if uri.startswith("runs:"):
        path, run_id = _fetch_run(uri, scratch, uri)
        return path, uri, run_id
    try:
        return _download(uri, scratch, uri), uri, None
    except NotFound:
        runs_uri = as_runs_uri(uri)
        if runs_uri is None:
            raise
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    path, run_id = _fetch_run(runs_uri, scratch, uri)
    return path, runs_uri, run_id


def fetch(
    uri: str,
    dst: Path,
    *,
    progress: ProgressCallback | None = None,
) -> Fetched:
    """Put the MLflow model directory that ``uri`` names at ``dst`` (which must not exist).

    ``dst``'s parent should be on the same filesystem as the final home of the model, so that
    downloaded files are moved, never copied twice.
    """
    source = local_path(uri)
    if source is not None and source.exists():
        _check_model_dir(source, uri, str(source))
        with _watch(dst.parent, _tree_size(source) if progress else None, progress):
            try:
                shutil.copytree(source, dst, symlinks=False)
            except (OSError, shutil.Error) as exc:
                raise ImportFailed(
                    f"cannot import MLflow model {uri!r}: copying {source} failed: {exc}"
                ) from exc
        return Fetched(uri, str(source))

    try:
        import mlflow  # noqa: F401
    except ImportError as exc:
        raise missing_dependency("mlflow", "mlflow") from exc
    runs_uri: str | None = None
    if source is not None:  # a local path that does not exist: maybe a run-artifact path
        with bounded_http():
            runs_uri = as_runs_uri(source.as_posix()) if run_artifact_parts(uri) else None
        if runs_uri is None:
            raise NotFound(f"cannot import MLflow model {uri!r}: {source} does not exist")

    scratch = dst.parent / f".fetch-{uuid.uuid4().hex}"
    scratch.mkdir()
    extra = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"} if progress else None
    try:
        with bounded_http(extra), _watch(dst.parent, None, progress):
            run_id: str | None
            if runs_uri is not None:
                path, run_id = _fetch_run(runs_uri, scratch, uri)
                resolved = runs_uri
            else:
                path, resolved, run_id = _fetch_remote(uri, scratch)
        _check_model_dir(path, uri, f"what {resolved!r} names")
        os.rename(path, dst)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return Fetched(uri, resolved, run_id)

