"""``tiffin build`` of the MLflow guide's service against ``bentoml build`` (BentoML 1.4.40).

Run with ``python bench/build.py [--bentoml-venv DIR] [--runs N]``. BentoML lives in a scratch
virtualenv of its own (never in this project's), made once with::

    python -m venv /tmp/bentoml-venv
    /tmp/bentoml-venv/bin/pip install bentoml==1.4.40 mlflow==<this env's> torch==<this env's>

The script saves the guide's model -- an MNIST-shaped PyTorch model logged with
``mlflow.pytorch.save_model`` -- imports it into a fresh tiffin store and a fresh BentoML
store, and writes two projects with the guide's service (``import mlflow``, ``import torch``,
a runner from ``<tool>.mlflow.get(...)``, a NumpyNdarray API) and a build file without
locking: tiffin's takes the model's requirements from
``$TIFFIN_MLFLOW_MODEL_PATH/mlflow_model/requirements.txt`` as the guide writes it; BentoML's
refuses an absolute path, so its copy of that file lies beside the bentofile. BentoML 1.4
keeps the 1.x ``Service`` as ``bentoml.legacy.Service``; that is the one change to its copy.

Each command runs once to warm the caches, then ``--runs`` times in alternating rounds; the
table shows medians of wall time (the console script as a subprocess, interpreter start-up
included). Also timed: ``python -c "import mlflow, torch"`` -- what importing the service
costs a build that runs its imports -- and the part of tiffin's build spent copying the model
into the built tiffin (BentoML 1.4 keeps models out of the bento, in its store). With
``--before SRC`` (another tree's ``src/``, e.g. from ``git archive``) its ``tiffin build`` is
timed in the same rounds. Target: tiffin at most 0.33x BentoML's time. Exit status 1 if missed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = 0.33

SERVICE = """\
import {tool}
import mlflow
import torch

mnist_runner = {tool}.mlflow.get('mlflow_pytorch_mnist:latest').to_runner()

svc = {service}('mlflow_pytorch_mnist', runners=[ mnist_runner ])

input_spec = {tool}.io.NumpyNdarray(
    dtype="float32",
    shape=[-1, 1, 28, 28],
    enforce_shape=True,
    enforce_dtype=True,
)

@svc.api(input=input_spec, output={tool}.io.NumpyNdarray())
def predict(input_arr):
    return mnist_runner.predict.run(input_arr)
"""

TIFFINFILE = """\
service: "service.py:svc"
include: ["service.py"]
python:
    requirements_txt: $TIFFIN_MLFLOW_MODEL_PATH/mlflow_model/requirements.txt
    lock_packages: False
"""

BENTOFILE = """\
service: "service.py:svc"
include: ["service.py", "requirements.txt"]
python:
    requirements_txt: ./requirements.txt
    lock_packages: False
"""


def run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    result = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = result.stdout[-2000:] + result.stderr[-3000:]
        raise SystemExit(f"{' '.join(argv)} failed:\n{tail}")
    return result.stdout


def timed(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, str]:
    started = time.perf_counter()
    out = run(argv, env, cwd)
    return time.perf_counter() - started, out


def prepare(
    work: Path, bentoml_python: str, before: str | None
) -> dict[str, tuple[list[str], dict[str, str], Path]]:
    import mlflow
    import numpy as np
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()
    images = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    mlflow.pytorch.save_model(
        model, str(work / "mnist"), input_example=images[:1], serialization_format="pickle",
        pip_requirements=["torch"],
    )  # fmt: skip
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("TIFFIN_", "BENTOML_", "MLFLOW_", "PYTHONPATH"))}  # fmt: skip
    tiffin = [str(Path(sys.executable).parent / "tiffin")]
    tenv = {**base, "TIFFIN_HOME": str(work / "tiffin-home"), "PYTHONPATH": str(ROOT / "src")}
    run([*tiffin, "models", "import-mlflow", "mlflow_pytorch_mnist", str(work / "mnist")],
        tenv, work)  # fmt: skip
    path = run([*tiffin, "models", "get", "mlflow_pytorch_mnist:latest", "-o", "path"], tenv, work)
    tenv["TIFFIN_MLFLOW_MODEL_PATH"] = path.strip()
    tproj = work / "tiffin-project"
    tproj.mkdir()
    (tproj / "service.py").write_text(SERVICE.format(tool="tiffin", service="tiffin.Service"))
    (tproj / "tiffinfile.yaml").write_text(TIFFINFILE)

    benv = {**base, "BENTOML_HOME": str(work / "bentoml-home"), "BENTOML_DO_NOT_TRACK": "True"}
    run([bentoml_python, "-c", "import bentoml; bentoml.mlflow.import_model("
         f"'mlflow_pytorch_mnist', {str(work / 'mnist')!r})"], benv, work)  # fmt: skip
    bproj = work / "bentoml-project"
    bproj.mkdir()
    (bproj / "service.py").write_text(
        SERVICE.format(tool="bentoml", service="bentoml.legacy.Service")
    )
    (bproj / "bentofile.yaml").write_text(BENTOFILE)
    shutil.copy(work / "mnist" / "requirements.txt", bproj / "requirements.txt")
    bentoml = str(Path(bentoml_python).parent / "bentoml")
    commands = {
        "tiffin build": ([*tiffin, "build", "-q", "-o", "json"], tenv, tproj),
        "bentoml build": ([bentoml, "build"], benv, bproj),
        "import mlflow, torch": ([sys.executable, "-c", "import mlflow, torch"], base, work),
    }
    if before:
        commands["tiffin build (before)"] = (
            [*tiffin, "build", "-q"], {**tenv, "PYTHONPATH": str(Path(before).resolve())}, tproj
        )
    return commands


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bentoml-venv", default="/tmp/bentoml-venv")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--before", metavar="SRC", help="also time this src/ tree's build")
    args = parser.parse_args()
    bentoml_python = str(Path(args.bentoml_venv) / "bin" / "python")
    if not Path(bentoml_python).exists():
        raise SystemExit(f"no BentoML virtualenv at {args.bentoml_venv}; see this script's help")
    version = run([bentoml_python, "-c", "import bentoml; print(bentoml.__version__)"],
                  dict(os.environ), Path.cwd()).strip()  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tiffin-bench-build-") as tmp:
        commands = prepare(Path(tmp), bentoml_python, args.before)
        for argv, env, cwd in commands.values():
            run(argv, env, cwd)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in commands}
        copies: list[float] = []
        for _ in range(args.runs):
            for name, (argv, env, cwd) in commands.items():
                seconds, out = timed(argv, env, cwd)
                times[name].append(seconds)
                if name == "tiffin build":
                    copies.append(json.loads(out)["seconds"]["copy_models"])
    medians = {name: statistics.median(values) for name, values in times.items()}
    ratio = medians["tiffin build"] / medians["bentoml build"]
    print(f"BentoML {version}; medians of {args.runs} alternating runs, wall time")
    print(f"{'command':30} {'median':>9} {'fastest':>9}")
    for name, values in times.items():
        print(f"{name:30} {medians[name]:8.3f}s {min(values):8.3f}s")
    print(f"{'  tiffin: copying the model':30} {statistics.median(copies):8.4f}s")
    print(f"tiffin / BentoML: {ratio:.2f}x (target <= {TARGET}x)")
    return 0 if ratio <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
