"""The ``tiffin`` commands for built tiffins: ``build``, ``list``, ``get``, ``delete``,
``export``, ``import``, ``containerize``. Like :mod:`tiffin.cli` (which adds them to the root
group), each imports what it needs when it runs. Long steps (copying models, locking, an
archive) show a progress bar on stderr; ``-q`` silences it and every other note.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

import click

__all__ = ["COMMANDS"]

_QUIET = click.option("-q", "--quiet", is_flag=True, help="No progress display or notes.")


@contextlib.contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A ``(step, done, total)`` callback drawing one bar per step on stderr (from 1 MiB for
    byte counts: small steps stay quiet), or None with ``quiet``."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
        "{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=Console(stderr=True),
        transient=True)  # fmt: skip
    tasks: dict[str, Any] = {}

    def show(step: str, done: int, total: int) -> None:
        if step not in tasks:
            if step != "locking packages" and total < (1 << 20):
                return
            tasks[step] = progress.add_task(step, total=total or None)
            if not progress.live.is_started:
                progress.start()
        progress.update(tasks[step], completed=done, total=total or None)

    try:
        yield show
    finally:
        if progress.live.is_started:
            progress.stop()


def _note(quiet: bool, text: str) -> None:
    if not quiet:
        click.echo(text, err=True)


@click.command("build")
@click.argument("build_ctx", metavar="[PATH]", default=".", type=click.Path(file_okay=False))
@click.option("-f", "--file", "tiffinfile", type=click.Path(dir_okay=False), default=None,
              help="The tiffinfile [default: PATH/tiffinfile.yaml].")
@click.option("--version", default=None, help="The version to build [default: a new one].")
@click.option("-o", "--output", type=click.Choice(["tag", "path", "json"]), default="tag",
              show_default=True, help="What to print on stdout.")
@click.option("--containerize", is_flag=True, help="Build the image too (docker or podman).")
@_QUIET
def build(build_ctx: str, tiffinfile: str | None, version: str | None, output: str,
          containerize: bool, quiet: bool) -> None:  # fmt: skip
    """Build a tiffin from PATH's tiffinfile.yaml into the store ($TIFFIN_HOME/tiffins)."""
    from pathlib import Path

    from tiffin.building.builder import build_tiffin
    from tiffin.building.tiffinfile import find_tiffinfile, load_tiffinfile

    ctx = Path(build_ctx).resolve()
    config = load_tiffinfile(find_tiffinfile(ctx, tiffinfile))
    with _progress(quiet) as progress:
        report = build_tiffin(config, version=version, build_ctx=ctx, progress=progress)
    built = report.tiffin
    from tiffin.cli import human_size

    _note(quiet, (
        f"built tiffin '{built.tag}' ({len(built.info.apis)} API(s), {len(built.info.models)} "
        f"model(s), {report.files} file(s), {human_size(built.size_bytes())}) in "
        f"{report.seconds['total']:.2f} s (models copied in {report.seconds['copy_models']:.2f} s)"
    ))  # fmt: skip
    from tiffin.building.requirements import installed_from

    origin = installed_from()
    bundled = any(w.startswith("tiffin-") for w in built.info.python.get("wheels") or [])
    if origin is not None and not bundled:
        _note(quiet, (
            f"note: this tiffin ({built.info.tiffin_version}) is installed from {origin}, not "
            f"from a package index; env/python/requirements.txt asks for tiffin=="
            f"{built.info.tiffin_version}: where no index has it, list a wheel of it under "
            "python.wheels"
        ))  # fmt: skip
    if output == "tag":
        click.echo(str(built.tag))
    elif output == "path":
        click.echo(str(built.path))
    else:
        from tiffin.cli import emit

        emit({"tag": str(built.tag), "path": str(built.path), "seconds": report.seconds,
              **built.info.to_dict()}, "json")  # fmt: skip
    if containerize:
        _containerize(str(built.tag), None)


@click.command("list")
@click.argument("name", required=False)
@click.option("-o", "--output", type=click.Choice(["table", "json", "yaml"]), default="table",
              show_default=True)
def list_(name: str | None, output: str) -> None:
    """List built tiffins, newest first (optionally only NAME's versions)."""
    from tiffin.cli import echo_table, emit, human_size
    from tiffin.store import tiffins

    found, broken = tiffins.scan(name)
    if output == "table":
        echo_table(
            ["Tag", "Service", "Models", "Size", "Creation Time"],
            [[str(t.tag), t.info.service, str(len(t.info.models)), human_size(t.size_bytes()),
              t.creation_time.strftime("%Y-%m-%d %H:%M:%S")] for t in found],
        )  # fmt: skip
    else:
        emit([{"tag": str(t.tag), "service": t.info.service,
               "models": [m.get("tag") for m in t.info.models], "size_bytes": t.size_bytes(),
               "creation_time": t.creation_time.isoformat(), "labels": t.info.labels}
              for t in found], output)  # fmt: skip
    for entry in broken:
        click.echo(f"tiffin: warning: broken entry {entry.tag}: {entry.error}", err=True)


@click.command("get")
@click.argument("tag")
@click.option("-o", "--output", type=click.Choice(["yaml", "json", "path"]), default="yaml",
              show_default=True)
def get(tag: str, output: str) -> None:
    """Show one built tiffin's tiffin.yaml, or its directory with -o path."""
    from tiffin.cli import emit
    from tiffin.store import tiffins

    built = tiffins.get(tag)
    if output == "path":
        click.echo(str(built.path))
        return
    emit({"tag": str(built.tag), "path": str(built.path), **built.info.to_dict()}, output)


@click.command("delete")
@click.argument("tag")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
def delete(tag: str, yes: bool) -> None:
    """Delete one built tiffin version."""
    from tiffin.store import tiffins

    built = tiffins.get(tag)
    if not yes and not click.confirm(f"Delete tiffin '{built.tag}'?", err=True):
        click.echo("tiffin: nothing deleted", err=True)
        sys.exit(1)
    tiffins.delete(built.tag)
    click.echo(f"deleted tiffin '{built.tag}'")


@click.command("export")
@click.argument("tag")
@click.argument("path", type=click.Path())
@_QUIET
def export(tag: str, path: str, quiet: bool) -> None:
    """Write a built tiffin, models included, to one .tiffin archive (PATH: file or directory)."""
    from tiffin.store.archive import export_tiffin

    with _progress(quiet) as progress:
        tell = (lambda done, total: progress("exporting", done, total)) if progress else None
        click.echo(export_tiffin(tag, path, progress=tell))


@click.command("import")
@click.argument("path", type=click.Path())
@_QUIET
def import_(path: str, quiet: bool) -> None:
    """Add a built tiffin from a .tiffin archive."""
    from tiffin.store.archive import import_tiffin

    with _progress(quiet) as progress:
        tell = (lambda done, total: progress("importing", done, total)) if progress else None
        built = import_tiffin(path, progress=tell)
    click.echo(f"imported tiffin '{built.tag}'")


def _containerize(tag: str, image: str | None) -> None:
    from tiffin.building.containerize import containerize as run

    click.echo(run(tag, image=image))


@click.command("containerize")
@click.argument("tag")
@click.option("-t", "--image-tag", default=None, help="The image's name [default: NAME:VERSION].")
def containerize(tag: str, image_tag: str | None) -> None:
    """Build a built tiffin's container image with docker or podman (its output on stderr)."""
    _containerize(tag, image_tag)


COMMANDS = [build, list_, get, delete, export, import_, containerize]
