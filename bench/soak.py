"""Does a loaded server stay healthy? ``tiffin serve-model`` of bench/serve.py's ``hgb`` model
under 64 connections of one-row requests for ``--minutes`` minutes (default 10).

Run with ``python bench/soak.py`` (``--help`` for options). It needs ``wrk`` and two CPUs.
The load is consecutive wrk runs of ``--run-seconds`` (60 s) each, so every minute gets its
own req/s and latency percentiles; a Lua ``response`` hook counts the answers by status
code. Every ``--sample-seconds`` (5 s) the script reads RSS and PSS summed over the server's
whole process tree (``/proc/<pid>/smaps_rollup``), and it notes the load average each minute
(the machine may be shared: other work shows there).

With ``--workers 1`` (the default) the server is pinned to CPU 0 and wrk to CPU 1, as in
bench/serve.py; with ``--workers N`` > 1 the process tree and wrk share CPUs 0 and 1
(``--server-cpus`` and ``--wrk-cpus`` override either; ``none`` leaves it unpinned).
``--embedded`` loads the runner in every API worker instead of a runner process
(``TIFFIN_RUNNERS__HGB__EMBEDDED=true``).

Targets: no 5xx answers (there is no deliberate overload here: 64 connections never queue a
call past ``max_latency_ms``), and RSS at the end no more than 10% above RSS after the first
minute. p99 is called steady when no minute after the first is above 1.5x their median. The
script exits 1 when a target is missed. Models and the store come from bench/serve.py.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from serve import (
    BIN,
    Server,
    _ms,
    env_for,
    free_port,
    import_models,
    lua_script,
    make_models,
    one_row,
    parse_wrk,
    wrk_output,
)

RSS_GROWTH_TARGET = 0.10
P99_STEADY = 1.5

# counts answers by status code; wrk prints "status CODE COUNT" lines when the run ends
STATUS_HOOKS = """
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  statuses = {}
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      io.write(string.format("status %d %d\\n", status, count))
    end
  end
end
"""


@dataclass
class Minute:
    index: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[int, int]
    socket_errors: int
    load1: float
    ended_s: float = 0.0  # since the first minute began
    rss_mb: float = 0.0
    pss_mb: float = 0.0

    @property
    def server_errors(self) -> int:
        return sum(n for status, n in self.statuses.items() if status >= 500)

    @property
    def non_2xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)


@dataclass
class Sampler:
    """RSS/PSS of the server's process tree every ``every`` seconds, in a thread."""

    server: Server
    every: float
    samples: list[tuple[float, float, float, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.started = time.monotonic()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            memory = self.server.memory_mb()
            self.samples.append((time.monotonic() - self.started, memory["Rss"],
                                 memory["Pss"], int(memory["processes"])))
            if self._stop.wait(self.every):
                return

    def stop(self) -> None:
        self._stop.set()

    def at(self, elapsed: float) -> tuple[float, float]:
        """(RSS, PSS) of the last sample taken by ``elapsed`` seconds."""
        before = [s for s in self.samples if s[0] <= elapsed] or self.samples[:1]
        return before[-1][1], before[-1][2]


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def one_minute(url: str, script: Path, seconds: int, cpus: str | None, index: int) -> Minute:
    out = wrk_output(url, script, seconds, cpus)
    rps, p50, p99, _ = parse_wrk(out)
    statuses: dict[int, int] = {}
    for status, count in re.findall(r"^status (\d+) (\d+)$", out, re.M):
        statuses[int(status)] = statuses.get(int(status), 0) + int(count)
    socket_errors = 0
    if match := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)",
                          out):
        socket_errors = sum(int(g) for g in match.groups())
    latency = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out)
    max_ms = _ms(latency.group(1)) if latency else float("nan")
    return Minute(index, rps, p50, p99, max_ms, statuses, socket_errors, load_average())


def log_problems(log: Path) -> list[str]:
    """Warning and error lines of the server's log (the access log left out)."""
    found = []
    with log.open(errors="replace") as lines:
        for line in lines:
            if "tiffin.access" in line:
                continue
            if re.search(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback", line):
                found.append(line.rstrip())
    return found


def pins(value: str | None, default: str) -> str | None:
    if value is None:
        return default
    return None if value == "none" else value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=int, default=10, help="wrk runs of --run-seconds (10)")
    parser.add_argument("--run-seconds", type=int, default=60, help="per wrk run (60)")
    parser.add_argument("--sample-seconds", type=float, default=5.0,
                        help="between memory samples (5)")
    parser.add_argument("--workers", type=int, default=1, help="serve-model --workers (1)")
    parser.add_argument("--embedded", action="store_true",
                        help="with --workers N: the runner in every API worker, no runner process")
    parser.add_argument("--server-cpus", help="taskset CPU list for the server, or none")
    parser.add_argument("--wrk-cpus", help="taskset CPU list for wrk, or none")
    parser.add_argument("--keep", action="store_true", help="keep the work directory and logs")
    args = parser.parse_args()
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("bench/soak.py needs wrk (`apt-get install wrk`) and taskset", file=sys.stderr)
        return 2
    server_cpus = pins(args.server_cpus, "0" if args.workers == 1 else "0,1")
    wrk_cpus = pins(args.wrk_cpus, "1" if args.workers == 1 else "0,1")
    root = Path(tempfile.mkdtemp(prefix="tiffin-bench-soak-"))
    server: Server | None = None
    sampler: Sampler | None = None
    minutes: list[Minute] = []
    problems: list[str] = []
    try:
        model = make_models(root / "models")["hgb"]
        env = env_for(root / "home")
        import_models({"hgb": model}, env)
        if args.embedded:
            env["TIFFIN_RUNNERS__HGB__EMBEDDED"] = "true"
        script = lua_script(root / "soak.lua", '{"inputs": [' + str(one_row()) + ']}',
                            "application/json", STATUS_HOOKS)
        port = free_port()
        cmd = [str(BIN / "tiffin"), "serve-model", "hgb:latest", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(args.workers)]  # fmt: skip
        server = Server(cmd, port, "/readyz", env, root / "server.log", cpus=server_cpus)
        layout = f"--workers {args.workers}" + (", embedded runner" if args.embedded else "")
        print(f"serve-model {layout}: ready in {server.startup_s:.2f} s, "
              f"server CPUs {server_cpus or 'any'}, wrk CPUs {wrk_cpus or 'any'}, "
              f"load average {load_average():.2f}", flush=True)
        sampler = Sampler(server, args.sample_seconds)
        sampler.start()
        print("| minute | req/s | p50 ms | p99 ms | max ms | non-2xx | 5xx | socket errors | "
              "RSS MB | PSS MB | load avg |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
        for index in range(1, args.minutes + 1):
            minute = one_minute(server.url + "/invocations", script, args.run_seconds,
                                wrk_cpus, index)
            minute.ended_s = time.monotonic() - sampler.started
            minute.rss_mb, minute.pss_mb = sampler.at(minute.ended_s)
            minutes.append(minute)
            print(f"| {index} | {minute.rps:,.0f} | {minute.p50_ms:.1f} | {minute.p99_ms:.1f} | "
                  f"{minute.max_ms:.0f} | {minute.non_2xx} | {minute.server_errors} | "
                  f"{minute.socket_errors} | {minute.rss_mb:.0f} | {minute.pss_mb:.0f} | "
                  f"{minute.load1:.2f} |", flush=True)
    finally:
        if sampler is not None:
            sampler.stop()
        if server is not None:
            server.stop()
            problems = log_problems(server.log)
        if args.keep:
            print(f"work directory kept: {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    if sampler is None or not minutes:
        return 1
    return report(minutes, sampler, problems)


def report(minutes: list[Minute], sampler: Sampler, problems: list[str]) -> int:
    total = sum(sum(m.statuses.values()) for m in minutes)
    server_errors = sum(m.server_errors for m in minutes)
    non_2xx = sum(m.non_2xx for m in minutes)
    socket_errors = sum(m.socket_errors for m in minutes)
    statuses: dict[int, int] = {}
    for m in minutes:
        for status, n in m.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    print(f"\n{total:,} answers: " + ", ".join(f"{n:,} x {s}" for s, n in sorted(statuses.items()))
          + f"; {socket_errors} socket errors")
    rss = [s[1] for s in sampler.samples]
    first = minutes[0]
    growth = (rss[-1] - first.rss_mb) / first.rss_mb
    after_first = [s[1] for s in sampler.samples if s[0] >= first.ended_s] or [first.rss_mb]
    peak = (max(after_first) - first.rss_mb) / first.rss_mb
    print(f"RSS of the process tree ({len(sampler.samples)} samples, "
          f"{sampler.samples[-1][3]} processes): {rss[0]:.0f} MB at the start, "
          f"{first.rss_mb:.0f} MB after minute 1, {rss[-1]:.0f} MB at the end "
          f"({growth:+.1%}; peak {peak:+.1%}); PSS {sampler.samples[-1][2]:.0f} MB at the end")
    later = [m.p99_ms for m in minutes[1:]] or [first.p99_ms]
    median_p99 = statistics.median(later)
    steady = max(later) <= P99_STEADY * median_p99
    print(f"p99 after minute 1: {min(later):.1f}-{max(later):.1f} ms, median {median_p99:.1f} ms "
          f"({'steady' if steady else 'NOT steady'}: max {max(later) / median_p99:.2f}x the "
          f"median, wanted <= {P99_STEADY}x); req/s {min(m.rps for m in minutes):,.0f}-"
          f"{max(m.rps for m in minutes):,.0f}; load average "
          f"{min(m.load1 for m in minutes):.2f}-{max(m.load1 for m in minutes):.2f}")
    if problems:
        print(f"server log: {len(problems)} warning/error lines, first: {problems[:3]}")
    else:
        print("server log: no warnings or errors")
    checks = [
        ("5xx answers", server_errors, "0", server_errors == 0),
        ("RSS growth after minute 1", f"{growth:+.1%}", f"< {RSS_GROWTH_TARGET:.0%}",
         growth < RSS_GROWTH_TARGET),
    ]
    print("\n| target | measured | wanted | met |\n|---|---:|---:|---|")
    for name, got, wanted, ok in checks:
        print(f"| {name} | {got} | {wanted} | {'yes' if ok else 'NO'} |")
    if non_2xx != server_errors or socket_errors:
        print(f"also: {non_2xx - server_errors} other non-2xx answers, {socket_errors} socket "
              "errors")
    return 0 if all(ok for *_, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
