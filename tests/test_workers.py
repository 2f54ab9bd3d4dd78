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
    import asyncio
    import os
    import time

    import numpy as np
    import tiffin


    def wait_for(path, what):
        deadline = time.monotonic() + 120
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {path} never appeared")
            time.sleep(0.01)


    class Slow(tiffin.Runnable):
        def __init__(self):
            if os.environ.get("FAIL_LOAD"):
                raise RuntimeError("no model here")
            # HOLD_LOAD=<dir>: loading lasts until the test creates <dir>/release
            if os.environ.get("HOLD_LOAD"):
                wait_for(os.path.join(os.environ["HOLD_LOAD"], "release"), "load")
            # HOLD_SECOND_LOAD=<dir>: the first process loads at once, the next one only
            # once the test creates <dir>/release
            hold = os.environ.get("HOLD_SECOND_LOAD")
            if hold:
                try:
                    os.close(os.open(os.path.join(hold, "first"), os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    wait_for(os.path.join(hold, "release"), "second load")

        @tiffin.Runnable.method(batchable=True)
        def double(self, x):
            # GATE=<dir>: no batch runs before the test creates <dir>/release; the process
            # whose batch waits says so first in <dir>/blocked-<pid>
            gate = os.environ.get("GATE")
            if gate and not os.path.exists(os.path.join(gate, "release")):
                open(os.path.join(gate, f"blocked-{os.getpid()}"), "a").close()
                wait_for(os.path.join(gate, "release"), "batch")
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
        # MARKS=<dir>: say the request is inside the API function (<dir>/in-<row value>),
        # then stay in it until the test creates <dir>/go (once it has sent the stop signal)
        marks = os.environ["MARKS"]
        open(os.path.join(marks, f"in-{int(arr[0][0])}"), "x").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(marks, "go")):
            if time.monotonic() > deadline:
                raise RuntimeError("never told to go on")
            await asyncio.sleep(0.01)
        return await slow.double.async_run(arr)

    @svc.api(input=tiffin.io.JSON(), output=tiffin.io.JSON())
    async def whoami(_):
        return {"api": os.getpid(), "runner": await slow.pid.async_run()}

    @svc.api(input=tiffin.io.JSON(), output=tiffin.io.JSON())
    async def api_pid(_):
        return os.getpid()  # the API worker alone: answers while the runner is busy
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


async def _load(
    url: str, n: int, concurrency: int, *, headers=None, outcomes: list[int | str] | None = None
) -> list[int | str]:
    """n one-row requests, at most ``concurrency`` at once; each answer's status or error
    (appended to ``outcomes`` as they come, when given)."""
    outcomes = [] if outcomes is None else outcomes
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

    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    return outcomes


def _wait(condition, what: str, timeout: float = 60) -> None:
    """Until ``condition()`` is true; a generous bound, for a slow machine, not a figure."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


async def _await(condition, what: str, timeout: float = 60) -> None:
    """:func:`_wait` inside an event loop (its requests go on meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.02)


def _samples(text: str, name: str, **labels: str) -> list[float]:
    """The values of ``name``'s samples whose labels include ``labels``."""
    values = []
    for line in text.splitlines():
        head, _, value = line.rpartition(" ")
        if head.split("{", 1)[0] == name and all(f'{k}="{v}"' in head for k, v in labels.items()):
            values.append(float(value))
    return values


def _metric(text: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name)
    )


def _metrics_once(url: str, name: str, expected: float, timeout: float = 60) -> tuple[float, str]:
    """``name``'s value once it reaches ``expected`` (each worker adds its own figures within
    half a second of a request, or when it renders /metrics), or after ``timeout``; and the
    /metrics text it was read from (fresh connections: either worker may answer)."""
    deadline = time.monotonic() + timeout
    while True:
        text = httpx.get(url + "/metrics", timeout=30).text
        value = _metric(text, name)
        if value >= expected or time.monotonic() > deadline:
            return value, text
        time.sleep(0.05)


def _api_pids(url: str) -> set[int]:
    """Both API workers' pids (fresh connections until each has answered)."""
    pids: set[int] = set()
    deadline = time.monotonic() + 60
    while len(pids) < 2 and time.monotonic() < deadline:
        pids.add(httpx.post(url + "/whoami", json={}, timeout=30).json()["api"])
    assert len(pids) == 2, pids
    return pids


class _Conn:
    """One raw HTTP/1.1 keep-alive connection: the test knows which API worker holds it, and
    sends a request on it now and reads the answer later."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)

    def send(self, path: str, body: object) -> None:
        data = json.dumps(body).encode()
        self.sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )

    def receive(self) -> tuple[int, object]:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            assert chunk, f"the connection closed before an answer: {data!r}"
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
        while len(body) < length:
            chunk = self.sock.recv(65536)
            assert chunk, "the connection closed in the middle of an answer"
            body += chunk
        return int(head.split()[1]), json.loads(body)

    def post(self, path: str, body: object) -> object:
        self.send(path, body)
        status, answer = self.receive()
        assert status == 200, (status, answer)
        return answer

    def close(self) -> None:
        self.sock.close()


def _conns_per_worker(url: str, per_worker: int) -> dict[int, list[_Conn]]:
    """``per_worker`` open connections held by each of the two API workers, by worker pid
    (connections are opened until each worker has its share; the extra ones are closed)."""
    port = int(url.rsplit(":", 1)[1])
    held: dict[int, list[_Conn]] = {}
    deadline = time.monotonic() + 60
    while len(held) < 2 or any(len(conns) < per_worker for conns in held.values()):
        assert time.monotonic() < deadline, {pid: len(c) for pid, c in held.items()}
        conn = _Conn(port)
        pid = conn.post("/api_pid", {})
        conns = held.setdefault(pid, [])
        if len(conns) < per_worker:
            conns.append(conn)
        else:
            conn.close()
    assert len(held) == 2, held
    return held


def _blocked(gate) -> set[int]:
    """The pids of the processes whose batch waits at the gate."""
    return {int(p.name.split("-")[1]) for p in gate.glob("blocked-*")}


def _gated(tmp_path, **env: str):
    """The service with its batches held at a gate until the test opens it; a call may wait
    in the queue meanwhile (max_latency_ms raised well past the test's own bounds)."""
    gate = tmp_path / "gate"
    gate.mkdir()
    env = {"GATE": str(gate), "TIFFIN_RUNNERS__SLOW__MAX_LATENCY_MS": "600000", **env}
    return gate, _start(tmp_path, env_extra=env)


def test_workers_share_one_runner_process_and_batch_across_workers(tmp_path):
    gate, server = _gated(tmp_path)
    with running(server):
        pids = {
            tuple(httpx.post(server.url + "/whoami", json={}).json().values()) for _ in range(30)
        }
        api_pids = {api for api, _ in pids}
        runner_pids = {runner for _, runner in pids}
        assert len(runner_pids) == 1, "every API worker must reach the same runner process"
        assert not api_pids & runner_pids
        # one call holds the runner process's model at the gate; meanwhile each API worker
        # sends 16 calls, which queue up there
        conns = _conns_per_worker(server.url, 16)
        blocker = _Conn(int(server.url.rsplit(":", 1)[1]))  # either worker
        blocker.send("/double", [[-1.0]])
        _wait(lambda: _blocked(gate) == runner_pids, "the first batch at the gate")
        sent = [(conn, float(i)) for i, conn in enumerate(c for cs in conns.values() for c in cs)]
        for conn, value in sent:
            conn.send("/double", [[value]])
        rows = 'tiffin_runner_rows_total{method="double"'

        def all_queued() -> bool:
            return _metric(httpx.get(server.url + "/metrics").text, rows) >= 1 + len(sent)

        _wait(all_queued, "every call counted by the runner process")
        (gate / "release").touch()
        # every caller gets its own row back, whichever worker it came through
        assert blocker.receive() == (200, [[-2.0]])
        assert [conn.receive() for conn, _ in sent] == [(200, [[2 * v]]) for _, v in sent]
        metrics = httpx.get(server.url + "/metrics").text
        calls = _metric(metrics, 'tiffin_runner_calls_total{method="double"')
        batches = _metric(metrics, 'tiffin_runner_batches_total{method="double"')
        assert calls == 1 + len(sent) == 33
        assert batches < calls / 2, f"{calls} calls ran in {batches} batches: no batching"
        # a batch of more rows than either worker sent: both workers' calls in one batch
        size = "tiffin_runner_batch_size_bucket"
        (up_to_16,) = _samples(metrics, size, method="double", le="16.0")
        assert up_to_16 < batches, f"no batch of both workers' calls:\n{metrics}"
        # request counts add up over both API workers
        requests = 'tiffin_http_requests_total{method="POST",route="/double"'
        assert _metrics_once(server.url, requests, 33)[0] == 33
        for conn in [blocker, *(conn for conn, _ in sent)]:
            conn.close()


def test_a_killed_runner_process_is_restarted_and_callers_never_hang(tmp_path):
    with running(_start(tmp_path)) as server:
        runner_pid = httpx.post(server.url + "/whoami", json={}).json()["runner"]

        async def load_and_kill():
            outcomes: list[int | str] = []
            task = asyncio.ensure_future(_load(server.url, 600, 32, outcomes=outcomes))
            # the kill comes in the middle of the load: once some calls have been answered
            await _await(lambda: len(outcomes) >= 50 or task.done(), "answers under load")
            assert not task.done(), "the load was over before the kill"
            os.kill(runner_pid, signal.SIGKILL)
            started = time.monotonic()
            outcomes = await task
            return outcomes, time.monotonic() - started

        outcomes, elapsed = asyncio.run(load_and_kill())
        assert set(outcomes) <= {200, 503}, f"unexpected outcomes: {set(outcomes)}"
        assert outcomes.count(503) >= 1, "the kill went unnoticed"
        assert elapsed < 60  # no caller waits for a process that is gone
        wait_until(server, "/readyz", timeout=60)
        new_pid = httpx.post(server.url + "/whoami", json={}).json()["runner"]
        assert new_pid != runner_pid
        assert asyncio.run(_load(server.url, 50, 8)) == [200] * 50
        logs = server.wait_for_log("died with exit code", timeout=60)
        assert "restarting" in logs
        metrics = httpx.get(server.url + "/metrics").text
        assert _metric(metrics, "tiffin_process_restarts_total") >= 1


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_under_load_drains_accepted_requests_and_exits_zero(tmp_path, stop):
    marks = tmp_path / "marks"
    marks.mkdir()
    server = _start(tmp_path, env_extra={"MARKS": str(marks)})
    with running(server):

        async def load_then_term():
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:

                async def one(i: int) -> int:
                    r = await client.post("/slow_double", json=[[float(i)]])
                    assert r.status_code != 200 or r.json() == [[2.0 * i]], r.text
                    return r.status_code

                sent = [asyncio.ensure_future(one(i)) for i in range(64)]
                # all 64 accepted, read, and inside the API function, where they stay
                await _await(lambda: len(list(marks.glob("in-*"))) == 64, "64 requests inside")
                os.killpg(server.proc.pid, stop)  # the whole group, as Ctrl-C and systemd do
                # the supervisor has the signal, and an API worker is shutting down with
                # the requests still inside; only then may they go on
                await _await(
                    lambda: (
                        "draining API workers" in server.logs() and "Shutting down" in server.logs()
                    ),
                    "the drain",
                )
                (marks / "go").touch()
                return await asyncio.gather(*sent, return_exceptions=True)

        results = asyncio.run(load_then_term())
        assert results == [200] * 64, (results, server.logs()[-6000:])
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
        assert outcomes <= {200, "ReadError", "WriteError", "RemoteProtocolError"}, outcomes
        server.wait_for_log("died with exit code", timeout=60)
        deadline = time.monotonic() + 60
        seen: set[int] = set()
        while len(seen) < 2 and time.monotonic() < deadline:
            seen.add(httpx.post(server.url + "/whoami", json={}, timeout=30).json()["api"])
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
    gate, server = _gated(tmp_path, TIFFIN_RUNNERS__SLOW__EMBEDDED="true")
    with running(server):
        seen: set[tuple[int, int]] = set()
        deadline = time.monotonic() + 60
        while len({api for api, _ in seen}) < 2 and time.monotonic() < deadline:
            # a fresh connection each time: the kernel spreads them over the workers
            seen.add(tuple(httpx.post(server.url + "/whoami", json={}).json().values()))
        assert len(seen) == 2, seen
        assert all(api == runner for api, runner in seen), f"no runner process: {seen}"
        logs = server.logs()
        assert "runner processes []" in logs, logs
        # each worker's model is held at the gate by one call while 16 more queue behind it
        conns = _conns_per_worker(server.url, 17)
        blockers = [cs.pop() for cs in conns.values()]
        for blocker in blockers:
            blocker.send("/double", [[-1.0]])
        _wait(lambda: _blocked(gate) == set(conns), "both workers' first batches at the gate")
        sent = [(conn, float(i)) for i, conn in enumerate(c for cs in conns.values() for c in cs)]
        for conn, value in sent:
            conn.send("/double", [[value]])
        # /metrics on either worker adds up both workers' figures
        rows = 'tiffin_runner_rows_total{method="double"'
        assert _metrics_once(server.url, rows, 34)[0] == 34, "not every call reached a queue"
        (gate / "release").touch()
        assert [b.receive() for b in blockers] == [(200, [[-2.0]])] * 2
        assert [conn.receive() for conn, _ in sent] == [(200, [[2 * v]]) for _, v in sent]
        # once both workers' batches have all ended (a worker's figures on the other reach
        # as far as its last request or /metrics)
        batched = 'tiffin_runner_batch_size_sum{method="double"'
        rows_batched, metrics = _metrics_once(server.url, batched, 34)
        assert rows_batched == 34
        assert _metric(metrics, 'tiffin_runner_calls_total{method="double"') == 34
        batches = _metric(metrics, 'tiffin_runner_batches_total{method="double"')
        # each worker batches its own calls: its held call, then its 16 queued ones at once
        assert batches == 4, f"34 calls ran in {batches} batches: no batching"
        assert _metric(metrics, 'tiffin_runner_batch_size_count{method="double"') == batches
        for conn in [*blockers, *(conn for conn, _ in sent)]:
            conn.close()


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
        server.wait_for_log("died with exit code 3", timeout=90)
        with pytest.raises(httpx.ConnectError):  # no worker listens: none is ready
            httpx.get(server.url + "/readyz")
        # and each is started again, with back-off
        _wait(lambda: server.logs().count("died with exit code 3") >= 3, "restarts", 120)
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
            timeout=180,
        )
    finally:
        taken.close()
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"tiffin: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ], done.stderr


def test_a_port_taken_while_runners_load_stops_the_server_with_exit_1(tmp_path):
    # the runner process loads until the test says so; meanwhile another server binds and
    # listens on the port (SO_REUSEADDR, as most servers do): the API workers cannot bind,
    # and the supervisor says so and stops everything instead of leaving its children
    # unwatched
    (tmp_path / "svc.py").write_text(SERVICE)
    server = start_tiffin(
        ["serve", "svc.py:svc", "--workers", "2"],
        cwd=tmp_path,
        env=server_env(tmp_path / "home", HOLD_LOAD=str(tmp_path)),
        log=tmp_path / "log.txt",
        ready=None,
    )
    port = int(server.url.rsplit(":", 1)[1])
    intruder = socket.socket()
    intruder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with running(server):
        deadline = time.monotonic() + 60
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
        (tmp_path / "release").touch()  # the runner has loaded
        try:
            assert server.proc.wait(timeout=60) == 1
        finally:
            intruder.close()
        logs = server.logs()
        assert "could not start the API workers" in logs and "Traceback" not in logs, logs
