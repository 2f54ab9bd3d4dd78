"""What a built tiffin records about its service (``tiffin.yaml``'s ``apis``, ``runners`` and
``models``), and the README written beside it.

Every value is plain YAML: an API's IO descriptors are recorded as clients rebuild them
(:func:`tiffin.io.spec.describe`), a runner's settings as its methods' batch settings.
"""

from __future__ import annotations

from typing import Any

from tiffin.io.spec import describe
from tiffin.serving.mlflow_protocol import mlflow_runner
from tiffin.serving.service import Service
from tiffin.store.models import Model
from tiffin.store.tiffins import TiffinInfo

__all__ = ["apis_of", "model_record", "readme", "runners_of"]


def apis_of(service: Service) -> list[dict[str, Any]]:
    apis: list[dict[str, Any]] = [
        {
            "name": api.name,
            "route": api.route,
            "doc": api.doc,
            "input": describe(api.input),
            "output": describe(api.output),
        }
        for api in service.apis.values()
    ]
    if mlflow_runner(service) is not None:
        apis.append({"name": "invocations", "route": "/invocations", "doc": "MLflow's scoring "
                     "protocol, as `mlflow models serve` answers it", "mlflow": True})
    return apis


def runners_of(service: Service) -> list[dict[str, Any]]:
    return [
        {
            "name": runner.name,
            "runnable": runner.runnable_class.__name__,
            "embedded": runner.embedded,
            "models": [str(model.tag) for model in runner.models],
            "methods": {
                name: {
                    "batchable": method.settings.batchable,
                    "batch_dim": (
                        list(method.settings.batch_dim)
                        if isinstance(method.settings.batch_dim, tuple)
                        else method.settings.batch_dim
                    ),
                    "max_batch_size": method.settings.max_batch_size,
                    "max_latency_ms": method.settings.max_latency_ms,
                }
                for name, method in runner.methods.items()
            },
        }
        for runner in service.runners
    ]


def model_record(model: Model) -> dict[str, Any]:
    return {
        "tag": str(model.tag),
        "module": model.info.module,
        "creation_time": model.creation_time.isoformat(),
        "size_bytes": model.size_bytes(),
    }


def _io(description: dict[str, Any] | None) -> str:
    if not description:
        return "MLflow's formats"
    args = ", ".join(f"{k}={v!r}" for k, v in (description.get("args") or {}).items())
    return f"{description.get('type')}({args})"


def readme(info: TiffinInfo, description: str) -> str:
    """The built tiffin's README.md: what it is, and how to serve, move and containerize it."""
    tag = info.tag
    lines = [f"# {tag}", ""]
    if description.strip():
        lines += [description.strip(), ""]
    lines += [
        f"A built tiffin: service `{info.service}` with its code (`src/`), its models "
        f"(`models/`) and its environment (`env/`), built by tiffin {info.tiffin_version} "
        f"with Python {info.python_version} on {info.creation_time:%Y-%m-%d %H:%M:%S} UTC.",
        "",
        "## Serve it",
        "",
        "```bash",
        f"tiffin serve {tag}                 # in any directory; add --workers N for more",
        "```",
        "",
        "| API | route | input | output |",
        "| --- | --- | --- | --- |",
    ]
    for api in info.apis:
        lines.append(
            f"| {api['name']} | POST {api['route']} | {_io(api.get('input'))} | "
            f"{_io(api.get('output'))} |"
        )
    lines += ["", "## Models", ""]
    lines += [f"- `{m['tag']}` ({m['module']})" for m in info.models] or ["(none)"]
    lines += [
        "",
        "## Move it",
        "",
        "```bash",
        f"tiffin export {tag} ./                      # one file, {tag.name}-{tag.version}.tiffin",
        f"tiffin import {tag.name}-{tag.version}.tiffin   # on the other machine",
        "```",
        "",
        "## Run it without tiffin's store",
        "",
        "```bash",
        "pip install --find-links env/python/wheels -r env/python/requirements.txt",
        "```",
        "",
        "installs what it needs (`env/python/python_version.txt` is the Python it was built "
        "with); then `tiffin import` its archive, or copy this directory to "
        f"`$TIFFIN_HOME/tiffins/{tag.name}/{tag.version}/`, and `tiffin serve {tag}`.",
        "",
        "## Container image",
        "",
        "```bash",
        f"tiffin containerize {tag}",
        f"docker build -t {tag} -f env/docker/Dockerfile .   # the same, from this directory",
        f"docker run -p 3000:3000 {tag}",
        "```",
        "",
        "`tiffin build` only writes `env/docker/Dockerfile`; the image itself is built only "
        "where a container engine (docker or podman) runs. `tiffin containerize` says so, and "
        "prints the command to run elsewhere, when none answers here.",
        "",
    ]
    return "\n".join(lines)
