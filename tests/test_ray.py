"""tiffin on Ray Serve: a real two-node Ray cluster on loopback, models shared through moto's S3.

The cluster (``ray.cluster_utils.Cluster``: a head on 127.0.0.2 and a second node on
127.0.0.3, one CPU and 200 MB of object store each, ``RAY_TMPDIR`` on a short scratch path) is
started by the one test that needs it and stopped by its own processes; nothing here calls
``ray stop`` or sends traffic past loopback (Ray turns 127.0.0.1, and only that, into the
machine's address). The other tests need no cluster.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from tests.conftest import free_port, tiffin_exe
from tests.fixtures_mlflow import Server, fitted_classifier, iris_like, save_sklearn

if importlib.util.find_spec("ray") is None:  # CI installs tiffin[ray]: there, this is a failure
    if os.environ.get("CI"):
        raise RuntimeError("tests/test_ray.py needs tiffin[ray]; the Makefile installs it")
    pytest.skip("needs tiffin[ray] (make test installs it)", allow_module_level=True)

HEAD_IP, NODE2_IP = "127.0.0.2", "127.0.0.3"
NODE2 = "tiffin_node2"  # a custom resource only the second node has
# Ray Serve's own health checks of its proxy, with room for a machine whose every core is busy
# (its defaults, 5 s to get ready and 10 s per check, restart the proxy on a loaded 2-CPU host;
# under make test-contended a Serve process took 60 s to import Ray before its first line)
SLOW_HOST = {
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "300",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "120",
}
NICENESS = "RAY_worker_niceness"  # (Ray's own spelling)
#: the same room for the replicas' health checks (Serve's default: 30 s)
SLOW_CHECKS = {"health_check_timeout_s": 120}


@pytest.fixture
def s3_env(moto_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A fresh bucket on moto, and the variables boto3 reads (for this process and the nodes)."""
    import boto3

    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": moto_server.url,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
    }  # fmt: skip
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bucket = f"tiffin-ray-{os.getpid()}-{int(time.monotonic() * 1000) % 10**8}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    env["TIFFIN_REMOTE"] = f"s3://{bucket}/shared"
    return env


@contextlib.contextmanager
def two_node_cluster(
    head_env: dict[str, str], node2_env: dict[str, str], keep_logs: Path
) -> Iterator[Any]:
    from ray.cluster_utils import Cluster

    scratch = tempfile.mkdtemp(prefix="tr", dir="/tmp")  # Ray's socket paths must stay short
    os.makedirs(f"{scratch}/ray")
    old = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = scratch
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    # Ray starts its workers (Serve's controller, proxy, replicas) at nice 15: beside a busy loop
    # per core (make test-contended) they got ~3% of a CPU and took minutes to import Ray. This
    # cluster's workers run at the priority of everything else on the machine.
    niceness = os.environ.get(NICENESS)
    os.environ[NICENESS] = "0"
    common = {"num_cpus": 1, "object_store_memory": 200 << 20}
    cluster = Cluster(initialize_head=True, head_node_args={
        **common, "node_ip_address": HEAD_IP, "include_dashboard": False,
        "temp_dir": f"{scratch}/ray", "env_vars": head_env,
    })  # fmt: skip
    try:
        cluster.node2 = cluster.add_node(
            **common, node_ip_address=NODE2_IP, resources={NODE2: 1}, env_vars=node2_env
        )
        yield cluster
    except BaseException:  # keep Serve's own logs for the failure report
        shutil.copytree(
            f"{scratch}/ray/session_latest/logs",
            keep_logs,
            dirs_exist_ok=True,
            ignore_dangling_symlinks=True,
        )
        _print_serve_errors(keep_logs / "serve")  # pytest shows it with the failure
        raise
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()  # the processes this cluster started, nothing else
        for name, value in (("RAY_TMPDIR", old), (NICENESS, niceness)):
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(scratch, ignore_errors=True)


def _print_serve_errors(logs: Path) -> None:
    """Serve's error lines (controller, proxy, replicas), with their tracebacks."""
    for path in sorted(logs.glob("*.log")):
        lines = path.read_text(errors="replace").splitlines()
        marks = [i for i, line in enumerate(lines) if " ERROR " in line or " WARNING " in line]
        for i in marks[-8:]:
            print(f"{path.name}: " + "\n  ".join(lines[i : i + 12]))


SERVICE = """
import tiffin
from tiffin.serving.model_service import build_service

svc = build_service(tiffin.models.get("{tag}"))
"""


def _post(client: httpx.Client, path: str, body: Any) -> httpx.Response:
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def _wait_ready(client: httpx.Client, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-4000:]
        with contextlib.suppress(httpx.HTTPError):
            if client.get("/readyz", timeout=5).status_code == 200:
                return
        time.sleep(1)
    raise AssertionError(f"not ready in 600 s:\n{log.read_text()[-4000:]}")


def _replica_figures(client: httpx.Client) -> dict[tuple[str, str], float]:
    """``tiffin_replica_calls_total`` by (replica, node) for runner iris."""
    found = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("tiffin_replica_calls_total{") and 'runner="iris"' in line:
            labels = dict(
                part.split("=", 1)
                for part in line[line.index("{") + 1 : line.index("}")].split(",")
            )
            found[(labels["replica"].strip('"'), labels["node"].strip('"'))] = float(
                line.rsplit(" ", 1)[1]
            )
    return found


def _summed_calls(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('tiffin_runner_calls_total{method="predict",runner="iris"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _kill_runner_replica(address: str) -> str:
    import ray

    ray.init(address=address, logging_level="ERROR")
    actors = [a for a in ray.util.list_named_actors(all_namespaces=True)
              if "runner-iris" in a["name"]]  # fmt: skip
    assert len(actors) == 1, actors
    ray.kill(ray.get_actor(actors[0]["name"], namespace=actors[0]["namespace"]), no_restart=True)
    return str(actors[0]["name"])


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a hang guard: on an idle 2-CPU host it takes about 70 s
def test_a_service_on_two_ray_nodes(
    s3_env: dict[str, str], tmp_path: Path, tiffin_home: Path, subprocess_env: dict[str, str]
) -> None:
    import tiffin
    from tiffin.store.remote import push_model

    model = tiffin.mlflow.import_model("iris", str(save_sklearn(tmp_path / "mlflow-model")),
                                       signatures={"predict": {"batchable": True}})  # fmt: skip
    push_model(model.tag, s3_env["TIFFIN_REMOTE"])
    (tmp_path / "svc.py").write_text(SERVICE.format(tag=model.tag))
    config = tmp_path / "tiffin.yaml"
    direct_port = free_port()  # every ingress replica also serves here (tiffin.ray.direct)
    config.write_text(yaml.safe_dump({"api_timeout_s": 60, "ray": {
        "proxy_location": "HeadOnly", "direct_port": direct_port,
        "service": {**SLOW_CHECKS, "ray_actor_options": {"num_cpus": 0.25}},
        "runners": {"iris": {**SLOW_CHECKS,
                             "ray_actor_options": {"num_cpus": 0.25, "resources": {NODE2: 0.1}}}},
    }}))  # fmt: skip
    node2_home = tmp_path / "node2-home"  # empty: the runner replica pulls the model from S3
    port = free_port()
    log = tmp_path / "serve.log"
    head_env = {**s3_env, **SLOW_HOST, "TIFFIN_HOME": str(tiffin_home)}
    with two_node_cluster(
        head_env, {**head_env, "TIFFIN_HOME": str(node2_home)}, tmp_path / "ray-logs"
    ) as cluster:
        env = {**subprocess_env, **SLOW_HOST, "RAY_TMPDIR": os.environ["RAY_TMPDIR"],
               "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [tiffin_exe(), "serve", "svc.py:svc", "--backend", "ray", "--address",
                 cluster.address, "--host", "127.0.0.1", "--port", str(port), "--config",
                 str(config)], cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        try:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=90) as client:
                _wait_ready(client, proc, log)
                _serves_and_recovers(client, cluster, model, node2_home)
                _serves_directly(direct_port)
                _rolls_over_to_a_new_version(client, cluster, tmp_path, s3_env["TIFFIN_REMOTE"],
                                             node2_home, direct_port)  # fmt: skip
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 0, log.read_text()[-4000:]
            assert "removing application 'iris'" in log.read_text()
            assert f"http://127.0.0.1:{direct_port} (direct)" in log.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)


def _serves_and_recovers(client: httpx.Client, cluster: Any, model: Any, node2: Path) -> None:
    X, _ = iris_like()
    expected = fitted_classifier().predict(X).tolist()
    rows = X.tolist()
    # the first call may meet a router still learning of the runner replica on a loaded
    # machine: a 503/504 then is an answer too; it must turn into a 200
    deadline = time.monotonic() + 240
    while (answer := _post(client, "/predict", rows)).status_code in (503, 504):
        assert time.monotonic() < deadline, answer.text
        time.sleep(1)
    assert answer.status_code == 200, answer.text
    assert answer.json() == expected
    invocations = _post(client, "/invocations", {"inputs": rows})
    assert invocations.status_code == 200, invocations.text
    assert invocations.json() == {"predictions": expected}
    # the runner replica runs on the second node, which had the model only from S3
    assert (node2 / "models" / "iris" / str(model.tag.version) / "model.yaml").is_file()
    deadline = time.monotonic() + 60
    while not (figures := _replica_figures(client)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert [node for _replica, node in figures] == [cluster.node2.node_id]
    # concurrent callers, one runner replica killed: every request answered, then 200s again
    _kill_runner_replica(cluster.address)
    statuses: list[int] = []

    def caller(index: int) -> list[int]:
        seen = []
        end = time.monotonic() + 600  # Ray restarts the replica: slow on a loaded machine
        while time.monotonic() < end:
            response = _post(client, "/predict", rows[index : index + 2])  # a hung one: timeout
            seen.append(response.status_code)
            if response.status_code == 200:
                assert response.json() == expected[index : index + 2]
                if seen.count(200) >= 5:
                    break
            else:
                assert response.status_code in (503, 504), response.text
                time.sleep(0.2)
        return seen

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for seen in pool.map(caller, range(4)):
            statuses += seen
            assert seen.count(200) >= 5, seen  # each caller got through again
    assert all(_post(client, "/predict", rows).json() == expected for _ in range(5))
    # figures: the new replica reports too, and the sums never went back
    deadline = time.monotonic() + 60
    while len(_replica_figures(client)) != 1 or _summed_calls(client) < 3 + statuses.count(200):
        assert time.monotonic() < deadline, (_replica_figures(client), _summed_calls(client))
        time.sleep(0.5)


def _serves_directly(port: int) -> None:
    """The ingress replica's own port answers as Serve's proxy does, /metrics included."""
    X, _ = iris_like()
    expected = fitted_classifier().predict(X).tolist()
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=90) as direct:
        answer = _post(direct, "/predict", X.tolist())
        assert answer.status_code == 200, answer.text
        assert answer.json() == expected
        invocations = _post(direct, "/invocations", {"dataframe_split": {"data": X.tolist()}})
        assert invocations.status_code == 200, invocations.text
        assert invocations.json() == {"predictions": expected}
        bad = direct.post(
            "/predict", content=b"[[1.0,", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 400, bad.text  # malformed JSON: a 400, as ever
        assert _post(direct, "/predict", X.tolist()).json() == expected
        assert _summed_calls(direct) >= 2  # the runner replica's figures, through Ray


def _rolls_over_to_a_new_version(
    client: httpx.Client, cluster: Any, tmp_path: Path, remote: str, node2: Path,
    direct_port: int,
) -> None:  # fmt: skip
    """A new model version redeployed under steady traffic, as ``serve run``/``serve deploy``
    of a new version do (here by a second driver, over the application the command deployed):
    Serve replaces the ingress and runner replicas, every request is answered 200 with the old
    or the new version's predictions, and the new version's in the end."""
    import ray
    from ray import serve
    from sklearn.linear_model import LogisticRegression

    import tiffin
    import tiffin.ray
    from tiffin.config import ServeSettings
    from tiffin.store.remote import push_model

    X, y = iris_like()
    rows = X.tolist()
    old = fitted_classifier().predict(X).tolist()
    flipped = LogisticRegression(max_iter=200).fit(X, 2 - y)
    new = flipped.predict(X).tolist()
    assert new != old
    model = tiffin.mlflow.import_model(
        "iris", str(save_sklearn(tmp_path / "mlflow-model-v2", flipped)),
        signatures={"predict": {"batchable": True}},
    )  # fmt: skip
    push_model(model.tag, remote)  # the runner replica on the second node pulls it
    (tmp_path / "svc_v2.py").write_text(SERVICE.format(tag=model.tag))
    app = tiffin.ray.deployment(
        f"{tmp_path / 'svc_v2.py'}:svc",
        {**SLOW_CHECKS, "ray_actor_options": {"num_cpus": 0.25}},
        {
            "iris": {
                **SLOW_CHECKS,
                "ray_actor_options": {"num_cpus": 0.25, "resources": {NODE2: 0.1}},
            }
        },
        settings=ServeSettings(api_timeout_s=60),
        direct_port=direct_port,
    )
    stop = threading.Event()
    seen: list[list[tuple[int, Any]]] = [[] for _ in range(4)]

    def caller(index: int) -> None:
        while not stop.is_set():  # a hung request ends in the client's timeout: an error
            response = _post(client, "/predict", rows)
            ok = response.status_code == 200
            seen[index].append((response.status_code, response.json() if ok else response.text))

    threads = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    try:
        _wait_for(lambda: all(seen), "traffic before the redeploy")
        if not ray.is_initialized():
            ray.init(address=cluster.address, logging_level="ERROR")
        serve.run(app, name="iris", route_prefix="/")  # returns once the new version runs
        marks = [len(answers) for answers in seen]
        _wait_for(lambda: all(sum(body == new for _status, body in answers[mark:]) >= 3
                              for answers, mark in zip(seen, marks, strict=True)),
                  "every caller answered by the new version")  # fmt: skip
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    failed = [(status, body) for answers in seen for status, body in answers if status != 200]
    assert not failed, failed[:5]
    assert all(body in (old, new) for answers in seen for _status, body in answers)
    assert all(answers[-1][1] == new for answers in seen)
    assert sum(len(answers) for answers in seen) > 12
    assert (node2 / "models" / "iris" / str(model.tag.version) / "model.yaml").is_file()
    # after the redeploy (its settings carry the port too) the direct port serves the new
    # version on fresh connections. (With one ingress replica the port is closed while Serve
    # replaces it -- the README says so -- so no direct traffic runs during the rollover.)
    for _ in range(8):
        with httpx.Client(base_url=f"http://127.0.0.1:{direct_port}", timeout=90) as direct:
            assert _post(direct, "/predict", rows).json() == new


def _wait_for(done: Any, what: str, timeout: float = 480) -> None:
    """Poll ``done()`` until it holds; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.2)


APP_MODULE = """
import tiffin.ray

app = tiffin.ray.deployment(
    "svc.py:svc",
    service_deployment_config={"num_replicas": 2},
    runners_deployment_config_map={"iris": {"autoscaling_config": {"min_replicas": 1,
                                                                   "max_replicas": 3}}},
    batching_config={"iris": {"predict": {"max_batch_size": 64}}},
)
"""


@pytest.mark.slow
def test_serve_build_writes_a_config_for_the_application(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """``serve build module:app``: the path to ``serve deploy`` and KubeRay's RayService."""
    import tiffin

    model = tiffin.mlflow.import_model("iris", str(save_sklearn(tmp_path / "mlflow-model")),
                                       signatures={"predict": {"batchable": True}})  # fmt: skip
    (tmp_path / "svc.py").write_text(SERVICE.format(tag=model.tag))
    (tmp_path / "iris_app.py").write_text(textwrap.dedent(APP_MODULE))
    serve = str(Path(sys.executable).parent / "serve")
    result = subprocess.run(
        [serve, "build", "iris_app:app", "-o", "built.yaml"],
        cwd=tmp_path,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    built = yaml.safe_load((tmp_path / "built.yaml").read_text())
    (application,) = built["applications"]
    assert application["import_path"] == "iris_app:app"
    deployments = {d["name"]: d for d in application["deployments"]}
    assert set(deployments) == {"iris", "runner-iris", "tiffin-stats"}
    assert deployments["iris"]["num_replicas"] == 2
    assert deployments["iris"]["max_ongoing_requests"] == 1000  # max_concurrent_requests
    assert deployments["runner-iris"]["autoscaling_config"]["max_replicas"] == 3
    assert deployments["runner-iris"]["max_ongoing_requests"] == 64  # its max_batch_size
    assert np.isclose(deployments["tiffin-stats"]["ray_actor_options"]["num_cpus"], 0)
