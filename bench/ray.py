"""tiffin on Ray Serve against a hand-written Ray Serve app, on the same model and load.

Run with ``python bench/ray.py`` (needs ``tiffin[ray]`` and ``wrk``). One local Ray node on
127.0.0.2 with every CPU of the machine (``RAY_TMPDIR`` on a short scratch path, no dashboard);
Serve's proxy on 127.0.0.1. The model: a scikit-learn LogisticRegression on 32 float features
(predict costs tens of microseconds, so what is measured is the serving path). Load: wrk,
one thread, 16 connections, one-row JSON requests (``[[...32 floats...]]``) to ``/predict``.

Applications, deployed one at a time at ``/`` and measured in turn, ``--rounds`` times:

* ``hand``: what a Ray user writes by hand: a FastAPI ingress deployment (``@serve.ingress``)
  that parses the body and calls a runner deployment through its handle, whose ``predict``
  is ``@serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)`` (Ray's default wait);
  ``max_ongoing_requests`` 100 (ingress) and 32 (runner), so Ray's default of 5 caps nothing.
* ``tiffin-1``: ``tiffin.ray.deployment`` of the ``serve-model`` service of the same model
  (stored batchable), one runner replica; ``tiffin-2``: two runner replicas; both measured
  through Serve's proxy, as the hand-written app is.
* ``direct-1``/``direct-2``: the same with ``direct_port``: the load goes to the ingress
  replica's own port (``tiffin.ray.direct``), past Serve's proxy; the runner replicas are
  still called through Ray handles.

Every deployment asks for half a CPU. The table shows medians of the rounds, and the CPU time
the local Ray node's processes (proxy, replicas, controller, raylet, GCS) spent per answered
request during the measured run, from ``/proc`` (``cpu ms/req``: it moves less than req/s when
other work shares the machine). Targets (ratios of the same run): tiffin on Ray at least 2x
hand in req/s, checked on ``direct-1`` (``tiffin-1``'s ratio is reported beside it); two
runner replicas at least 1.3x one only on a host with at least 8 CPUs (on fewer, the
replicas share the cores the proxy, ingress and wrk need, and the figure is reported, not
checked). Exits 1 when a checked target is missed.
"""


import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
# this file is bench/ray.py: keep `import ray` from finding it instead of Ray
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from typing import Any  # noqa: E402

from starlette.requests import Request  # noqa: E402

_spec = importlib.util.spec_from_file_location("bench_serve", HERE / "serve.py")
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
sys.modules["bench_serve"] = helpers
_spec.loader.exec_module(helpers)

CONCURRENCY = 16
FEATURES = 32


def hand_written_app() -> Any:
    import numpy as np
    from fastapi import FastAPI
    from ray import serve

    web = FastAPI()

    @serve.deployment(max_ongoing_requests=32, ray_actor_options={"num_cpus": 0.5})
    class Runner:
        def __init__(self, home: str) -> None:
            os.environ["TIFFIN_HOME"] = home
            import tiffin

            self.model = tiffin.sklearn.load_model("lr")

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
        async def predict(self, rows: list[Any]) -> list[Any]:
            return list(self.model.predict(np.concatenate(rows)))

    @serve.deployment(max_ongoing_requests=100, ray_actor_options={"num_cpus": 0.5})
    @serve.ingress(web)
    class Ingress:
        def __init__(self, runner: Any) -> None:
            self.runner = runner

        @web.post("/predict")
        async def predict(self, request: Request) -> list[int]:
            rows = np.asarray(await request.json(), dtype=np.float64)
            return [int(await self.runner.predict.remote(rows))]

    return Ingress.bind(Runner.bind(os.environ["TIFFIN_HOME"]))


def tiffin_app(replicas: int, target: str, direct_port: int | None = None) -> Any:
    import tiffin.ray

    half = {"ray_actor_options": {"num_cpus": 0.5}}
    return tiffin.ray.deployment(target, half, {"lr": {**half, "num_replicas": replicas}},
                                 direct_port=direct_port)  # fmt: skip


def save_model(home: Path) -> None:
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    import tiffin

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, FEATURES))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    tiffin.sklearn.save_model("lr", LogisticRegression().fit(X, y),
                              signatures={"predict": {"batchable": True}})  # fmt: skip


def wait_ready(url: str, timeout: float = 180) -> None:
    body = ("[[" + ",".join(["0.5"] * FEATURES) + "]]").encode()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = urllib.request.Request(url + "/predict", data=body, method="POST",
                                         headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url}/predict did not answer 200 within {timeout} s")


def ray_cpu_seconds() -> float:
    """User + system CPU time so far of every process this benchmark started (the local Ray
    node: raylet, GCS, workers, Serve's actors), from Linux's /proc."""
    stats: dict[int, tuple[int, int]] = {}  # pid -> (parent, CPU ticks)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(pid)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    ours, total, grew = {os.getpid()}, 0, True
    while grew:
        grew = False
        for pid, (parent, ticks) in stats.items():
            if parent in ours and pid not in ours:
                ours.add(pid)
                total += ticks
                grew = True
    return total / os.sysconf("SC_CLK_TCK")


def measure(url: str, script: Path, seconds: int) -> tuple[float, float, float, int, float]:
    """(req/s, p50 ms, p99 ms, errors, Ray CPU ms per request) of one run."""
    helpers.CONCURRENCY = CONCURRENCY
    helpers.wrk_output(url + "/predict", script, 3, cpus=None)  # warm-up
    before, started = ray_cpu_seconds(), time.monotonic()
    rps, p50, p99, errors = helpers.parse_wrk(
        helpers.wrk_output(url + "/predict", script, seconds, cpus=None)
    )
    cpu = ray_cpu_seconds() - before
    requests = rps * (time.monotonic() - started)
    return rps, p50, p99, errors, 1000 * cpu / max(requests, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="tb", dir="/tmp"))
    (scratch / "ray").mkdir()
    os.environ.update(RAY_TMPDIR=str(scratch), RAY_USAGE_STATS_ENABLED="0",
                      TIFFIN_HOME=str(scratch / "home"))  # fmt: skip
    save_model(scratch / "home")
    service = scratch / "lr_service.py"
    service.write_text("import tiffin\nfrom tiffin.serving.model_service import build_service\n"
                       "svc = build_service(tiffin.models.get('lr'))\n")  # fmt: skip
    script = helpers.lua_script(scratch / "post.lua", "[[" + ",".join(["0.25"] * FEATURES) + "]]",
                                "application/json")  # fmt: skip

    import ray
    from ray import serve

    cpus = os.cpu_count() or 2
    ray.init(address="local", num_cpus=cpus, _node_ip_address="127.0.0.2",
             include_dashboard=False, _temp_dir=str(scratch / "ray"),
             logging_level="ERROR", log_to_driver=False)  # fmt: skip
    port = helpers.free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    url = f"http://127.0.0.1:{port}"
    direct_port = helpers.free_port()
    direct = f"http://127.0.0.1:{direct_port}"
    target = f"{service}:svc"
    apps = (("hand", hand_written_app, url),
            ("tiffin-1", lambda: tiffin_app(1, target), url),
            ("tiffin-2", lambda: tiffin_app(2, target), url),
            ("direct-1", lambda: tiffin_app(1, target, direct_port), direct),
            ("direct-2", lambda: tiffin_app(2, target, direct_port), direct))  # fmt: skip
    results: dict[str, list[tuple[float, float, float, int, float]]] = {}
    try:
        for _round in range(args.rounds):
            for name, build, where in apps:
                serve.run(build(), name="bench", route_prefix="/")
                wait_ready(url)
                wait_ready(where)
                figures = measure(where, script, args.seconds)
                results.setdefault(name, []).append(figures)
                print(f"{name}: {figures[0]:.0f} req/s, p50 {figures[1]:.1f} ms, "
                      f"p99 {figures[2]:.1f} ms, errors {figures[3]}, "
                      f"Ray CPU {figures[4]:.2f} ms/req", flush=True)  # fmt: skip
                serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
    rps = {name: statistics.median(r[0] for r in runs) for name, runs in results.items()}
    print(f"\n{cpus} CPUs, concurrency {CONCURRENCY}, one-row requests, medians of "
          f"{args.rounds} rounds of {args.seconds} s\n")  # fmt: skip
    print("| app      | req/s | p50 ms | p99 ms | errors | cpu ms/req |")
    print("|----------|-------|--------|--------|--------|------------|")
    cpu = {name: statistics.median(r[4] for r in runs) for name, runs in results.items()}
    for name, runs in results.items():
        p50 = statistics.median(r[1] for r in runs)
        p99 = statistics.median(r[2] for r in runs)
        print(f"| {name:<8} | {rps[name]:5.0f} | {p50:6.1f} | {p99:6.1f} | "
              f"{sum(r[3] for r in runs):6d} | {cpu[name]:10.2f} |")  # fmt: skip
    def per_round(name: str) -> str:
        return ", ".join(f"{t[0] / h[0]:.2f}x"
                         for h, t in zip(results["hand"], results[name], strict=True))  # fmt: skip

    print()
    for name in ("tiffin-1", "direct-1"):
        print(f"{name} / hand: {rps[name] / rps['hand']:.2f}x (rounds {per_round(name)}); Ray "
              f"CPU per request hand / {name}: {cpu['hand'] / cpu[name]:.2f}x")  # fmt: skip
    ratio = rps["direct-1"] / rps["hand"]
    print(f"target: tiffin on Ray (direct-1) >= 2x hand: {ratio:.2f}x")
    ok = ratio >= 2
    checked = cpus >= 8
    for one, two in (("tiffin-1", "tiffin-2"), ("direct-1", "direct-2")):
        scaling = rps[two] / rps[one]
        print(f"{two} / {one}: {scaling:.2f}x (target >= 1.3x on 8+ CPUs; "
              f"{'checked' if checked else 'not checked here'})")  # fmt: skip
        if checked:
            ok &= scaling >= 1.3
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
