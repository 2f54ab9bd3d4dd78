"""``python bench/serve.py --matrix``: every MLflow model kind in every request format, against
``mlflow models serve`` and a bare Starlette endpoint, in one run.

Models: tests/mlflow_kinds.py's eight kinds (float32, float64 and int64 tensors, named numeric
columns, mixed columns, no signature, a PythonModel with artifacts and a ParamSchema, a PyTorch
MLP), each saved by MLflow with an ``input_example`` as a user saves it, at two costs: ``heavy``
(a one-row predict of about 1.5-2.5 ms) and ``lr`` (a LogisticRegression, tens of µs; one
linear layer for PyTorch). Formats: ``bodies()``' -- MLflow's four JSON envelopes, CSV and
Parquet on ``/invocations``; JSON rows (or columns) and ``.npy`` on ``/predict``. One-row
requests throughout.

Per (cost, kind), every server pinned to CPU 0 and wrk (one thread) to CPU 1:

* ``mlflow models serve --env-manager local`` (one worker): requests/s at 64 connections of
  the same row as ``dataframe_split`` (what MLflow's docs and clients send);
* ``tiffin serve-model`` of the same directory (imported into a temporary store) and
  bench/_bare_matrix.py (the format's direct decoder, then the flavor's ``predict`` inline, no
  validation), both up at once; for each format in turn: tiffin at 1 connection, the bare
  server at 1 connection (p50), then tiffin at 64 connections (requests/s, p99).

Then, in this process, the CPU time of tiffin's parse step per format (the functions the
routes call: JSON decode and signature conversion, CSV, Parquet, ``.npy``), median of
``--parse-repeats`` timings of a loop of calls, and MLflow's own parse of ``dataframe_split``
for comparison.

Targets (checked at the end; the script exits 1 when one is missed), per model: every cell at
64 connections at least ``25x`` mlflow's ``dataframe_split`` and at least ``0.5x`` tiffin's best
cell of that model; at 1 connection every cell's p50 within ``1.2x`` the bare server's p50 of
the same format (``1.5x`` for ``lr``). A row of the table gives what each cell measured.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import serve as bs

ROOT = bs.HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

import mlflow_kinds as mk  # noqa: E402  (tests/mlflow_kinds.py: the model kinds)

COSTS = ("heavy", "lr")
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs", "csv", "parquet",
           "predict_json", "predict_npy")  # fmt: skip
TARGET_VS_MLFLOW = 25.0
TARGET_VS_BEST = 0.5
TARGET_VS_BARE = {"heavy": 1.2, "lr": 1.5}


@dataclass
class Cell:
    cost: str
    kind: str
    fmt: str
    rps: float = 0.0
    p99_ms: float = 0.0
    p50_1c_ms: float = 0.0
    bare_p50_1c_ms: float = 0.0
    parse_us: float | None = None
    fallback: bool = False
    errors: int = 0
    notes: list[str] = field(default_factory=list)


#: one-row bodies per format, of as many rows of the kind's pool, that each wrk connection sends
#: in turn: a server meets other values request after request, as from a real client
ROWS = 16


def rotated(info: Any) -> dict[str, tuple[str, str, list[bytes]]]:
    """Per format: (route, content type, ``ROWS`` one-row bodies of different rows)."""
    pool = info.pool
    each = [mk.bodies(info, pool[i : i + 1] if isinstance(pool, np.ndarray) else
                      pool.iloc[i : i + 1]) for i in range(ROWS)]  # fmt: skip
    return {fmt: (route, ct, [b[fmt][2] for b in each]) for fmt, (route, ct, _) in each[0].items()}


def body_script(root: Path, name: str, content_type: str, bodies: list[bytes]) -> Path:
    """A wrk script that POSTs ``bodies`` in turn (read from files: they may be binary)."""
    paths = []
    for i, body in enumerate(bodies):
        paths.append(root / f"{name}-{i}.body")
        paths[-1].write_bytes(body)
    script = root / f"{name}.lua"
    files = ", ".join(f'"{p}"' for p in paths)
    script.write_text(
        'wrk.method = "POST"\n'
        f'wrk.headers["Content-Type"] = "{content_type}"\n'
        f"local files = {{{files}}}\n"
        "local requests, n = {}, 0\n"
        "function init(args)\n"
        "  for i, path in ipairs(files) do\n"
        '    local f = assert(io.open(path, "rb"))\n'
        "    requests[i] = wrk.format(nil, nil, nil, f:read('*all'))\n"
        "    f:close()\n"
        "  end\n"
        "end\n"
        "function request()\n"
        "  n = n % #requests + 1\n"
        "  return requests[n]\n"
        "end\n"
    )
    return script


def wrk1(url: str, script: Path, seconds: int) -> tuple[float, float, float, int]:
    """One wrk run at one connection."""
    import subprocess

    out = subprocess.run(
        bs.pinned(["wrk", "-t1", "-c1", f"-d{seconds}s", "--latency", "--timeout", "10s",
                   "-s", str(script), url], "1"),
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return bs.parse_wrk(out)


def start(cmd: list[str], ready: str, env: dict[str, str], log: Path) -> bs.Server:
    port = bs.free_port()
    cmd = [part.replace("{port}", str(port)) for part in cmd]
    return bs.Server(cmd, port, ready, env, log)


def measure_kind(
    cost: str, kind: str, info: Any, tag: str, env: dict[str, str], root: Path, seconds: int,
    only: list[str] | None = None,
) -> tuple[float, list[Cell]]:
    """(mlflow's dataframe_split req/s, the cells) of one model (``only``: these formats)."""
    formats = rotated(info)
    scripts_for = formats
    formats = {f: b for f, b in formats.items() if not only or f in only}
    work = root / f"{cost}-{kind}"
    work.mkdir()
    scripts = {f: body_script(work, f, ct, bodies) for f, (_, ct, bodies) in scripts_for.items()}
    mlflow_cmd = [str(bs.BIN / "mlflow"), "models", "serve", "-m", str(info.path),
                  "--env-manager", "local", "-h", "127.0.0.1", "-p", "{port}", "-w", "1"]
    server = start(mlflow_cmd, "/ping", env, work / "mlflow.log")
    try:
        bs.wrk(server.url + "/invocations", scripts["dataframe_split"], 1)
        mlflow_rps, _, _, errors = bs.wrk(server.url + "/invocations",
                                          scripts["dataframe_split"], seconds)
        if errors:
            raise SystemExit(f"mlflow {cost} {kind}: {errors} failed requests ({work})")
    finally:
        server.stop()
    print(f"  {kind:<15} mlflow dataframe_split {mlflow_rps:8.0f} req/s", flush=True)
    tiffin_cmd = [str(bs.BIN / "tiffin"), "serve-model", f"{tag}:latest",
                  "--host", "127.0.0.1", "--port", "{port}"]
    bare_cmd = [sys.executable, str(bs.HERE / "_bare_matrix.py"), str(info.path), "{port}"]
    tiffin = start(tiffin_cmd, "/readyz", env, work / "tiffin.log")
    cells = []
    try:
        bare = start(bare_cmd, "/ping", env, work / "bare.log")
        try:
            for fmt, (route, _, _) in formats.items():
                cell = Cell(cost, kind, fmt)
                script = scripts[fmt]
                if not cells:  # warm-up, once per server: the first runs load the code paths
                    wrk1(tiffin.url + route, script, 1)
                    wrk1(bare.url + f"/f/{fmt}", script, 1)
                _, cell.p50_1c_ms, _, e1 = wrk1(tiffin.url + route, script, seconds)
                _, cell.bare_p50_1c_ms, _, e2 = wrk1(bare.url + f"/f/{fmt}", script, seconds)
                cell.rps, _, cell.p99_ms, e3 = bs.wrk(tiffin.url + route, script, seconds)
                cell.errors = e1 + e3
                if e2:
                    cell.notes.append(f"bare failed {e2}")
                cells.append(cell)
                print(f"  {kind:<15} {fmt:<17} {cell.rps:8.0f} req/s  p99 {cell.p99_ms:6.1f} ms"
                      f"  1-conn p50 {cell.p50_1c_ms:5.2f} ms (bare {cell.bare_p50_1c_ms:5.2f})"
                      f"  errors {cell.errors}", flush=True)
        finally:
            bare.stop()
    finally:
        tiffin.stop()
    return mlflow_rps, cells


# -- the parse step, in this process -----------------------------------------------------------


def _cpu_us(func: Any, repeats: int) -> float:
    """Median CPU µs of one call of ``func`` (timed over loops of about 20 ms)."""
    func()
    started, n = time.process_time(), 0
    while time.process_time() - started < 0.02:
        func()
        n += 1
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        for _ in range(n):
            func()
        times.append((time.process_time() - t0) / n * 1e6)
    return statistics.median(times)


def parse_costs(
    tag: str, info: Any, repeats: int, only: list[str] | None = None
) -> dict[str, tuple[float, bool]]:
    """CPU µs of tiffin's parse step per format, and whether it fell back to MLflow's parser;
    ``mlflow:dataframe_split`` is MLflow's own parse and schema enforcement of that body."""
    import orjson

    from tiffin.frameworks import mlflow as tm
    from tiffin.frameworks.mlflow.inputs import FALLBACK, InputSchema
    from tiffin.serving import mlflow_inputs as mi
    from tiffin.serving.model_service import build_service

    model = tm.get(f"{tag}:latest")
    schema = InputSchema.from_model(model, columnar=True)  # as the server reads (pyfunc)
    predict = build_service(model).apis["predict"].input
    out: dict[str, tuple[float, bool]] = {}
    for fmt, (route, content_type, bodies) in rotated(info).items():
        if only and fmt not in only:
            continue
        turn = itertools.cycle(bodies).__next__  # other values each call, as the servers get
        if route == "/predict":
            def call(turn: Any = turn, ct: str = content_type) -> Any:
                return predict.decode_request(turn(), ct)
        elif fmt == "csv":
            def call(turn: Any = turn) -> Any:
                return mi.from_csv(turn(), schema, True)
        elif fmt == "parquet":
            def call(turn: Any = turn) -> Any:
                return mi.from_parquet(turn(), schema)
        else:
            def call(turn: Any = turn) -> Any:
                return mi.from_invocation(orjson.loads(turn()), schema, True)
        out[fmt] = (_cpu_us(call, repeats), call() is FALLBACK)
    from mlflow.pyfunc import _enforce_schema
    from mlflow.pyfunc import scoring_server as ss

    pyfunc_meta = __import__("mlflow").models.Model.load(str(info.path))
    split = mk.bodies(info, 1)["dataframe_split"][2].decode()
    input_schema = pyfunc_meta.get_input_schema()

    def mlflow_parse() -> Any:
        data = ss.infer_and_parse_data(orjson.loads(split), input_schema)
        return _enforce_schema(data, input_schema) if input_schema is not None else data

    out["mlflow:dataframe_split"] = (_cpu_us(mlflow_parse, repeats), False)
    return out


# -- the run -------------------------------------------------------------------------------------


def run(args: argparse.Namespace, root: Path) -> tuple[list[Cell], dict[tuple[str, str], float]]:
    env = bs.env_for(root / "home", args.omp1)
    os.environ["TIFFIN_HOME"] = env["TIFFIN_HOME"]
    cells: list[Cell] = []
    mlflow_rps: dict[tuple[str, str], float] = {}
    for cost in args.costs:
        print(f"{cost}:", flush=True)
        for kind in args.kinds:
            info = mk.save_kind(kind, root / "models" / f"{cost}-{kind}", cost=cost)
            tag = f"{kind.replace('_', '-')}-{cost}"
            bs.import_models({tag: info.path}, env)
            mlflow_rps[(cost, kind)], got = measure_kind(
                cost, kind, info, tag, env, root, args.seconds, args.formats)
            parsed = parse_costs(tag, info, args.parse_repeats, args.formats)
            for cell in got:
                cell.parse_us, cell.fallback = parsed[cell.fmt]
            print(f"  {kind:<15} parse µs: " + ", ".join(
                f"{f} {us:.0f}{' (mlflow parser)' if fb else ''}"
                for f, (us, fb) in parsed.items()), flush=True)  # fmt: skip
            cells += got
    return cells, mlflow_rps


def report(cells: list[Cell], mlflow_rps: dict[tuple[str, str], float]) -> bool:
    best = {}
    for cell in cells:
        best[cell.cost] = max(best.get(cell.cost, 0.0), cell.rps)
    best_kind = {}
    for cell in cells:
        key = (cell.cost, cell.kind)
        best_kind[key] = max(best_kind.get(key, 0.0), cell.rps)
    print("\n| cost | kind | format | req/s (64 conns) | p99 ms | x mlflow split | x best cell "
          "| p50 ms (1 conn) | bare p50 ms | x bare | parse µs (CPU) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    failed = []
    for c in cells:
        vs_mlflow = c.rps / mlflow_rps[(c.cost, c.kind)]
        vs_best = c.rps / best_kind[(c.cost, c.kind)]
        vs_bare = c.p50_1c_ms / c.bare_p50_1c_ms if c.bare_p50_1c_ms else float("nan")
        limit = TARGET_VS_BARE[c.cost]
        misses = [
            name
            for name, ok in (
                ("x mlflow", vs_mlflow >= TARGET_VS_MLFLOW),
                ("x best", vs_best >= TARGET_VS_BEST),
                ("x bare", vs_bare <= limit),
                ("errors", not c.errors),
            )
            if not ok
        ]
        if misses:
            failed.append(f"{c.cost} {c.kind} {c.fmt}: {', '.join(misses)}")
        parse = "" if c.parse_us is None else f"{c.parse_us:.0f}" + (" (mlflow)" if c.fallback
                                                                       else "")
        print(f"| {c.cost} | {c.kind} | {c.fmt} | {c.rps:,.0f} | {c.p99_ms:.1f} | "
              f"{vs_mlflow:.1f} | {vs_best:.2f} | {c.p50_1c_ms:.2f} | {c.bare_p50_1c_ms:.2f} | "
              f"{vs_bare:.2f} | {parse} |")
    print("\n| cost | kind | mlflow dataframe_split req/s |\n|---|---|---:|")
    for (cost, kind), rps in mlflow_rps.items():
        print(f"| {cost} | {kind} | {rps:,.0f} |")
    if failed:
        print(f"\n{len(failed)} cells missed a target:")
        for line in failed:
            print(f"  {line}")
    else:
        print("\nevery cell met every target")
    return not failed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/serve.py --matrix", description=__doc__)
    parser.add_argument("--seconds", type=int, default=2, help="per wrk run (2)")
    parser.add_argument("--costs", nargs="+", default=list(COSTS), choices=COSTS)
    parser.add_argument("--kinds", nargs="+", default=list(mk.KINDS), choices=mk.KINDS)
    parser.add_argument("--formats", nargs="+", default=None, choices=FORMATS,
                        help="only these formats (every one that applies to a kind by default)")
    parser.add_argument("--parse-repeats", type=int, default=5, help="parse timings (5)")
    parser.add_argument("--omp1", action="store_true",
                        help="start every server with OMP_NUM_THREADS=1")
    args = parser.parse_args(argv)
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="tiffin-bench-matrix-"))
    started = time.monotonic()
    try:
        ok = report(*run(args, root))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"\nran {time.monotonic() - started:.0f} s")
    return 0 if ok else 1
