"""`tiffin serve --workers N`: API workers sharing runner processes, a killed runner process,
SIGTERM under load, bearer-token auth. Real processes, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import textwrap
import time
from collections import Counter

import httpx
import pytest

from tests.test_serving_support import running, server_env, start_tiffin, wait_until

pytestmark = pytest.mark.slow

SERVICE = textwrap.dedent(
    """
    import os
    import time

    import numpy as np
    import tiffin

    class Slow(tiffin.Runnable):
        def __init__(self):
            # SLOW_SECOND_LOAD=<path>: the first process to load is quick, the next one slow
            if os.environ.get("FAIL_LOAD"):
                raise RuntimeError("no model here")
            time.sleep(float(os.environ.get("LOAD_SLEEP", "0")))
            # HOLD_SECOND_LOAD=<dir>: the first process loads at once, the next one only
            # once the test creates <dir>/release
            hold = os.environ.get("HOLD_SECOND_LOAD")
            if hold:
                try:
                    os.close(os.open(os.path.join(hold, "first"), os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    deadline = time.monotonic() + 60
                    while not os.path.exists(os.path.join(hold, "release")):
                        if time.monotonic() > deadline:
                            raise RuntimeError("never released")
                        time.sleep(0.02)

        @tiffin.Runnable.method(batchable=True)
        def double(self, x):
            time.sleep(0.01)
            return x * 2

        @tiffin.Runnable.method
        def pid(self):
            return os.getpid()

    slow = tiffin.Runner(Slow, name="slow")
    svc = tiffin.Service("workers", runners=[slow])

    @svc.api(input=tiffin.io.NumpyNdarray(dtype="float64"), output=tiffin.io.NumpyNdarray())
    async def double(arr):
        return await slow.double.async_run(arr)

    @svc.api(input=tiffin.io.NumpyNdarray(dtype="float64"), output=tiffin.io.NumpyNdarray())
    async def slow_double(arr):
        import asyncio

        await asyncio.sleep(0.4)  # long enough to be in flight when the stop signal comes
        return await slow.double.async_run(arr)

    @svc.api(input=tiffin.io.JSON(), output=tiffin.io.JSON())
    async def whoami(_):
        return {"api": os.getpid(), "runner": await slow.pid.async_run()}
    """
)


def _start(tmp_path, *extra: str, env_extra: dict[str, str] | None = None):
    (tmp_path / "svc.py").write_text(SERVICE)
    return start_tiffin(
        ["serve", "svc.py:svc", "--workers", "2", *extra],
        cwd=tmp_path,
        env=server_env(tmp_path / "home", **(env_extra or {})),
        log=tmp_path / "log.txt",
    )


async def _load(url: str, n: int, concurrency: int, *, headers=None) -> list[int | str]:
    """n one-row requests, at most ``concurrency`` at once; each answer's status or error."""
    outcomes: list[int | str] = []
    queue = list(range(n))

    async def worker(client: httpx.AsyncClient) -> None:
        while queue:
            i = queue.pop()
            try:
                r = await client.post("/double", json=[[float(i)]], headers=headers)
                if r.status_code == 200:
                    assert r.json() == [[2.0 * i]], r.text
                outcomes.append(r.status_code)
            except httpx.HTTPError as exc:
                outcomes.append(type(exc).__name__)

    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return outcomes


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)
    )


def _metrics_once(url: str, name: str, expected: float) -> tuple[float, str]:
    """``name``'s value once it reaches ``expected`` (each worker adds its own figures within
    half a second), or after 5 s; and the /metrics text it was read from."""
    deadline = time.monotonic() + 5
    while True:
        text = httpx.get(url + "/metrics").text
        value = _metric(text, name)
        if value >= expected or time.monotonic() > deadline:
            return value, text
        time.sleep(0.1)


def _api_pids(url: str) -> set[int]:
    """Both API workers' pids (fresh connections until each has answered)."""
    pids: set[int] = set()
    deadline = time.monotonic() + 30
    while len(pids) < 2 and time.monotonic() < deadline:
        pids.add(httpx.post(url + "/whoami", json={}).json()["api"])
    assert len(pids) == 2, pids
    return pids


def test_workers_share_one_runner_process_and_batch_across_workers(tmp_path):
    with running(_start(tmp_path)) as server:
        pids = {tuple(httpx.post(server.url + "/whoami", json={}).json().values())
                for _ in range(30)}
        api_pids = {api for api, _ in pids}
        runner_pids = {runner for _, runner in pids}
        assert len(runner_pids) == 1, "every API worker must reach the same runner process"
        assert not api_pids & runner_pids
        outcomes = asyncio.run(_load(server.url, 400, 32))
        assert outcomes == [200] * 400
        metrics = httpx.get(server.url + "/metrics").text
        calls = _metric(metrics, 'tiffin_runner_calls_total{method="double"')
        batches = _metric(metrics, 'tiffin_runner_batches_total{method="double"')
        assert calls == 400
        assert batches < calls / 2, f"{calls} calls ran in {batches} batches: no batching"
        # request counts add up over both API workers
        requests = 'tiffin_http_requests_total{method="POST",route="/double"'
        assert _metrics_once(server.url, requests, 400)[0] == 400


def test_a_killed_runner_process_is_restarted_and_callers_never_hang(tmp_path):
    with running(_start(tmp_path)) as server:
        runner_pid = httpx.post(server.url + "/whoami", json={}).json()["runner"]

        async def load_and_kill():
            task = asyncio.ensure_future(_load(server.url, 600, 32))
            await asyncio.sleep(0.3)
            os.kill(runner_pid, signal.SIGKILL)
            started = time.monotonic()
            outcomes = await task
            return outcomes, time.monotonic() - started

        outcomes, elapsed = asyncio.run(load_and_kill())
        assert set(outcomes) <= {200, 503}, f"unexpected outcomes: {set(outcomes)}"
        assert outcomes.count(503) >= 1, "the kill went unnoticed"
        assert elapsed < 30
        wait_until(server, "/readyz", timeout=60)
        new_pid = httpx.post(server.url + "/whoami", json={}).json()["runner"]
        assert new_pid != runner_pid
        assert asyncio.run(_load(server.url, 50, 8)) == [200] * 50
        logs = server.wait_for_log("died with exit code")
        assert "restarting" in logs
        metrics = httpx.get(server.url + "/metrics").text
        assert _metric(metrics, "tiffin_process_restarts_total") >= 1


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_under_load_drains_accepted_requests_and_exits_zero(tmp_path, stop):
    server = _start(tmp_path)
    with running(server):

        async def load_then_term():
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                async def one(i: int) -> int:
                    r = await client.post("/slow_double", json=[[float(i)]])
                    return r.status_code

                sent = [asyncio.ensure_future(one(i)) for i in range(64)]
                await asyncio.sleep(0.2)  # all 64 accepted, read, and inside the API function
                os.killpg(server.proc.pid, stop)  # the whole group, as Ctrl-C and systemd do
                return await asyncio.gather(*sent, return_exceptions=True)

        results = asyncio.run(load_then_term())
        assert results == [200] * 64, results
        assert server.proc.wait(timeout=60) == 0
        assert "stopped" in server.logs()


def test_api_key_guards_api_routes_but_not_health(tmp_path):
    with running(_start(tmp_path, env_extra={"TIFFIN_API_KEY": "s3cret"})) as server:
        url = server.url
        denied = httpx.post(url + "/double", json=[[1.0]])
        assert denied.status_code == 401
        assert denied.json()["error"] == "UNAUTHORIZED"
        assert denied.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.post(url + "/double", json=[[1.0]], headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401
        ok = httpx.post(url + "/double", json=[[1.0]], headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200 and ok.json() == [[2.0]]
        for path in ("/livez", "/readyz", "/healthz", "/metrics", "/docs.json"):
            assert httpx.get(url + path).status_code == 200, path
        # the static route serves Swagger UI's own files and nothing outside them
        escape = httpx.get(url + "/static/swagger-ui/..%2F..%2F..%2Fetc%2Fpasswd")
        assert escape.status_code == 404


def test_runner_process_count_comes_from_the_config_file(tmp_path):
    config = tmp_path / "tiffin.yaml"
    config.write_text("runners:\n  slow:\n    workers: 2\n")
    with running(_start(tmp_path, "--config", str(config))) as server:

        async def whoami_many() -> set[int]:
            async with httpx.AsyncClient(base_url=server.url, timeout=15) as client:
                answers = await asyncio.gather(
                    *(client.post("/whoami", json={}) for _ in range(40))
                )
            return {r.json()["runner"] for r in answers}

        runner_pids = asyncio.run(whoami_many())
        assert len(runner_pids) == 2, runner_pids
        assert asyncio.run(_load(server.url, 100, 16)) == [200] * 100


def test_a_killed_api_worker_is_replaced_and_the_other_keeps_serving(tmp_path):
    with running(_start(tmp_path)) as server:
        _api_pids(server.url)  # both serve (each listens once it is ready)
        victim = httpx.post(server.url + "/whoami", json={}).json()["api"]
        os.kill(victim, signal.SIGKILL)
        # the surviving worker answers meanwhile; the replacement joins it
        # (a request on a connection the dead worker held may see the connection drop)
        outcomes = set(asyncio.run(_load(server.url, 100, 8)))
        assert outcomes <= {200, "ReadError", "RemoteProtocolError"}, outcomes
        server.wait_for_log("died with exit code", timeout=10)
        deadline = time.monotonic() + 30
        seen: set[int] = set()
        while len(seen) < 2 and time.monotonic() < deadline:
            seen.add(httpx.post(server.url + "/whoami", json={}, timeout=5).json()["api"])
        assert len(seen) == 2 and victim not in seen, seen
        assert asyncio.run(_load(server.url, 100, 8)) == [200] * 100


def _whoami_over(conn: socket.socket) -> int:
    """The API worker's pid, asked over an open connection (raw HTTP/1.1, keep-alive)."""
    conn.sendall(b"POST /whoami HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 2\r\n\r\n{}")
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    while len(body) < length:
        body += conn.recv(65536)
    return json.loads(body)["api"]


def test_a_burst_of_connections_is_spread_over_the_api_workers(tmp_path):
    with running(_start(tmp_path)) as server:
        port = int(server.url.rsplit(":", 1)[1])
        _api_pids(server.url)  # both workers serve (each listens once it is ready)
        # connected all at once, before any request, as a load generator does: with one
        # shared socket, the first worker to wake accepted most of them
        conns = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(32)]
        try:
            pids = [_whoami_over(conn) for conn in conns]
        finally:
            for conn in conns:
                conn.close()
        counts = sorted(Counter(pids).values())
        assert len(counts) == 2 and counts[0] >= 4, f"connections per API worker: {counts}"


def test_an_embedded_runner_loads_in_every_api_worker_and_its_figures_add_up(tmp_path):
    env = {"TIFFIN_RUNNERS__SLOW__EMBEDDED": "true"}
    with running(_start(tmp_path, env_extra=env)) as server:
        seen: set[tuple[int, int]] = set()
        deadline = time.monotonic() + 30
        while len({api for api, _ in seen}) < 2 and time.monotonic() < deadline:
            # a fresh connection each time: the kernel spreads them over the workers
            seen.add(tuple(httpx.post(server.url + "/whoami", json={}).json().values()))
        assert len(seen) == 2, seen
        assert all(api == runner for api, runner in seen), f"no runner process: {seen}"
        logs = server.logs()
        assert "runner processes []" in logs, logs
        outcomes = asyncio.run(_load(server.url, 400, 32))
        assert outcomes == [200] * 400
        # each worker batches its own calls; /metrics on either adds up both workers' figures
        calls, metrics = _metrics_once(
            server.url, 'tiffin_runner_calls_total{method="double"', 400
        )
        assert calls == 400
        batches = _metric(metrics, 'tiffin_runner_batches_total{method="double"')
        # each worker sees half the calls of this one client (CPU-bound on a busy 2-core CI
        # machine: 1.9 rows per batch seen there), so less batching than with one runner
        assert batches < calls / 1.5, f"{calls} calls ran in {batches} batches: no batching"
        assert _metric(metrics, 'tiffin_runner_batch_size_count{method="double"') == batches


@pytest.mark.parametrize("pin", ["true", "false"])
def test_api_workers_pinned_to_cpus_of_their_own_or_left_alone(tmp_path, pin):
    allowed = os.sched_getaffinity(0)
    with running(_start(tmp_path, env_extra={"TIFFIN_PIN_WORKERS": pin})) as server:
        cpus = [os.sched_getaffinity(pid) for pid in _api_pids(server.url)]
        if pin == "false":
            assert cpus == [allowed, allowed]
        else:
            assert all(len(c) == 1 and c <= allowed for c in cpus), cpus
            if len(allowed) >= 2:
                assert cpus[0] != cpus[1], cpus
            assert "API workers pinned to CPUs" in server.logs()


def test_worker_cpus_pins_by_default_only_one_worker_per_cpu(monkeypatch):
    from tiffin.process.workers import worker_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5})
    assert worker_cpus(None, 2) == [2, 5]  # one worker per allowed CPU
    assert worker_cpus(None, 1) is None and worker_cpus(None, 3) is None
    assert worker_cpus(True, 3) == [2, 5, 2]  # asked for: round robin
    assert worker_cpus(False, 2) is None
    assert worker_cpus(None, 2, runner_processes=1) is None  # a runner process needs room
    assert worker_cpus(True, 2, runner_processes=1) == [2, 5]


def test_an_api_worker_still_loading_its_embedded_runner_gets_no_requests(tmp_path):
    env = {"TIFFIN_RUNNERS__SLOW__EMBEDDED": "true", "HOLD_SECOND_LOAD": str(tmp_path)}
    with running(_start(tmp_path, env_extra=env)) as server:  # returns once /readyz is 200
        # fresh connections while the second worker loads: the ready one takes them all
        answers = [httpx.post(server.url + "/double", json=[[1.0]]) for _ in range(60)]
        assert [a.status_code for a in answers] == [200] * 60, {a.text for a in answers}
        assert not (tmp_path / "release").exists()  # the second one was loading throughout
        (tmp_path / "release").touch()
        assert len(_api_pids(server.url)) == 2  # and once loaded, the second one serves too


def test_an_api_worker_whose_embedded_runner_fails_to_load_exits_and_is_restarted(tmp_path):
    (tmp_path / "svc.py").write_text(SERVICE)
    env = server_env(tmp_path / "home", TIFFIN_RUNNERS__SLOW__EMBEDDED="true", FAIL_LOAD="1")
    server = start_tiffin(["serve", "svc.py:svc", "--workers", "2"], cwd=tmp_path, env=env,
                          log=tmp_path / "log.txt", ready=None)
    with running(server):
        server.wait_for_log("died with exit code 3", timeout=30)
        with pytest.raises(httpx.ConnectError):  # no worker listens: none is ready
            httpx.get(server.url + "/readyz")
        deadline = time.monotonic() + 30  # and each is started again, with back-off
        while server.logs().count("died with exit code 3") < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        logs = server.logs()
        assert logs.count("died with exit code 3") >= 3, logs
        assert "no model here" in logs


def test_a_port_in_use_is_one_readable_line_and_exit_1(tmp_path):
    import subprocess

    from tests.conftest import tiffin_exe

    (tmp_path / "svc.py").write_text(SERVICE)
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        done = subprocess.run(
            [tiffin_exe(), "serve", "svc.py:svc", "--workers", "2", "--port", str(port)],
            cwd=tmp_path, env=server_env(tmp_path / "home"), capture_output=True, text=True,
            timeout=60,
        )
    finally:
        taken.close()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"tiffin: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ], done.stderr


def test_a_port_taken_while_runners_load_stops_the_server_with_exit_1(tmp_path):
    # the runner process takes 3 s to load; meanwhile another server binds and listens on
    # the port (SO_REUSEADDR, as most servers do): the API workers cannot bind, and the
    # supervisor says so and stops everything instead of leaving its children unwatched
    (tmp_path / "svc.py").write_text(SERVICE)
    server = start_tiffin(["serve", "svc.py:svc", "--workers", "2"], cwd=tmp_path,
                          env=server_env(tmp_path / "home", LOAD_SLEEP="3"),
                          log=tmp_path / "log.txt", ready=None)
    port = int(server.url.rsplit(":", 1)[1])
    intruder = socket.socket()
    intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with running(server):
        deadline = time.monotonic() + 20
        while True:  # until the supervisor holds the port: a plain bind fails then
            assert time.monotonic() < deadline, server.logs()
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    break
            time.sleep(0.05)
        intruder.bind(("127.0.0.1", port))
        intruder.listen()
        try:
            assert server.proc.wait(timeout=60) == 1
        finally:
            intruder.close()
        logs = server.logs()
        assert "could not start the API workers" in logs and "Traceback" not in logs, logs
