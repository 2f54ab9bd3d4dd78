"""``tiffin models push`` / ``pull`` and ``tiffin push`` / ``pull``: the stores and their S3
remote, models and built tiffins alike (:mod:`tiffin.store.remote`).

The commands live here (``tiffin.cli`` adds them to its ``models`` group and to the root
group) so that the command line's main module stays small. Progress goes to stderr once a
transfer passes 1 MiB; the result is one line on stdout.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

__all__ = ["models_pull", "models_push", "tiffin_pull", "tiffin_push"]


@contextmanager
def _progress(verb: str, what: str) -> Iterator[Any]:
    """A ``(start(total), advance(bytes))`` pair drawing a rich progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn(f"{verb} {{task.description}}"), BarColumn(),
        DownloadColumn(binary_units=True), TimeElapsedColumn(), console=Console(stderr=True),
    )  # fmt: skip
    task = progress.add_task(what, total=None)
    done = [0]

    def start(total: int) -> None:
        progress.update(task, total=total)
        if total >= 1 << 20:
            progress.start()

    def advance(count: int) -> None:
        done[0] += count
        progress.update(task, completed=done[0])

    try:
        yield (start, advance)
    finally:
        if progress.live.is_started:
            progress.stop()


def _push(what: str, tag: str, url: str | None) -> None:
    from tiffin.store.remote import model_kind, push_entry, tiffin_kind

    kind = model_kind() if what == "model" else tiffin_kind()
    with _progress("pushing", tag) as transfer:
        pushed = push_entry(kind, tag, url, transfer)
    if pushed.uploaded:
        click.echo(f"pushed {what} '{pushed.tag}' to {pushed.url}")
    else:
        click.echo(f"{what} '{pushed.tag}' is already at {pushed.url} (same files)")


def _pull(what: str, target: str) -> None:
    from tiffin.store.remote import model_kind, pull_entry, split_pull_target, tiffin_kind

    kind = model_kind() if what == "model" else tiffin_kind()
    url, tag = split_pull_target(target)
    with _progress("pulling", tag) as transfer:
        pulled = pull_entry(kind, tag, url, transfer)
    if pulled.fetched:
        click.echo(f"pulled {what} '{pulled.entry.tag}' from {pulled.url} into {pulled.entry.path}")
    else:
        click.echo(f"{what} '{pulled.entry.tag}' is already here, the same as at {pulled.url}")


@click.command("push")
@click.argument("tag")
@click.argument("url", required=False)
def models_push(tag: str, url: str | None) -> None:
    """Upload model TAG to URL (s3://BUCKET/PREFIX; default $TIFFIN_REMOTE).

    Keys: URL/models/NAME/VERSION/files/..., URL/models/NAME/VERSION/manifest.json (SHA-256
    of every file, written last) and URL/models/index.json.
    """
    _push("model", tag, url)


@click.command("pull")
@click.argument("target")
def models_pull(target: str) -> None:
    """Download a model: URL/NAME[:VERSION], or NAME[:VERSION] from $TIFFIN_REMOTE.

    Every file is checked against the SHA-256 in the version's manifest before the model
    enters the store; a version already here is checked and left as it is.
    """
    _pull("model", target)


@click.command("push")
@click.argument("tag")
@click.argument("url", required=False)
def tiffin_push(tag: str, url: str | None) -> None:
    """Upload built tiffin TAG to URL (s3://BUCKET/PREFIX; default $TIFFIN_REMOTE).

    Keys: URL/tiffins/NAME/VERSION/files/..., URL/tiffins/NAME/VERSION/manifest.json (SHA-256
    of every file, written last) and URL/tiffins/index.json.
    """
    _push("tiffin", tag, url)


@click.command("pull")
@click.argument("target")
def tiffin_pull(target: str) -> None:
    """Download a built tiffin: URL/NAME[:VERSION], or NAME[:VERSION] from $TIFFIN_REMOTE.

    Every file is checked against the SHA-256 in the version's manifest before the tiffin
    enters the store; a version already here is checked and left as it is.
    """
    _pull("tiffin", target)
