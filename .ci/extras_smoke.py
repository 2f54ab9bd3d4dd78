"""Each extra, installed alone from a wheel into a fresh virtualenv, serves a real request.

Run from the repository root: ``python .ci/extras_smoke.py [EXTRA ...]`` (default: every
extra but ``all``). It builds a wheel of this repo, then for each extra: a fresh venv, ``pip
install 'tiffin[EXTRA]'`` from that wheel (``torch==2.13.0`` first for ``pytorch``, as the
Makefile does), and a smoke script run by that venv's Python in an empty directory with an
empty ``TIFFIN_HOME``: save or import a model, start ``tiffin serve-model`` (or ``tiffin
serve``) on a free loopback port, send one request, check the answer, stop the server. Two
extras install at a time. Exit status 1 if any extra fails, with its log.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"

# Shared by every smoke script: start a server, wait for /readyz, post, stop it by its PID.
PRELUDE = textwrap.dedent('''
    import json, os, signal, socket, subprocess, sys, time, urllib.request
    from pathlib import Path

    BIN = Path(sys.executable).parent

    def serve(*args):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([str(BIN / "tiffin"), *args, "--host", "127.0.0.1",
                                 "--port", str(port)])
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return proc, url
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise SystemExit(f"the server did not start (exit {proc.poll()})")
            time.sleep(0.1)

    def post(url, body, content_type="application/json"):
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"content-type": content_type})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def stop(proc):
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.returncode
''')

SMOKE = {
    "sklearn": '''
        import tiffin
        from sklearn.linear_model import LogisticRegression
        X = [[0.0, 0.0], [1.0, 1.0], [0.0, 1.0], [1.0, 0.0]]
        tiffin.sklearn.save_model("clf", LogisticRegression().fit(X, [0, 1, 1, 0]))
        proc, url = serve("serve-model", "clf")
        answer = post(url + "/predict", b"[[1.0, 1.0], [0.0, 0.0]]")
        stop(proc)
        assert answer == [1, 0], answer
    ''',
    "mlflow": '''
        import mlflow.pyfunc

        class AddOne(mlflow.pyfunc.PythonModel):
            def predict(self, context, model_input, params=None):
                return model_input + 1

        mlflow.pyfunc.save_model("model", python_model=AddOne())
        subprocess.run([str(BIN / "tiffin"), "models", "import-mlflow", "add", "model"],
                       check=True)
        proc, url = serve("serve-model", "add")
        answer = post(url + "/invocations", b'{"inputs": [[1.0, 2.0]]}')
        stop(proc)
        assert answer == {"predictions": [[2.0, 3.0]]}, answer
    ''',
    "pytorch": '''
        import torch
        import tiffin

        double = torch.nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            double.weight.copy_(torch.eye(2) * 2)
        tiffin.pytorch.save_model("double", double, signatures={"forward": {"batchable": True}})
        proc, url = serve("serve-model", "double")
        answer = post(url + "/forward", b"[[1.0, 2.0]]")
        stop(proc)
        assert answer == [[2.0, 4.0]], answer
    ''',
    "image": '''
        import io
        from PIL import Image

        Path("svc.py").write_text(
            "import tiffin\\n"
            "svc = tiffin.Service('sizes')\\n"
            "@svc.api(input=tiffin.io.Image(), output=tiffin.io.JSON())\\n"
            "def size(image):\\n"
            "    return {'size': list(image.size)}\\n"
        )
        buffer = io.BytesIO()
        Image.new("RGB", (7, 3)).save(buffer, format="PNG")
        proc, url = serve("serve", "svc.py:svc")
        answer = post(url + "/size", buffer.getvalue(), "image/png")
        stop(proc)
        assert answer == {"size": [7, 3]}, answer
    ''',
}


def run(cmd: list[str], log: Path, **kwargs: object) -> None:
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=True, **kwargs)  # type: ignore[call-overload]


def build_wheel(into: Path) -> Path:
    log = into / "wheel.log"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(into), str(ROOT)],
        log)
    return next(into.glob("tiffin-*.whl"))


def smoke(extra: str, wheel: Path, work: Path) -> tuple[str, float, str | None]:
    started = time.monotonic()
    log = work / f"{extra}.log"
    venv = work / f"venv-{extra}"
    try:
        run([sys.executable, "-m", "venv", str(venv)], log)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q",
               "--disable-pip-version-check"]
        if extra == "pytorch":
            run([*pip, TORCH], log)
        run([*pip, f"{wheel}[{extra}]"], log)
        home = work / f"home-{extra}"
        cwd = work / f"cwd-{extra}"
        cwd.mkdir()
        script = cwd / "smoke.py"
        script.write_text(PRELUDE + textwrap.dedent(SMOKE[extra]))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TIFFIN_", "PYTHON"))}
        env["TIFFIN_HOME"] = str(home)
        run([str(venv / "bin" / "python"), str(script)], log, cwd=cwd, env=env, timeout=300)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return extra, time.monotonic() - started, log.read_text()[-4000:]
    return extra, time.monotonic() - started, None


def main() -> int:
    extras = sys.argv[1:] or list(SMOKE)
    unknown = set(extras) - set(SMOKE)
    if unknown:
        raise SystemExit(f"unknown extra(s) {sorted(unknown)}; known: {sorted(SMOKE)}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tiffin-extras-") as tmp:
        work = Path(tmp)
        wheel = build_wheel(work)
        print(f"built {wheel.name} in {time.monotonic() - started:.0f} s", flush=True)
        failed = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            for extra, seconds, error in pool.map(lambda e: smoke(e, wheel, work), extras):
                status = "ok" if error is None else "FAILED"
                print(f"tiffin[{extra}]: {status} in {seconds:.0f} s", flush=True)
                if error is not None:
                    failed.append(extra)
                    print(error, flush=True)
    print(f"extras smoke: {len(extras) - len(failed)}/{len(extras)} ok in "
          f"{time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
