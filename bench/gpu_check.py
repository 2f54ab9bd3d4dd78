"""The GPU check: the MLflow guide's MNIST-shaped CNN logged with MLflow, imported with tiffin,
served from a GPU, against raw PyTorch on the same GPU and tiffin on the CPU, in one run.

Run from the repository root, on the GPU host (torch with CUDA installed there; MLflow,
starlette, uvicorn and tiffin's other dependencies from ``make gpu-wheelhouse``, see
bench/README.md)::

    PYTHONPATH=src python bench/gpu_check.py                 # --device cuda, about 3 minutes
    PYTHONPATH=src python bench/gpu_check.py --device cpu --quick   # what CI runs (< 1 min)

What it does, in one process tree of its own (a temporary TIFFIN_HOME and MLflow file store):

1. Logs the CNN (PyTorch's MNIST example network) with ``mlflow.pytorch.log_model`` (pt2
   format, an input example) and imports it with ``tiffin.mlflow.import_model(...,
   flavor="pytorch", signatures={"predict": {"batchable": True}})``.
2. **raw**: the module MLflow loads, on the device, called in a loop under
   ``torch.inference_mode()`` with host copies both ways (``from_numpy(x).to(device)``,
   ``.cpu().numpy()``), at batch 1, 8, 64 and 256: rows/s (on the CPU in one thread, as a
   runner's worker thread runs by default).
3. **runner**: ``to_runner(device=..., max_batch_size=batch)``, two callers in a closed loop
   on ``predict.async_run`` (so the next batch waits while one runs), same batches: rows/s.
4. **http**: ``tiffin serve-model`` with one API worker and the runner in a runner process
   (``runners.<name>.workers: 1``), loaded with 64-row ``.npy`` requests (``Accept: .npy``)
   by an asyncio HTTP/1.1 client in its own process on 32 keep-alive connections (4 with
   ``--quick``): rows/s. ``max_latency_ms`` is a minute: this measures throughput, not
   load shedding.
5. **cpu**: the same server and load with ``device: cpu`` and every core
   (``TIFFIN_RUNNER_THREADS=0``): rows/s (skipped when ``--device cpu``: step 4 is it).

Targets, ratios taken in the same run: runner >= 0.8x raw at batch >= 64; http >= 0.5x raw
at batch 64; http on the GPU >= 10x the CPU figure. They are checked (exit 1 when missed)
with ``--device cuda`` and without ``--quick``; otherwise reported only. Any failed request
or wrong answer exits 1 in every mode.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
BATCHES = (1, 8, 64, 256)
HTTP_ROWS = 64
CONNECTIONS = 32
NAME = "mnist_cnn"


def _need(modules: list[str]) -> None:
    missing = []
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        sys.exit(
            f"gpu_check: missing {', '.join(missing)}; on a machine with network run `make "
            "gpu-wheelhouse`, carry .gpu-wheelhouse/ here and `pip install --no-index "
            "--find-links .gpu-wheelhouse tiffin mlflow-skinny` (bench/README.md)"
        )


# -- the model ---------------------------------------------------------------------------------


def cnn() -> Any:
    """PyTorch's MNIST example network, the one the MLflow guide's PyTorch example serves."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout(0.25), nn.Flatten(), nn.Linear(9216, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 10), nn.LogSoftmax(dim=1),
    ).eval()  # fmt: skip


def images(rows: int, seed: int = 0) -> Any:
    import numpy as np

    return np.random.default_rng(seed).random((rows, 1, 28, 28), dtype=np.float32)


def log_and_import(root: Path) -> tuple[Any, Any]:
    """The CNN logged with MLflow and imported with tiffin: (tiffin model, the module)."""
    import mlflow

    import tiffin

    net = cnn()
    mlflow.set_tracking_uri((root / "mlruns").as_uri())
    with mlflow.start_run():
        info = mlflow.pytorch.log_model(
            net, name="pytorch-model", input_example=images(2), pip_requirements=["torch"]
        )
    model = tiffin.mlflow.import_model(
        NAME, info.model_uri, flavor="pytorch", signatures={"predict": {"batchable": True}}
    )
    return model, net


# -- raw PyTorch and the runner -------------------------------------------------------------------


def timed(seconds: float, step: Any) -> float:
    """Calls of ``step()`` (each returning its rows) for ``seconds``: rows per second."""
    step()  # warm
    rows, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        rows += step()
    return rows / elapsed


def raw_rows_per_s(model: Any, device: str, seconds: float) -> dict[int, float]:
    import torch

    from tiffin.frameworks.mlflow.pytorch import load_native_torch

    module = load_native_torch(model, device).to(device)
    out: dict[int, float] = {}
    threads = torch.get_num_threads()
    if device == "cpu":  # as the runner's worker thread runs (TIFFIN_RUNNER_THREADS unset)
        torch.set_num_threads(1)
    for batch in BATCHES:
        x = images(batch)

        def step(x: Any = x) -> int:
            with torch.inference_mode():
                module(torch.from_numpy(x).to(device)).cpu().numpy()
            return len(x)

        out[batch] = timed(seconds, step)
    torch.set_num_threads(threads)
    return out


def runner_rows_per_s(model: Any, device: str, seconds: float) -> dict[int, float]:
    out: dict[int, float] = {}
    for batch in BATCHES:
        runner = model.to_runner(device=device, max_batch_size=batch)
        runner.init_local()
        x = images(batch)

        async def measure(runner: Any = runner, x: Any = x) -> float:
            await runner.predict.async_run(x)  # warm
            rows, started = 0, time.perf_counter()

            async def caller() -> None:
                nonlocal rows
                while time.perf_counter() - started < seconds:
                    rows += len(await runner.predict.async_run(x))

            await asyncio.gather(caller(), caller())
            return rows / (time.perf_counter() - started)

        try:
            out[batch] = asyncio.run(measure())
        finally:
            runner.destroy()
    return out


# -- HTTP --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def npy(array: Any) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class Server:
    """``tiffin serve-model`` with one API worker and the runner in a runner process."""

    def __init__(self, root: Path, device: str, all_cores: bool) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = root / f"serve-{device}.yaml"
        config.write_text(
            f"workers: 1\naccess_log: false\nlog_level: warning\nrunners:\n  {NAME}:\n"
            f"    workers: 1\n    device: {device}\n    max_batch_size: 256\n"
            "    max_latency_ms: 60000\n"  # measure throughput, not load shedding
        )
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get(
            "PYTHONPATH", "")]).rstrip(os.pathsep), PYTHONUNBUFFERED="1")
        if all_cores:
            env["TIFFIN_RUNNER_THREADS"] = "0"
        self.log = root / f"serve-{device}.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tiffin.cli", "serve-model", f"{NAME}:latest",
                 "--config", str(config), "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 300
        while self._status("/readyz") != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SystemExit(f"gpu_check: the server did not start:\n{self.logs()}")
            time.sleep(0.1)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def _status(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return 0

    def predict(self, x: Any) -> Any:
        import numpy as np

        request = urllib.request.Request(
            self.url + "/predict", data=npy(x), method="POST",
            headers={"Content-Type": "application/octet-stream",
                     "Accept": "application/octet-stream"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as response:
            return np.load(io.BytesIO(response.read()))

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


async def _load(port: int, body: bytes, seconds: float, connections: int) -> dict[str, Any]:
    """The client process: keep-alive HTTP/1.1 POSTs of ``body`` on ``connections``."""
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Content-Type: application/octet-stream\r\nAccept: application/octet-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    request = head + body
    counts: dict[str, Any] = {"ok": 0, "errors": 0, "statuses": {}}
    warm_until = time.perf_counter() + min(1.0, seconds / 4)
    stop_at = warm_until + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while (now := time.perf_counter()) < stop_at:
                writer.write(request)
                status = await reader.readline()
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                if now >= warm_until:
                    ok = b" 200 " in status
                    counts["ok" if ok else "errors"] += 1
                    if not ok:
                        code = status.decode(errors="replace").strip()
                        counts["statuses"][code] = counts["statuses"].get(code, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(connection() for _ in range(connections)))
    return {**counts, "seconds": seconds}


def http_rows_per_s(server: Server, seconds: float, connections: int) -> float:
    """Rows/s from a client process of its own; exits when a request failed."""
    body_file = Path(tempfile.mkstemp(suffix=".npy")[1])
    body_file.write_bytes(npy(images(HTTP_ROWS, seed=1)))
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--client", str(server.port), str(body_file),
             str(seconds), str(connections)],
            capture_output=True, text=True, timeout=seconds + 120,
        )  # fmt: skip
    finally:
        body_file.unlink()
    if done.returncode != 0:
        raise SystemExit(f"gpu_check: the client failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout)
    if result["errors"] or not result["ok"]:
        raise SystemExit(f"gpu_check: {result} failed requests:\n{server.logs()}")
    return float(result["ok"] * HTTP_ROWS / result["seconds"])


# -- the run -------------------------------------------------------------------------------------


def check_answer(server: Server, net: Any) -> None:
    import numpy as np
    import torch

    x = images(HTTP_ROWS, seed=2)
    with torch.inference_mode():
        expected = net(torch.from_numpy(x)).numpy()
    answer = server.predict(x)
    if answer.shape != expected.shape or not np.allclose(answer, expected, rtol=1e-3, atol=1e-3):
        raise SystemExit("gpu_check: the server's answer differs from the model's")


def run(args: argparse.Namespace) -> int:
    _need(["torch", "numpy", "mlflow", "starlette", "uvicorn"])
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit(f"gpu_check: --device {args.device}, but torch {torch.__version__} sees no GPU")
    seconds = 0.3 if args.quick else args.seconds
    http_seconds = 2.0 if args.quick else args.http_seconds
    root = Path(tempfile.mkdtemp(prefix="tiffin-gpu-check-"))
    try:
        return measure(args, root, seconds, http_seconds)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure(args: argparse.Namespace, root: Path, seconds: float, http_seconds: float) -> int:
    import torch

    os.environ["TIFFIN_HOME"] = str(root / "home")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    sys.path.insert(0, str(SRC))
    started = time.perf_counter()
    model, net = log_and_import(root)
    figures: dict[str, Any] = {"device": args.device, "quick": args.quick,
                               "connections": 4 if args.quick else CONNECTIONS,
                               "gpu": torch.cuda.get_device_name(0) if args.device != "cpu"
                               else None}  # fmt: skip
    figures["raw"] = raw_rows_per_s(model, args.device, seconds)
    figures["runner"] = runner_rows_per_s(model, args.device, seconds)
    for device, key in [(args.device, "http"), ("cpu", "cpu")]:
        if key == "cpu" and args.device == "cpu":
            figures["cpu"] = figures["http"]  # the run above was on the CPU already
            continue
        server = Server(root, device, all_cores=key == "cpu")
        try:
            check_answer(server, net)
            figures[key] = http_rows_per_s(server, http_seconds, figures["connections"])
        finally:
            server.stop()
    figures["wall_s"] = time.perf_counter() - started
    return report(figures, enforce=args.device != "cpu" and not args.quick, json_path=args.json)


def report(figures: dict[str, Any], *, enforce: bool, json_path: str | None) -> int:
    raw, runner = figures["raw"], figures["runner"]
    print(f"device {figures['device']} ({figures['gpu'] or 'CPU'}), quick={figures['quick']}")
    print("| batch | raw rows/s | runner rows/s | runner/raw |")
    print("|------:|-----------:|--------------:|-----------:|")
    for batch in BATCHES:
        print(f"| {batch:5d} | {raw[batch]:10.0f} | {runner[batch]:13.0f} | "
              f"{runner[batch] / raw[batch]:9.2f}x |")
    print(f"http, {HTTP_ROWS}-row .npy requests, {figures['connections']} connections: "
          f"{figures['http']:.0f} rows/s ({figures['http'] / raw[HTTP_ROWS]:.2f}x raw at "
          f"batch {HTTP_ROWS}); tiffin on the CPU: {figures['cpu']:.0f} rows/s "
          f"(GPU/CPU {figures['http'] / figures['cpu']:.1f}x); {figures['wall_s']:.0f} s")
    targets = {
        "runner >= 0.8x raw at batch >= 64": all(
            runner[b] >= 0.8 * raw[b] for b in BATCHES if b >= 64),
        "http >= 0.5x raw at batch 64": figures["http"] >= 0.5 * raw[HTTP_ROWS],
        "GPU http >= 10x tiffin on the CPU": figures["http"] >= 10 * figures["cpu"],
    }
    for target, met in targets.items():
        verdict = ("met" if met else "MISSED") if enforce else "reported only"
        print(f"target {target}: {verdict}")
    if json_path:
        Path(json_path).write_text(json.dumps({**figures, "targets": targets}, indent=2))
    return 0 if not enforce or all(targets.values()) else 1


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, body, seconds, connections = sys.argv[2:6]
        result = asyncio.run(_load(int(port), Path(body).read_bytes(), float(seconds),
                                   int(connections)))
        print(json.dumps(result))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    parser.add_argument("--quick", action="store_true",
                        help="short measurements, targets reported only (CI)")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="seconds per raw and runner measurement (default 4)")
    parser.add_argument("--http-seconds", type=float, default=15.0,
                        help="seconds per HTTP load (default 15)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
