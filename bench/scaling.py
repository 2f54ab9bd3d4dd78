"""What ``--workers 2`` buys over ``--workers 1``: ``tiffin serve-model`` of bench/serve.py's
``hgb`` model (one-row ``predict`` about 1.6 ms) on two cores, under the same wrk load.

Run with ``python bench/scaling.py`` (``--help`` for options). It needs ``wrk`` and two CPUs.
The servers start once and stay up side by side (an idle one costs nothing); their wrk runs
take turns, ``--runs`` each, so a shared machine's changing load falls on all alike. The
servers and wrk (one thread, 64 connections, one-row ``{"inputs": [[32 floats]]}`` bodies to
``/invocations``) are all pinned to the same CPUs, ``--cpus`` (default ``0,1``): the process
tree and the load generator share the two cores, as on a small host.

* ``--workers 1``: one process, the runner inside it (its own worker thread).
* ``--workers 2``: a supervisor, two API worker processes and one runner process; each call
  crosses a Unix socket to the runner process, where calls from both workers batch together.
* ``--workers 2`` with the runner embedded (``TIFFIN_RUNNERS__HGB__EMBEDDED=true``, layout
  ``2e``): a supervisor and two API workers, each with the model loaded and batching its own
  calls; no runner process, no hop.

The API workers listen on sockets of their own (``SO_REUSEPORT``), so how wrk's 64 keep-alive
connections split between them is up to the kernel's hash; each run prints the split (``ss``).

Each run also prints the CPU it cost per request, by process and thread (``utime + stime``
from ``/proc/<pid>/task/*/stat``): the API side's event loop(s), the runner process's event
loop and its other threads (the model's worker thread), and for ``--workers 1`` the one
process's event loop and other threads; the medians end the report.

``--layouts 1 2 1+runner`` adds a third layout the command line does not offer: the
supervisor with one API worker and one runner process (``serve_workers(..., 1)`` called from
Python), i.e. ``--workers 2`` less one API worker.

Target: ``--workers 2`` at least 1.3x the req/s of ``--workers 1`` (medians, same run), printed
for each ``--workers 2`` layout; the script exits 1 when no layout meets it. Everything else
(models, store, wrk, memory) is bench/serve.py's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve import (
    BIN,
    Measured,
    Server,
    _tree,
    env_for,
    free_port,
    import_models,
    lua_script,
    make_models,
    one_row,
    one_row_cost_ms,
    wrk,
)

TARGET = 1.3
LAYOUTS = {  # name: (what runs, processes)
    "1": ("serve-model --workers 1", "1"),
    "2": ("serve-model --workers 2", "1 + 2 + 1"),
    "2e": ("serve-model --workers 2, embedded runner", "1 + 2"),
    "1+runner": ("supervisor, 1 API worker, 1 runner process", "1 + 1 + 1"),
}
# the supervisor with one API worker: what --workers 2 is, less one API worker
ONE_API_WORKER = """
import sys
from tiffin import models
from tiffin.config import ServeSettings
from tiffin.process.supervisor import ServiceSource, serve_workers
settings = ServeSettings(host="127.0.0.1", port=int(sys.argv[1]))
sys.exit(serve_workers(ServiceSource(model_tag=str(models.get("hgb:latest").tag)), settings, 1))
"""


def start(layout: str, env: dict[str, str], root: Path, cpus: str) -> Server:
    port = free_port()
    if layout == "1+runner":
        cmd = [sys.executable, "-c", ONE_API_WORKER, str(port)]
    else:
        cmd = [str(BIN / "tiffin"), "serve-model", "hgb:latest", "--host", "127.0.0.1",
               "--port", str(port), "--workers", layout.rstrip("e")]  # fmt: skip
    if layout == "2e":  # the runner loads in each API worker: no runner process, no hop
        env = {**env, "TIFFIN_RUNNERS__HGB__EMBEDDED": "true"}
    return Server(cmd, port, "/readyz", env, root / f"layout-{layout}.log", cpus=cpus)


def connections(server: Server, after_s: float) -> dict[int, int]:
    """Established client connections per process, counted ``after_s`` into a run (``ss``)."""
    counts: dict[int, int] = {}

    def count() -> None:
        time.sleep(after_s)
        port = server.url.rsplit(":", 1)[1]
        out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"],
                             capture_output=True, text=True).stdout  # fmt: skip
        for pid in re.findall(r"pid=(\d+)", out):
            counts[int(pid)] = counts.get(int(pid), 0) + 1

    if shutil.which("ss") is not None:
        threading.Thread(target=count, daemon=True).start()
    return counts


_HZ = os.sysconf("SC_CLK_TCK")


def roles(server: Server, layout: str) -> dict[str, list[int]]:
    """The server's processes by role (the supervisor starts its runner process first)."""
    root = server.proc.pid
    if layout == "1":
        return {"server": [root]}
    if layout == "2e":
        return {"workers": sorted(
            pid for pid in _tree(root)
            if pid != root and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
        )}  # fmt: skip
    children = sorted(
        pid for pid in _tree(root)
        if pid != root and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    )  # fmt: skip
    return {"api": children[1:], "runner": children[:1]}


def thread_ticks(pids: list[int]) -> tuple[int, int]:
    """CPU clock ticks (user + system) of these processes: (main threads, other threads)."""
    main = other = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
                ticks = int(fields[11]) + int(fields[12])
                if int(task.name) == pid:
                    main += ticks
                else:
                    other += ticks
    return main, other


def cpu_per_request(by_role: dict[str, list[int]], before: dict[str, tuple[int, int]],
                    requests: float) -> dict[str, float]:
    """µs of CPU per request since ``before``: each role's event loop (main thread) and, for the
    process holding the model, its other threads (the model's worker thread)."""
    out = {}
    for role, pids in by_role.items():
        (main, other), (main_then, other_then) = thread_ticks(pids), before[role]
        loop_us = (main - main_then) / _HZ * 1e6 / requests
        threads_us = (other - other_then) / _HZ * 1e6 / requests
        if role == "api":
            out["API workers"] = loop_us + threads_us
        else:
            out[f"{role} loop"], out[f"{role} threads"] = loop_us, threads_us
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per wrk run (5)")
    parser.add_argument("--runs", type=int, default=5, help="wrk runs per server (5)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up load (2)")
    parser.add_argument("--layouts", nargs="+", default=["1", "2", "2e"], choices=list(LAYOUTS),
                        help="--workers values (1 2), 2e (--workers 2, embedded runner) or "
                        "1+runner; the first is the baseline (1 2 2e)")
    parser.add_argument("--cpus", default="0,1",
                        help="taskset CPU list for the servers and wrk alike (0,1)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("bench/scaling.py needs wrk (`apt-get install wrk`) and taskset", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="tiffin-bench-scaling-"))
    servers: dict[str, Server] = {}
    try:
        model = make_models(root / "models")["hgb"]
        print(f"model hgb: one-row predict {one_row_cost_ms(model, 1):.2f} ms (pyfunc)")
        env = env_for(root / "home")
        import_models({"hgb": model}, env)
        script = lua_script(root / "inputs.lua", '{"inputs": [' + str(one_row()) + ']}',
                            "application/json")
        results: dict[str, Measured] = {}
        cpu: dict[str, list[dict[str, float]]] = {layout: [] for layout in args.layouts}
        tree: dict[str, dict[str, list[int]]] = {}
        for layout in args.layouts:
            server = servers[layout] = start(layout, env, root, args.cpus)
            time.sleep(0.5)
            memory = server.memory_mb()
            results[layout] = Measured(layout, "hgb", "/invocations",
                                       startup_s=server.startup_s, pss_mb=memory["Pss"])
            print(f"{LAYOUTS[layout][0]}: ready in {server.startup_s:.2f} s, "
                  f"{memory['processes']:.0f} processes, PSS {memory['Pss']:.0f} MB", flush=True)
            wrk(server.url + "/invocations", script, args.warmup, cpus=args.cpus)
            tree[layout] = roles(server, layout)
        for turn in range(args.runs):
            for layout, server in servers.items():
                split = connections(server, args.seconds / 2)
                before = {role: thread_ticks(pids) for role, pids in tree[layout].items()}
                rps, p50, p99, errors = wrk(server.url + "/invocations", script, args.seconds,
                                            cpus=args.cpus)
                cpu[layout].append(cpu_per_request(tree[layout], before, rps * args.seconds))
                result = results[layout]
                result.rps.append(rps)
                result.p50_ms.append(p50)
                result.p99_ms.append(p99)
                result.errors += errors
                shares = "/".join(str(n) for n in sorted(split.values(), reverse=True))
                print(f"  run {turn + 1} {layout:>8}: {rps:7.0f} req/s  "
                      f"p50 {p50:5.1f} ms  p99 {p99:5.1f} ms  errors {errors}  "
                      f"connections per process {shares or '?'}; CPU µs per request: "
                      + ", ".join(f"{k} {v:.0f}" for k, v in cpu[layout][-1].items())
                      + f", total {sum(cpu[layout][-1].values()):.0f}", flush=True)
    finally:
        for server in servers.values():
            server.stop()
        if args.keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    base = results[args.layouts[0]]
    print(f"\n| layout | processes | req/s (median of {args.runs}) | p50 ms | p99 ms | "
          f"x {LAYOUTS[args.layouts[0]][0]} | start-up s | idle PSS MB | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for layout, r in results.items():
        print(f"| {LAYOUTS[layout][0]} | {LAYOUTS[layout][1]} | {r.rps_median:,.0f} | "
              f"{r.p50_median:.1f} | {r.p99_median:.1f} | {r.rps_median / base.rps_median:.2f} | "
              f"{r.startup_s:.2f} | {r.pss_mb:.0f} | {r.errors} |")
    print("\n| CPU µs per request (median) | "
          + " | ".join(LAYOUTS[layout][0] for layout in results) + " |")
    print("|---|" + "---:|" * len(results))
    parts = list(dict.fromkeys(k for runs in cpu.values() for run in runs for k in run))
    for part in [*parts, "total"]:
        cells = []
        for layout in results:
            values = [sum(run.values()) if part == "total" else run.get(part)
                      for run in cpu[layout]]  # fmt: skip
            known = [v for v in values if v is not None]
            cells.append(f"{statistics.median(known):.0f}" if known else "-")
        print(f"| {part} | " + " | ".join(cells) + " |")
    for layout in args.layouts[1:]:
        ratios = [x / b for x, b in zip(results[layout].rps, base.rps, strict=True)]
        print(f"per-turn ratios, {layout} / {args.layouts[0]}: "
              f"{', '.join(f'{x:.2f}' for x in ratios)}")
    met = []
    for layout in ("2", "2e"):
        if layout in results and args.layouts[0] == "1":
            got = results[layout].rps_median / base.rps_median
            met.append(got >= TARGET)
            print(f"target: {LAYOUTS[layout][0]} / --workers 1 req/s = {got:.2f}, wanted >= "
                  f"{TARGET} ({'met' if met[-1] else 'MISSED'})")
    ok = any(met) or not met
    errors = sum(r.errors for r in results.values())
    if errors:
        print(f"{errors} requests failed (non-2xx or socket errors)")
    return 0 if ok and not errors else 1


if __name__ == "__main__":
    sys.exit(main())
