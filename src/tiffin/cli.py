"""The ``tiffin`` command line. Subcommands import what they need when they run."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from tiffin import cli_remote
from tiffin._version import __version__
from tiffin.exceptions import TiffinError

__all__ = ["main"]


class _Group(click.Group):
    """The root group: a TiffinError becomes one line on stderr and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TiffinError as exc:
            click.echo(f"tiffin: error: {exc}", err=True)
            ctx.exit(exc.exit_code)


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def echo_table(headers: list[str], rows: list[list[str]]) -> None:
    """Left-aligned columns two spaces apart, header in bold on a terminal.

    Written out rather than drawn with rich: rendering a rich Table of a few hundred rows
    (plus importing rich) was most of the time `tiffin models list` took.
    """
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    click.echo(click.style(line(headers), bold=True))
    for row in rows:
        click.echo(line(row))


def emit(data: Any, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        import yaml

        click.echo(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), nl=False)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="tiffin")
def main() -> None:
    """tiffin: store, run and serve MLflow, scikit-learn and PyTorch models."""


@main.group()
def models() -> None:
    """Manage the local model store ($TIFFIN_HOME/models)."""


_OUTPUT_LIST = click.Choice(["table", "json", "yaml"])


@models.command("list")
@click.argument("name", required=False)
@click.option("-o", "--output", type=_OUTPUT_LIST, default="table", show_default=True)
def models_list(name: str | None, output: str) -> None:
    """List models, newest first (optionally only NAME's versions)."""
    from tiffin.store import models as store_models

    found, broken = store_models.scan(name)
    if output == "table":
        echo_table(
            ["Tag", "Module", "Size", "Creation Time"],
            [
                [
                    str(m.tag),
                    m.info.module,
                    human_size(m.size_bytes()),
                    m.creation_time.strftime("%Y-%m-%d %H:%M:%S"),
                ]
                for m in found
            ],
        )
    else:
        rows = [
            {
                "tag": str(m.tag),
                "module": m.info.module,
                "size_bytes": m.size_bytes(),
                "creation_time": m.creation_time.isoformat(),
                "labels": m.info.labels,
            }
            for m in found
        ]
        emit(rows, output)
    for entry in broken:
        click.echo(f"tiffin: warning: broken entry {entry.tag}: {entry.error}", err=True)


@models.command("get")
@click.argument("tag")
@click.option(
    "-o", "--output", type=click.Choice(["yaml", "json", "path"]), default="yaml", show_default=True
)
def models_get(tag: str, output: str) -> None:
    """Show one model's model.yaml, or its directory with -o path."""
    from tiffin.store import models as store_models

    model = store_models.get(tag)
    if output == "path":
        click.echo(model.path)
        return
    emit({"tag": str(model.tag), "path": model.path, **model.info.to_dict()}, output)


@models.command("delete")
@click.argument("tag")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def models_delete(tag: str, yes: bool) -> None:
    """Delete one model version."""
    from tiffin.store import models as store_models

    model = store_models.get(tag)
    if not yes and not click.confirm(f"Delete model '{model.tag}'?", err=True):
        click.echo("tiffin: nothing deleted", err=True)
        sys.exit(1)
    store_models.delete(model.tag)
    click.echo(f"deleted model '{model.tag}'")


@models.command("export")
@click.argument("tag")
@click.argument("path", type=click.Path())
def models_export(tag: str, path: str) -> None:
    """Write a model to one .tiffinmodel archive (PATH is a file or a directory)."""
    from tiffin.store.archive import export_model

    click.echo(export_model(tag, path))


@models.command("import")
@click.argument("path", type=click.Path())
def models_import(path: str) -> None:
    """Add a model from a .tiffinmodel archive."""
    from tiffin.store.archive import import_model

    model = import_model(path)
    click.echo(f"imported model '{model.tag}'")


@models.command("import-mlflow")
@click.argument("name")
@click.argument("model_uri")
@click.option("--label", "labels", multiple=True, metavar="KEY=VALUE",
              help="A label to attach (repeatable).")
@click.option("--batchable", is_flag=True, help="Allow adaptive batching of predict calls.")
@click.option("--flavor", default=None, metavar="FLAVOR",
              help="How to run it: pyfunc (default), native, or a flavor: sklearn, pytorch.")
def models_import_mlflow(
    name: str, model_uri: str, labels: tuple[str, ...], batchable: bool, flavor: str | None
) -> None:
    """Import an MLflow model: a path, runs:/, models:/, s3://, or any MLflow model URI."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    from tiffin.frameworks import mlflow as tiffin_mlflow

    parsed: dict[str, str] = {}
    for item in labels:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--label")
        parsed[key] = value
    # The progress bar appears (on stderr) once an artifact passes 1 MiB; small ones stay quiet.
    progress = Progress(
        TextColumn("importing {task.description}"), BarColumn(), DownloadColumn(binary_units=True),
        TimeElapsedColumn(), console=Console(stderr=True),
    )
    task = progress.add_task(model_uri if len(model_uri) <= 32 else "…" + model_uri[-31:])

    def show(done: int, total: int | None) -> None:
        if not progress.live.is_started and max(done, total or 0) >= 1 << 20:
            progress.start()
        progress.update(task, completed=done, total=total)

    try:
        model = tiffin_mlflow.import_model(
            name,
            model_uri,
            signatures={"predict": {"batchable": batchable}},
            labels=parsed,
            flavor=flavor,
            progress=show,
        )
    finally:
        if progress.live.is_started:
            progress.stop()
    click.echo(f"imported model '{model.tag}'")


@models.command("predict")
@click.argument("tag")
@click.option("--method", "-m", default="predict", show_default=True)
@click.option("--input", "-i", "input_path", required=True, type=click.Path(dir_okay=False),
              help="A .json, .csv, .npy or .parquet file.")
@click.option("-o", "--output", type=click.Choice(["json", "csv"]), default="json",
              show_default=True)
def models_predict(tag: str, method: str, input_path: str, output: str) -> None:
    """Run a stored model once on a file's data, like `mlflow models predict`."""
    from tiffin.exceptions import InvalidArgument, PredictFailed
    from tiffin.io import payloads as inputs
    from tiffin.store import models as store_models

    model = store_models.get(tag)
    payload = inputs.read_file(input_path)
    runner = model.to_runner()
    if method not in runner.methods:
        raise InvalidArgument(
            f"model '{model.tag}' has no method {method!r}; it has {sorted(runner.methods)}"
        )
    runner.init_local()
    try:
        result = runner.methods[method].run(payload)
    except TiffinError:
        raise
    except Exception as exc:
        raise PredictFailed(
            f"model '{model.tag}' {method} failed on {input_path}: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        runner.destroy()
    if output == "csv":
        click.echo(inputs.to_csv(result), nl=False)
    else:
        click.echo(json.dumps({"predictions": inputs.to_jsonable(result)}))


def _serve_options(func: Any) -> Any:
    options = [
        click.option("--host", default=None, help="Bind address [default: 127.0.0.1]."),
        click.option("--port", type=int, default=None, help="Port [default: 3000]."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
                     help="YAML settings file (or TIFFIN_CONFIG)."),
        click.option("--max-body-size", type=int, default=None,
                     help="Largest request body in bytes; 413 above it [default: 64 MiB]."),
        click.option("--api-timeout", "api_timeout_s", type=float, default=None,
                     help="Seconds per request before a 504 [default: 60]."),
        click.option("--log-level", default=None,
                     type=click.Choice(["debug", "info", "warning", "error", "critical"])),
        click.option("--workers", type=click.IntRange(1, 64), default=None,
                     help="API worker processes sharing runner processes [default: 1, "
                          "runners in-process]."),
        click.option("--api-key", default=None, metavar="KEY",
                     help="Require 'Authorization: Bearer KEY' on API routes (or "
                          "TIFFIN_API_KEY)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _settings(config_file: str | None, **overrides: Any) -> Any:
    from tiffin.config import load_settings

    return load_settings(config_file, overrides)


@main.command()
@click.argument("target")
@_serve_options
@click.option("--reload", is_flag=True, help="Restart when source files change (development).")
@click.option("--service", "force", flag_value="service", default=None,
              help="TARGET is a service (module:attr or path/to/file.py:attr).")
@click.option("--tiffin", "force", flag_value="tiffin",
              help="TARGET is a built tiffin's tag (NAME[:VERSION]).")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="ray: deploy on a Ray cluster with Ray Serve (tiffin[ray]).")
@click.option("--address", default=None, metavar="ADDR",
              help="--backend ray: the Ray cluster [default: RAY_ADDRESS, one on this machine, "
                   "or a new local one].")
@click.option("--direct-port", type=click.IntRange(1, 65535), default=None, metavar="PORT",
              help="--backend ray: each ingress replica also serves HTTP on this port of its "
                   "node (at ray.direct_host, 127.0.0.1 unless set), past Serve's proxy.")
def serve(
    target: str, config_file: str | None, reload: bool, force: str | None, backend: str,
    address: str | None, direct_port: int | None, **overrides: Any,
) -> None:  # fmt: skip
    """Serve a service (module:attr, path/to/file.py:attr) or a built tiffin (NAME[:VERSION]).

    A .py path, or an importable module with that attribute, is a service; anything else is a
    built tiffin's tag. --service / --tiffin say which.
    """
    from tiffin.process.targets import resolve_target

    if direct_port is not None:
        if backend != "ray":
            raise click.UsageError("--direct-port needs --backend ray")
        overrides["ray"] = {"direct_port": direct_port}
    settings = _settings(config_file, **overrides)
    if backend == "ray":
        if reload or settings.runner_processes:
            raise click.UsageError(
                "--backend ray scales by Ray replicas: drop --reload/--workers"
            )
        from tiffin.ray.cluster import serve_on_ray

        serve_on_ray(target, settings, address, force=force)  # type: ignore[arg-type]
        return
    if address is not None:
        raise click.UsageError("--address needs --backend ray")
    resolved = resolve_target(target, force=force)  # type: ignore[arg-type]
    if resolved.tiffin is not None and reload:
        raise click.UsageError("--reload watches source files; a built tiffin never changes")
    if settings.runner_processes:
        if reload:
            raise click.UsageError("--reload works with one worker and runners in-process only")
        if resolved.tiffin is not None:
            sys.exit(_serve_workers(settings, tiffin_path=str(resolved.tiffin.path)))
        sys.exit(_serve_workers(settings, target=target))
    from tiffin.process.serve import serve as run_serve

    run_serve(resolved, settings, reload=reload)


@main.command("serve-model")
@click.argument("target")
@_serve_options
@click.option("--no-batching", is_flag=True, help="Call predict once per request.")
def serve_model(target: str, config_file: str | None, no_batching: bool, **overrides: Any) -> None:
    """Serve one stored model (TAG), or an MLflow model URI imported first."""
    from tiffin.serving.model_service import build_service, resolve_model

    settings = _settings(config_file, **overrides)
    model = resolve_model(target)
    click.echo(f"serving model '{model.tag}' ({model.info.module})", err=True)
    if settings.runner_processes:
        sys.exit(_serve_workers(settings, model_tag=str(model.tag), batching=not no_batching))
    from tiffin.process.serve import run_app
    from tiffin.serving.app import build_app

    run_app(build_app(build_service(model, batching=not no_batching), settings), settings)


def _serve_workers(settings: Any, **source: Any) -> int:
    """``--workers N``. The HTTP app must not be imported before this: the supervisor sets
    prometheus-client's multiprocess directory, which prometheus-client reads once, on import."""
    from tiffin.process.supervisor import ServiceSource, serve_workers

    return serve_workers(ServiceSource(**source), settings, settings.workers)


from tiffin.cli_build import COMMANDS  # noqa: E402  (the commands for built tiffins)

for _command in COMMANDS:
    main.add_command(_command)

models.add_command(cli_remote.models_push)
models.add_command(cli_remote.models_pull)
main.add_command(cli_remote.tiffin_push)
main.add_command(cli_remote.tiffin_pull)

if __name__ == "__main__":  # pragma: no cover
    main()
