"""Serving throughput, latency, start-up and memory: ``tiffin serve-model`` against
``mlflow models serve --env-manager local`` and a bare Starlette endpoint, on the same MLflow
model directory and the same request bodies.

Run with ``python bench/serve.py`` (``--help`` for options). It needs ``wrk`` (Debian:
``apt-get install wrk``) and two CPUs: every server is pinned to CPU 0 (``taskset -c 0``) and
wrk to CPU 1 (``taskset -c 1``), one thread, 64 connections, each sending one-row requests.

Models (made by the script, saved with ``mlflow.sklearn.save_model``, tensor signature of 32
float64 features):

* ``hgb``: bench/batching.py's HistGradientBoostingClassifier (330 trees, depth 2); one-row
  ``predict`` costs about 1.6 ms, 1024 rows about 5.6 ms.
* ``lr``: a LogisticRegression on the same data; ``predict`` costs tens of microseconds.

Servers, each in its own process group, in the environment a user would give
it (``--omp1`` starts all of them with ``OMP_NUM_THREADS=1``):

* ``mlflow``: ``mlflow models serve -m DIR --env-manager local`` (one uvicorn worker).
* ``bare``: bench/_bare_server.py, a Starlette app whose one endpoint parses the body with
  orjson and calls the pyfunc model's ``predict`` per request, no batching.
* ``tiffin``: ``tiffin serve-model TAG`` of the same directory, imported into a temporary
  store first; measured on ``/invocations`` (the body MLflow gets) and on ``/predict`` (its
  rows form, ``[[...]]``).
* ``noop``: the bare server's endpoint that answers without parsing or predicting (the ceiling).

Per model, the servers take turns, so that the shared machine's changing load falls on all of
them alike: each is started ``--starts`` times (at least 2) in turn (spawn-to-ready:
``/readyz`` for tiffin, ``/ping`` otherwise; the last start of each stays up), its idle memory
is read on its first start, while it runs alone (PSS of the process and all its descendants
from ``/proc/<pid>/smaps_rollup``), each is warmed up, and ``--runs`` rounds of wrk runs of
``--seconds`` go to each server and route in turn (the others sit idle on the same CPU
meanwhile). The table shows medians. Targets (ratios taken in the same run) are checked at
the end; the script exits 1 when one is missed.

``python bench/serve.py --matrix`` measures every MLflow model kind in every request format
instead (bench/matrix.py; ``--matrix --help`` for its options).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
FEATURES = 32
CONCURRENCY = 64


@dataclass
class Measured:
    server: str
    model: str
    route: str
    startup_s: float | None = None
    pss_mb: float | None = None
    rps: list[float] = field(default_factory=list)
    p50_ms: list[float] = field(default_factory=list)
    p99_ms: list[float] = field(default_factory=list)
    errors: int = 0

    @property
    def rps_median(self) -> float:
        return statistics.median(self.rps)

    @property
    def p99_median(self) -> float:
        return statistics.median(self.p99_ms)

    @property
    def p50_median(self) -> float:
        return statistics.median(self.p50_ms)


# -- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def env_for(home: Path, omp1: bool = False) -> dict[str, str]:
    """Each server's environment as its users would have it: no OMP_NUM_THREADS unless
    ``--omp1`` (tiffin's runner limits its worker to one native thread by itself)."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("TIFFIN_", "MLFLOW_")) and k != "OMP_NUM_THREADS"
    }  # fmt: skip
    env.update(
        TIFFIN_HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONUNBUFFERED="1",
    )
    if omp1:
        env["OMP_NUM_THREADS"] = "1"
    return env


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, urllib.error.URLError):
        return 0


def pinned(cmd: list[str], cpus: str | None) -> list[str]:
    """``cmd`` under ``taskset -c CPUS``, or as it is when ``cpus`` is None."""
    return cmd if cpus is None else ["taskset", "-c", cpus, *cmd]


class Server:
    """A server process in its own process group, pinned to ``cpus`` (CPU 0 by default)."""

    def __init__(
        self, cmd: list[str], port: int, ready: str, env: dict[str, str], log: Path,
        cpus: str | None = "0",
    ) -> None:  # fmt: skip
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        started = time.perf_counter()
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                pinned(cmd, cpus), stdout=out, stderr=subprocess.STDOUT, env=env,
                cwd=log.parent, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 120
        while get(self.url + ready) != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{cmd} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.01)
        self.startup_s = time.perf_counter() - started

    def pss_mb(self) -> float:
        """PSS of the process tree, in MB (10^6 bytes)."""
        return self.memory_mb()["Pss"]

    def memory_mb(self) -> dict[str, float]:
        """RSS and PSS summed over the process tree, in MB (10^6 bytes), and its size."""
        total_kb = {"Rss": 0, "Pss": 0}
        pids = _tree(self.proc.pid)
        for pid in pids:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    key = line.split(":", 1)[0]
                    if key in total_kb:
                        total_kb[key] += int(line.split()[1])
        return {"Rss": total_kb["Rss"] * 1024 / 1e6, "Pss": total_kb["Pss"] * 1024 / 1e6,
                "processes": len(pids)}

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


# -- load ------------------------------------------------------------------------------------


def lua_script(path: Path, body: str, content_type: str, extra: str = "") -> Path:
    """A wrk script that POSTs ``body``; ``extra`` Lua (hooks such as ``response``) follows."""
    assert "]==]" not in body
    path.write_text(
        'wrk.method = "POST"\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
        f"wrk.body = [==[{body}]==]\n" + extra
    )
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()  # type: ignore[union-attr]
    return float(number) * _UNITS[unit]


def wrk_output(url: str, script: Path, seconds: int, cpus: str | None = "1") -> str:
    """wrk's report of one run: one thread, ``CONCURRENCY`` connections, pinned to ``cpus``."""
    return subprocess.run(
        pinned(["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{max(1, seconds)}s", "--latency",
                "--timeout", "10s", "-s", str(script), url], cpus),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip


def wrk(
    url: str, script: Path, seconds: int, cpus: str | None = "1"
) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, non-2xx responses + socket errors) of one wrk run."""
    return parse_wrk(wrk_output(url, script, seconds, cpus))


def parse_wrk(out: str) -> tuple[float, float, float, int]:
    """(requests/s, p50 ms, p99 ms, non-2xx responses + socket errors) from wrk's report."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    errors = 0
    if match := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(match.group(1))
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                          out):
        errors += sum(int(g) for g in match.groups())
    return rps, p50, p99, errors


# -- models ------------------------------------------------------------------------------------


def one_row() -> list[float]:
    """The row of every request (``{"inputs": [ROW]}`` to ``/invocations``)."""
    import numpy as np

    return list(np.random.default_rng(2).normal(size=FEATURES).round(6).tolist())


def import_models(dirs: dict[str, Path], env: dict[str, str]) -> None:
    """Import each MLflow model directory into tiffin's store (``TIFFIN_HOME`` of ``env``) under
    its own name, as a user would."""
    for name, path in dirs.items():
        subprocess.run([str(BIN / "tiffin"), "models", "import-mlflow", name, str(path)],
                       env=env, check=True, capture_output=True)


def make_models(root: Path) -> dict[str, Path]:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(HERE))
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    import numpy as np
    from batching import FEATURES as BATCH_FEATURES
    from batching import train
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    assert BATCH_FEATURES == FEATURES
    hgb = train(330)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, FEATURES))
    y = (x[:, :4].sum(axis=1) > 0).astype(int)
    lr = LogisticRegression(max_iter=500).fit(x, y)
    dirs = {}
    for name, model in (("hgb", hgb), ("lr", lr)):
        path = root / name
        mlflow.sklearn.save_model(
            model, str(path), signature=infer_signature(x[:2], model.predict(x[:2])),
            pip_requirements=["scikit-learn"], serialization_format="cloudpickle",
        )  # fmt: skip
        dirs[name] = path
    return dirs


def one_row_cost_ms(path: Path, rows: int) -> float:
    import mlflow
    import numpy as np

    model = mlflow.pyfunc.load_model(str(path))
    x = np.random.default_rng(1).normal(size=(rows, FEATURES))
    model.predict(x)
    times = []
    for _ in range(50 if rows == 1 else 10):
        started = time.perf_counter()
        model.predict(x)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


# -- the run -----------------------------------------------------------------------------------


def wrk_into(result: Measured, server: Server, script: Path, seconds: int) -> None:
    rps, p50, p99, errors = wrk(server.url + result.route, script, seconds)
    result.rps.append(rps)
    result.p50_ms.append(p50)
    result.p99_ms.append(p99)
    result.errors += errors
    print(f"    {result.server:<8} {result.route:<12} {rps:>9.0f} req/s  p50 {p50:6.1f} ms  "
          f"p99 {p99:6.1f} ms  errors {errors}", flush=True)


def server_command(
    kind: str, model: str, model_dir: Path, port: int, inputs: Path, rows: Path
) -> tuple[list[str], str, list[tuple[str, Path]]]:
    """(command, readiness path, [(route, wrk script)]) of one server kind."""
    if kind == "mlflow":
        cmd = [str(BIN / "mlflow"), "models", "serve", "-m", str(model_dir),
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
        return cmd, "/ping", [("/invocations", inputs)]
    if kind == "tiffin":
        cmd = [str(BIN / "tiffin"), "serve-model", f"{model}:latest",
               "--host", "127.0.0.1", "--port", str(port)]
        return cmd, "/readyz", [("/invocations", inputs), ("/predict", rows)]
    if kind in ("bare", "noop"):
        cmd = [sys.executable, str(HERE / "_bare_server.py"), str(model_dir), str(port)]
        return cmd, "/ping", [("/invocations", inputs)] if kind == "bare" else [("/noop", inputs)]
    raise SystemExit(f"unknown server {kind!r}")


def measure_model(
    model: str, model_dir: Path, args: argparse.Namespace, root: Path, env: dict[str, str],
    inputs: Path, rows: Path,
) -> list[Measured]:  # fmt: skip
    """Every server of ``args.servers`` on one model, taking turns (see the module doc)."""
    startups: dict[str, list[float]] = {kind: [] for kind in args.servers}
    pss_mb: dict[str, float] = {}
    servers: dict[str, Server] = {}
    starts = max(args.starts, 2)
    try:
        for start in range(starts):
            for kind in args.servers:
                port = free_port()
                cmd, ready, _ = server_command(kind, model, model_dir, port, inputs, rows)
                server = Server(cmd, port, ready, env, root / f"{kind}-{model}-{start}.log")
                startups[kind].append(server.startup_s)
                if start == 0:
                    # idle memory while it runs alone: PSS splits shared pages between the
                    # processes that map them, so another server up would make it look smaller
                    time.sleep(0.5)
                    pss_mb[kind] = server.pss_mb()
                if start == starts - 1:
                    servers[kind] = server
                else:
                    server.stop()
        results: list[tuple[Measured, Server, Path]] = []
        for kind, server in servers.items():
            startup = statistics.median(startups[kind])
            pss = pss_mb[kind]
            port = int(server.url.rsplit(":", 1)[1])
            for route, script in server_command(kind, model, model_dir, port, inputs, rows)[2]:
                results.append((Measured(kind, model, route, startup, pss), server, script))
            print(f"  {kind:<8} start-up {', '.join(f'{s:.2f}' for s in startups[kind])} s "
                  f"(median {startup:.2f}), idle PSS {pss:.0f} MB", flush=True)
        for result, server, script in results:
            wrk(server.url + result.route, script, args.warmup)
        for turn in range(args.runs):
            print(f"  round {turn + 1}:", flush=True)
            for result, server, script in results:
                wrk_into(result, server, script, args.seconds)
    finally:
        for server in servers.values():
            server.stop()
    return [result for result, _, _ in results]


def run(args: argparse.Namespace, root: Path) -> list[Measured]:
    dirs = make_models(root / "models")
    for name, path in dirs.items():
        print(f"model {name}: one-row predict {one_row_cost_ms(path, 1):.2f} ms, "
              f"1024 rows {one_row_cost_ms(path, 1024):.2f} ms (pyfunc, this process)")
    row = one_row()
    inputs = lua_script(root / "inputs.lua", '{"inputs": [' + str(row) + ']}', "application/json")
    rows = lua_script(root / "rows.lua", '[' + str(row) + ']', "application/json")
    env = env_for(root / "home", args.omp1)
    import_models(dirs, env)
    results = []
    for model in args.models:
        print(f"{model}:", flush=True)
        results += measure_model(model, dirs[model], args, root, env, inputs, rows)
    return results


def report(results: list[Measured]) -> bool:
    by = {(r.server, r.model, r.route): r for r in results}
    print("\n| model | server | route | req/s (median) | p50 ms | p99 ms | start-up s | "
          "idle PSS MB | errors |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r.model} | {r.server} | `{r.route}` | {r.rps_median:,.0f} | "
              f"{r.p50_median:.1f} | {r.p99_median:.1f} | {r.startup_s:.2f} | "
              f"{r.pss_mb:.0f} | {r.errors} |")
    checks: list[tuple[str, float, str, bool]] = []

    def ratio(name: str, got: float, target: float, higher: bool = True) -> None:
        ok = got >= target if higher else got <= target
        sign = ">=" if higher else "<="
        checks.append((name, got, f"{sign} {target:g}", ok))

    t = by.get(("tiffin", "hgb", "/invocations"))
    if t is not None:
        if (bare := by.get(("bare", "hgb", "/invocations"))) is not None:
            ratio("hgb: tiffin / bare req/s", t.rps_median / bare.rps_median, 5)
        if (ml := by.get(("mlflow", "hgb", "/invocations"))) is not None:
            ratio("hgb: tiffin / mlflow req/s", t.rps_median / ml.rps_median, 25)
            ratio("hgb: tiffin / mlflow start-up", t.startup_s / ml.startup_s, 0.5,  # type: ignore[operator]
                  higher=False)
            ratio("hgb: tiffin / mlflow idle PSS", t.pss_mb / ml.pss_mb, 0.6,  # type: ignore[operator]
                  higher=False)
        ratio("hgb: tiffin p99 ms", t.p99_median, 30, higher=False)
    t = by.get(("tiffin", "lr", "/invocations"))
    if t is not None and (bare := by.get(("bare", "lr", "/invocations"))) is not None:
        ratio("lr: tiffin / bare req/s", t.rps_median / bare.rps_median, 1.5)
    errors = sum(r.errors for r in results if r.server != "noop")
    print("\n| target | measured | wanted | met |\n|---|---|---|---|")
    for name, got, wanted, ok in checks:
        print(f"| {name} | {got:.2f} | {wanted} | {'yes' if ok else 'NO'} |")
    if errors:
        print(f"\n{errors} requests failed (non-2xx or socket errors); see the logs")
    return all(ok for *_, ok in checks) and not errors


def main() -> int:
    if "--matrix" in sys.argv[1:]:  # every model kind x request format: bench/matrix.py
        import matrix

        return matrix.main([a for a in sys.argv[1:] if a != "--matrix"])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run (5)")
    parser.add_argument("--runs", type=int, default=3, help="wrk runs per server (3)")
    parser.add_argument("--starts", type=int, default=3,
                        help="start-up measurements per server (3; at least 2)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up load (2)")
    parser.add_argument("--models", nargs="+", default=["hgb", "lr"], choices=["hgb", "lr"])
    parser.add_argument("--servers", nargs="+", default=["mlflow", "bare", "tiffin", "noop"],
                        choices=["mlflow", "bare", "tiffin", "noop"])
    parser.add_argument("--omp1", action="store_true",
                        help="start every server with OMP_NUM_THREADS=1")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench/serve.py needs wrk, the HTTP load generator, and it is not installed: "
              "`apt-get install wrk` (Debian), then run this again.", file=sys.stderr)
        return 2
    if shutil.which("taskset") is None or len(os.sched_getaffinity(0)) < 2:
        print("bench/serve.py needs taskset and two CPUs (server on CPU 0, wrk on CPU 1)",
              file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="tiffin-bench-serve-"))
    try:
        ok = report(run(args, root))
    finally:
        if args.keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
