"""The ``tiffin`` command line. Subcommands import what they need when they run."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

from tiffin._version import __version__
from tiffin.exceptions import TiffinError


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
    from tiffin import models as store_models

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
    from tiffin import models as store_models

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
    from tiffin import models as store_models

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
    from tiffin import models as store_models

    click.echo(store_models.export_model(tag, path))


@models.command("import")
@click.argument("path", type=click.Path())
def models_import(path: str) -> None:
    """Add a model from a .tiffinmodel archive."""
    from tiffin import models as store_models

    model = store_models.import_model(path)
    click.echo(f"imported model '{model.tag}'")


if __name__ == "__main__":  # pragma: no cover
    main()
