"""A service or model that fails to start, as a real ``tiffin serve`` / ``serve-model``
process shows it: the log line has the error and the user's own frames (their file and line,
or the model's), none of tiffin's, uvicorn's, starlette's or a library's, and the command
exits 1 with one readable line."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import free_port, tiffin_exe
from tests.test_serving_support import server_env

pytestmark = pytest.mark.slow

RUNNER_FAILS = """\
import tiffin
from tiffin.io import JSON


def read_weights(path):
    raise ValueError(f"weights file {path} is corrupt")


class Broken(tiffin.Runnable):
    def __init__(self):
        read_weights("/srv/models/weights.bin")

    @tiffin.Runnable.method(batchable=False)
    def predict(self, x):
        return x


svc = tiffin.Service("broken", runners=[tiffin.Runner(Broken, name="broken")])


@svc.api(input=JSON(), output=JSON())
def echo(x):
    return x
"""

HOOK_FAILS = """\
import tiffin

svc = tiffin.Service("hooked")


@svc.on_startup
async def connect():
    raise ConnectionError("no database at db.internal:5432")
"""

MODEL_CODE = """\
import mlflow
from mlflow.pyfunc import PythonModel


class Broken(PythonModel):
    def load_context(self, context):
        raise RuntimeError("cannot reach the feature store")

    def predict(self, context, model_input, params=None):
        return model_input


mlflow.models.set_model(Broken())
"""

_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def _model_whose_loading_fails(root: Path) -> Path:
    import mlflow

    code = root / "model_code.py"
    code.write_text(MODEL_CODE)
    path = root / "broken-model"
    mlflow.pyfunc.save_model(str(path), python_model=str(code), pip_requirements=["mlflow"])
    return path


def _start(args: list[str], cwd: Path, home: Path) -> subprocess.Popen[str]:
    cmd = [tiffin_exe(), *args, "--host", "127.0.0.1", "--port", str(free_port())]
    return subprocess.Popen(cmd, cwd=cwd, env=server_env(home), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def test_start_up_errors_show_the_users_frames_and_exit_1_with_one_line(
    tmp_path: Path, tiffin_home: Path
) -> None:
    (tmp_path / "runner_fails.py").write_text(RUNNER_FAILS)
    (tmp_path / "hook_fails.py").write_text(HOOK_FAILS)
    model = _model_whose_loading_fails(tmp_path)
    runs = {
        "runner": _start(["serve", "runner_fails.py:svc"], tmp_path, tiffin_home),
        "hook": _start(["serve", "hook_fails.py:svc"], tmp_path, tiffin_home),
        "model": _start(["serve-model", str(model)], tmp_path, tiffin_home),
    }
    expected = {
        # the user's file, the functions of theirs on the way, the error and its text
        "runner": ("runner_fails.py", ["__init__", "read_weights"],
                   "ValueError: weights file /srv/models/weights.bin is corrupt"),
        "hook": ("hook_fails.py", ["connect"],
                 "ConnectionError: no database at db.internal:5432"),
        "model": ("model_code.py", ["load_context"], "cannot reach the feature store"),
    }  # fmt: skip
    for name, process in runs.items():
        try:
            out, err = process.communicate(timeout=120)
        finally:
            process.kill()
        file_name, functions, error = expected[name]
        assert process.returncode == 1, (name, err[-3000:])
        log = out + err
        line = next(line for line in log.splitlines() if "failed to start:" in line)
        assert error in line, (name, line)
        frames = _FRAME.findall(log)
        assert frames, (name, log[-3000:])
        assert {Path(path).name for path, _, _ in frames} == {file_name}, (name, log[-3000:])
        assert [function for _, _, function in frames][-len(functions) :] == functions, name
        assert "Traceback (most recent call last)" not in log, (name, log[-3000:])
        last = err.strip().splitlines()[-1]
        assert last.startswith("tiffin: error: the service failed to start: "), (name, last)
        assert error in last and f"{file_name}, line " in last, (name, last)
