"""This tree against another commit of tiffin, in one run: serving and batching figures.

Run with ``python bench/compare.py --base REF`` (``--help`` for options). It extracts the
``src/`` of ``REF`` (any git revision: a commit, ``main``, a tag) into a temporary directory,
then takes ``--rounds`` turns, each running both versions one after the other (the order
alternates from round to round, so the shared machine's changing load falls on both alike):

* **serve**: ``tiffin serve-model`` of bench/serve.py's models (the same MLflow model
  directories, imported once), pinned to CPU 0, loaded by wrk on CPU 1 with 64 connections
  of one-row requests, on ``/invocations`` (``{"inputs": ...}``) and ``/predict`` (rows);
* **batching**: bench/batching.py (1, 16 and 64 concurrent callers through a runner).

Both versions run from this tree's scripts and virtual environment; only ``PYTHONPATH``
differs. The table gives medians per version and their ratio (this tree / base); the script
exits 1 when a ratio of requests/s or rows/s falls outside ``1 ± --tolerance``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import serve as bench_serve  # noqa: E402  (bench/serve.py: models, servers, wrk)

Figures = dict[tuple[str, ...], list[float]]


def extract(ref: str, into: Path) -> Path:
    """``src/`` of git revision ``ref``, unpacked under ``into``."""
    archive = into / "base.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "archive", ref, "src"], cwd=ROOT, stdout=out, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def side_env(env: dict[str, str], src: Path) -> dict[str, str]:
    # bench/ too: the benchmark's models are pickled with references to bench/batching.py
    return {**env, "PYTHONPATH": os.pathsep.join([str(src), str(HERE)])}


def serve_round(
    side: str, src: Path, models: list[str], env: dict[str, str], root: Path,
    scripts: dict[str, Path], seconds: int, figures: Figures,
) -> None:  # fmt: skip
    for model in models:
        port = bench_serve.free_port()
        cmd = [sys.executable, "-m", "tiffin.cli", "serve-model", f"{model}:latest",
               "--host", "127.0.0.1", "--port", str(port)]
        log = root / f"{side}-{model}-{time.monotonic_ns()}.log"
        server = bench_serve.Server(cmd, port, "/readyz", side_env(env, src), log)
        try:
            for route, script in scripts.items():
                bench_serve.wrk(server.url + route, script, 2)  # warm-up
                rps, _p50, p99, errors = bench_serve.wrk(server.url + route, script, seconds)
                if errors:
                    raise SystemExit(f"{side} {model} {route}: {errors} failed requests; {log}")
                figures[("serve", model, route, "req/s", side)].append(rps)
                figures[("serve", model, route, "p99 ms", side)].append(p99)
                print(f"    {side:<4} {model:<4} {route:<12} {rps:>9,.0f} req/s  p99 {p99:6.1f} ms",
                      flush=True)
        finally:
            server.stop()


# a row of bench/batching.py's table: model, callers, calls, median ms, p99 ms, rows/s, kind
_ROW = re.compile(r"^\|" + r"\|".join([r"\s*(\S+)\s*"] * 7) + r"\|$")


def batching_round(side: str, src: Path, env: dict[str, str], seconds: float,
                   figures: Figures) -> None:
    out = subprocess.run(
        [sys.executable, str(HERE / "batching.py"), "--seconds", str(seconds), "--rounds", "1"],
        env=side_env(env, src), capture_output=True, text=True, cwd=ROOT,
    ).stdout  # the script exits 1 when its own targets are missed; the table is what counts
    for line in out.splitlines():
        match = _ROW.match(line.strip())
        if match is None:
            continue
        label, callers, _calls, median_ms, _p99, rows_s, kind = match.groups()
        if not callers.isdigit():
            continue  # the header
        if kind in ("direct", "thread"):
            continue  # the baselines call the model directly: not tiffin's code
        figures[("batching", label, f"{callers} callers", "rows/s", side)].append(float(rows_s))
        figures[("batching", label, f"{callers} callers", "median ms", side)].append(
            float(median_ms)
        )
    print(f"    {side:<4} batching: {sum(1 for k in figures if k[0] == 'batching')} figures",
          flush=True)


def report(figures: Figures, tolerance: float) -> bool:
    keys = sorted({key[:-1] for key in figures})
    print("\n| bench | model | what | figure | base (median) | this tree (median) | ratio |")
    print("|---|---|---|---|---:|---:|---:|")
    ok = True
    for key in keys:
        base, new = figures.get((*key, "base"), []), figures.get((*key, "new"), [])
        if not base or not new:
            continue
        b, n = statistics.median(base), statistics.median(new)
        ratio = n / b if b else float("nan")
        throughput = key[-1] in ("req/s", "rows/s")
        flag = ""
        if throughput and abs(ratio - 1) > tolerance:
            ok, flag = False, " **outside**"
        print(f"| {key[0]} | {key[1]} | `{key[2]}` | {key[3]} | {b:,.1f} | {n:,.1f} | "
              f"{ratio:.3f}{flag} |")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="git revision to compare against")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run (5)")
    parser.add_argument("--batching-seconds", type=float, default=2.0,
                        help="per batching measurement (2)")
    parser.add_argument("--models", nargs="+", default=["hgb", "lr"], choices=["hgb", "lr"])
    parser.add_argument("--skip", nargs="*", default=[], choices=["serve", "batching"])
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="largest allowed |ratio - 1| of a throughput (0.05)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tiffin-compare-") as tmp:
        root = Path(tmp)
        sides = {"base": extract(args.base, root), "new": ROOT / "src"}
        env = bench_serve.env_for(root / "home")
        env.pop("PYTHONPATH", None)
        scripts: dict[str, Path] = {}
        if "serve" not in args.skip:
            dirs = bench_serve.make_models(root / "models")
            bench_serve.import_models({m: dirs[m] for m in args.models}, env)
            row = bench_serve.one_row()
            scripts = {
                "/invocations": bench_serve.lua_script(
                    root / "inputs.lua", '{"inputs": [' + str(row) + "]}", "application/json"),
                "/predict": bench_serve.lua_script(
                    root / "rows.lua", "[" + str(row) + "]", "application/json"),
            }  # fmt: skip
        figures: Figures = defaultdict(list)
        for turn in range(args.rounds):
            order = ["base", "new"] if turn % 2 == 0 else ["new", "base"]
            print(f"round {turn + 1}: {' then '.join(order)}", flush=True)
            for side in order:
                if "serve" not in args.skip:
                    serve_round(side, sides[side], args.models, env, root, scripts,
                                args.seconds, figures)
                if "batching" not in args.skip:
                    batching_round(side, sides[side], env, args.batching_seconds, figures)
        ok = report(figures, args.tolerance)
    os.environ.pop("PYTHONPATH", None)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
