"""Fetching an MLflow model: local paths and ``file://`` copied as they are, everything else
downloaded by MLflow's own artifact repositories into a directory on the store's filesystem.

On MLflow 3 a run-artifact URI that names a model logged in that run is fetched as
``runs:/<run_id>/<path>`` (see :func:`tiffin.store.uris.as_runs_uri`). Nothing is left
behind on failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tiffin.exceptions import ImportFailed, InvalidArgument, NotFound, missing_dependency
from tiffin.store.uris import (
    MLMODEL,
    as_runs_uri,
    bounded_http,
    local_path,
    one_line,
    run_artifact_parts,
    tracking_uri,
    wrap_error,
)

__all__ = ["Fetched", "ProgressCallback", "fetch"]

#: ``progress(done_bytes, total_bytes_or_None)``, called from a helper thread while fetching.
ProgressCallback = Callable[[int, int | None], None]


@dataclass(frozen=True)
class Fetched:
    """Where a model came from: the URI given, what was fetched, and the run if known."""

    uri: str
    resolved_uri: str
    run_id: str | None = None


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
            f"cannot import MLflow model {shown!r}: {one_line(str(exc))}"
        ) from exc
    try:
        MlflowClient().get_run(run_id)
    except MlflowException as exc:
        error = wrap_error(shown, exc)
        if isinstance(error, NotFound):
            error = NotFound(
                f"cannot import MLflow model {shown!r}: run {run_id!r} not found in tracking "
                f"store {tracking_uri()}; check the run id and MLFLOW_TRACKING_URI"
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
