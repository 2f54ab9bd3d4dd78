"""tiffin.ray without a cluster: specs, deployment options, the stats book, error translation."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import tiffin
from tiffin.cli import main
from tiffin.config import RunnerSettings, ServeSettings
from tiffin.exceptions import (
    InvalidArgument,
    LoadFailed,
    Overloaded,
    RunnerUnavailable,
    ServerError,
)
from tiffin.ray.backend import translate
from tiffin.ray.replica_stats import StatsBook, summed
from tiffin.ray.spec import (
    REPLICA_ENV,
    AppSpec,
    ingress_options,
    load_service,
    make_spec,
    messages_in_flight,
    runner_options,
    target_of,
)
from tiffin.runner.stats import BatchStats

SERVICE = """
import tiffin

class Echo(tiffin.Runnable):
    @tiffin.Runnable.method(batchable=True)
    def predict(self, rows):
        return rows

    @tiffin.Runnable.method()
    def describe(self, rows):
        return len(rows)

runner = tiffin.Runner(Echo, name="echo", max_batch_size=32)
svc = tiffin.Service("echoes", runners=[runner])
"""


@pytest.fixture
def service_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "echo_svc.py"
    path.write_text(SERVICE)
    monkeypatch.chdir(tmp_path)
    return path


def _spec(**kwargs: Any) -> tuple[AppSpec, Any]:
    return make_spec("echo_svc.py:svc", kwargs.pop("settings", ServeSettings()),
                     batching=kwargs.pop("batching", None),
                     enable_batching=kwargs.pop("enable_batching", True))  # fmt: skip


def test_a_replica_builds_the_service_with_the_drivers_batching(service_file: Path) -> None:
    spec, _service = _spec(batching={"echo": {"predict": {"max_batch_size": 8}}})
    service, _settings = load_service(spec)
    assert service.runners[0].methods["predict"].settings.max_batch_size == 8
    spec, _service = _spec(enable_batching=False)
    service, _settings = load_service(spec)
    assert service.runners[0].methods["predict"].settings.max_batch_size == 1


def test_batching_config_errors_name_what_exists(service_file: Path) -> None:
    with pytest.raises(InvalidArgument, match=r"runner 'nope'.*\['echo'\]"):
        _spec(batching={"nope": {}})
    with pytest.raises(InvalidArgument, match=r"method 'fit'.*\['describe', 'predict'\]"):
        _spec(batching={"echo": {"fit": {}}})
    with pytest.raises(InvalidArgument, match=r"batch_wait_timeout_s.*adaptively"):
        _spec(batching={"echo": {"predict": {"batch_wait_timeout_s": 0.1}}})
    with pytest.raises(InvalidArgument, match="max_batch_size"):
        _spec(batching={"echo": {"predict": {"max_batch_size": 0}}})


def test_max_ongoing_requests_covers_a_whole_batch(service_file: Path) -> None:
    spec, service = _spec()
    runner = service.runners[0]
    assert runner_options(None, runner, spec)["max_ongoing_requests"] == 32
    quiet = {"enable_access_log": False}  # Ray's access log: tiffin's ingress writes its own
    assert runner_options({"max_ongoing_requests": 7}, runner, spec) == {
        "max_ongoing_requests": 7, "logging_config": quiet, "graceful_shutdown_timeout_s": 65.0,
    }  # fmt: skip
    settings = ServeSettings(runners={"echo": RunnerSettings(max_batch_size=256)})
    spec, service = _spec(settings=settings)
    assert runner_options({"num_replicas": 2}, runner, spec) == {
        "num_replicas": 2, "max_ongoing_requests": 256, "logging_config": quiet,
        "graceful_shutdown_timeout_s": 65.0,
    }  # fmt: skip
    loud = {"logging_config": {"enable_access_log": True}}
    assert runner_options(loud, runner, spec)["logging_config"] == loud["logging_config"]


def test_a_replaced_replica_may_finish_a_whole_request(service_file: Path) -> None:
    """Serve's default 20 s of graceful shutdown becomes the request timeout and 5 s (ingress
    and runners), at least 20 s; one given in a deployment config is kept."""
    assert ingress_options(None, ServeSettings())["graceful_shutdown_timeout_s"] == 65.0
    assert (
        ingress_options(None, ServeSettings(api_timeout_s=2))["graceful_shutdown_timeout_s"] == 20
    )
    given = {"graceful_shutdown_timeout_s": 3}
    assert ingress_options(given, ServeSettings())["graceful_shutdown_timeout_s"] == 3
    spec, service = _spec(settings=ServeSettings(api_timeout_s=300))
    runner = service.runners[0]
    assert runner_options(None, runner, spec)["graceful_shutdown_timeout_s"] == 305.0
    assert runner_options(given, runner, spec)["graceful_shutdown_timeout_s"] == 3


def test_every_replica_runs_tiffin_on_serves_own_loop_unless_told(
    service_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Serve's per-process settings ride in each deployment's runtime_env; a user's own
    env_vars win, and the rest of a runtime_env and of ray_actor_options is kept. A deployment
    given no runtime_env starts from the driver's (Serve gives it the driver's whole one only
    when it sets none): with no connection to Ray to ask, it is left for Serve to give."""
    import tiffin.ray.spec as ray_spec

    spec, service = _spec()
    runner = service.runners[0]
    assert REPLICA_ENV["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
    assert ray_spec._driver_runtime_env() is None  # this process is not connected to Ray
    for options in (ingress_options(None, ServeSettings()), runner_options(None, runner, spec)):
        assert "ray_actor_options" not in options
    driver = {"pip": ["scikit-learn"], "working_dir": "gcs://_ray_pkg_1.zip",
              "env_vars": {"TIFFIN_HOME": "/models", "MINE": "driver"}}  # fmt: skip
    monkeypatch.setattr(ray_spec, "_driver_runtime_env", lambda: dict(driver))
    for options in (ingress_options(None, ServeSettings()), runner_options(None, runner, spec)):
        assert options["ray_actor_options"] == {"runtime_env": {
            **driver, "env_vars": {**REPLICA_ENV, "TIFFIN_HOME": "/models", "MINE": "driver"},
        }}  # fmt: skip
    given = {"ray_actor_options": {"num_cpus": 0.5, "runtime_env": {
        "working_dir": ".", "env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1",
                                         "MINE": "x"}}}}  # fmt: skip
    for options in (ingress_options(given, ServeSettings()), runner_options(given, runner, spec)):
        actor = options["ray_actor_options"]
        assert actor["num_cpus"] == 0.5 and actor["runtime_env"]["working_dir"] == "."
        assert actor["runtime_env"]["env_vars"] == {
            **REPLICA_ENV, "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1", "MINE": "x"
        }  # fmt: skip
    # the caller's options are not changed in place
    assert given["ray_actor_options"]["runtime_env"]["env_vars"] == {  # type: ignore[index]
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "1", "MINE": "x"}  # fmt: skip


def test_direct_http_settings_are_checked_where_given(service_file: Path) -> None:
    from tiffin.ray.application import app_builder, with_direct_http

    settings = ServeSettings(api_timeout_s=7)
    assert with_direct_http(settings, None) is settings
    direct = with_direct_http(settings, 3999, "127.0.0.9")
    assert (direct.ray.direct_port, direct.ray.direct_host, direct.api_timeout_s) == (
        3999, "127.0.0.9", 7)  # fmt: skip
    assert settings.ray.direct_port is None  # a new settings object
    for bad in (0, 70000):
        with pytest.raises(InvalidArgument, match=r"ray\.direct_port"):
            with_direct_http(settings, bad)
    with pytest.raises(InvalidArgument, match="unknown args"):
        app_builder({"target": "echo_svc.py:svc", "direct": 1})
    result = CliRunner().invoke(main, ["serve", "echo_svc.py:svc", "--direct-port", "3001"])
    assert result.exit_code == 2 and "--direct-port needs --backend ray" in result.stderr
    # Serve's proxy binds with SO_REUSEPORT too: one port for both would be shared silently
    result = CliRunner().invoke(main, ["serve", "echo_svc.py:svc", "--backend", "ray",
                                       "--port", "3001", "--direct-port", "3001"])  # fmt: skip
    assert result.exit_code != 0
    assert "direct port 3001 is Serve's HTTP port" in result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1


def test_an_ingress_keeps_two_messages_in_flight_per_runner_replica() -> None:
    assert messages_in_flight({}) == 2
    assert messages_in_flight({"num_replicas": 3}) == 6
    assert messages_in_flight({"autoscaling_config": {"min_replicas": 1, "max_replicas": 5}}) == 10
    assert messages_in_flight({"autoscaling_config": {"min_replicas": 1}}) == 2  # Ray's default
    assert messages_in_flight({"num_replicas": "auto"}) == 200  # Ray's maximum for "auto"


def test_a_replica_refuses_other_model_versions(tmp_path: Path) -> None:
    from tests.fixtures_mlflow import fitted_classifier

    for version in ("v1", "v2"):
        tiffin.sklearn.save_model(f"clf:{version}", fitted_classifier())
    (tmp_path / "clf_svc.py").write_text(
        "import tiffin\nsvc = tiffin.Service('c', runners=[tiffin.models.get('clf').to_runner()])\n"
    )
    spec, _service = make_spec(str(tmp_path / "clf_svc.py:svc"), ServeSettings(), batching=None,
                               enable_batching=True)  # fmt: skip
    assert spec.models == {"clf": ["clf:v2"]}
    pinned = AppSpec(spec.target, spec.settings_json, models={"clf": ["clf:v1"]}, cwd=spec.cwd)
    with pytest.raises(LoadFailed, match=re.escape("['clf:v2'] on this node but ['clf:v1']")):
        load_service(pinned)


def test_target_of_finds_a_service_again(service_file: Path) -> None:
    from tiffin.process.targets import resolve_service

    service = resolve_service("echo_svc.py:svc")
    assert target_of(service) == f"{service_file.resolve()}:svc"
    assert target_of("pkg.mod:svc") == "pkg.mod:svc"
    with pytest.raises(InvalidArgument, match="define it at the top level"):
        target_of(tiffin.Service("nowhere"))
    with pytest.raises(InvalidArgument, match=r"tiffin\.Service or a target"):
        target_of(42)  # type: ignore[arg-type]


def _snapshot(calls: int) -> dict[str, Any]:
    stats = BatchStats()
    stats.calls = stats.rows = calls
    stats.batches = 1
    stats.batch_rows.observe(calls)
    return stats.snapshot()


def test_the_stats_book_keeps_sums_as_replicas_come_and_go() -> None:
    now = [0.0]
    book = StatsBook(clock=lambda: now[0], retire_after=30)
    book.report("r", "a", "node-1", {"predict": _snapshot(3)})
    book.report("r", "b", "node-2", {"predict": _snapshot(4)})
    collected = book.collect()
    assert [(r["replica"], r["node"]) for r in collected["replicas"]] == [
        ("a", "node-1"), ("b", "node-2"),
    ]  # fmt: skip
    assert summed(collected)["r"]["predict"]["calls"] == 7
    now[0] = 20
    book.report("r", "b", "node-2", {"predict": _snapshot(5)})  # b lives on, a goes silent
    now[0] = 40
    collected = book.collect()
    assert [r["replica"] for r in collected["replicas"]] == ["b"]
    assert summed(collected)["r"]["predict"]["calls"] == 8  # a's 3 stay in the sum
    book.report("r", "b", "node-2", {"predict": _snapshot(6)}, final=True)
    collected = book.collect()
    assert collected["replicas"] == [] and summed(collected)["r"]["predict"]["calls"] == 9


def test_ray_failures_become_tiffin_errors() -> None:
    if importlib.util.find_spec("ray") is not None:
        from ray.exceptions import ActorDiedError
        from ray.serve.exceptions import BackPressureError

        assert isinstance(translate(ActorDiedError(), "clf"), RunnerUnavailable)
        assert isinstance(
            translate(BackPressureError(num_queued_requests=9, max_queued_requests=8), "clf"),
            Overloaded,
        )
    error = ValueError("the model's own")
    assert translate(error, "clf") is error


def test_the_serve_command_checks_its_flags(service_file: Path) -> None:
    result = CliRunner().invoke(main, ["serve", "echo_svc.py:svc", "--backend", "ray",
                                       "--workers", "2"])  # fmt: skip
    assert result.exit_code == 2 and "--backend ray" in result.stderr
    result = CliRunner().invoke(main, ["serve", "echo_svc.py:svc", "--address", "auto"])
    assert result.exit_code == 2 and "--address needs --backend ray" in result.stderr


def test_ray_settings_come_from_the_file_only(tmp_path: Path) -> None:
    from tiffin.config import load_settings

    config = tmp_path / "c.yaml"
    config.write_text("ray:\n  proxy_location: HeadOnly\n  runners: {clf: {num_replicas: 2}}\n")
    settings = load_settings(config, environ={})
    assert settings.ray.proxy_location == "HeadOnly"
    assert settings.ray.runners == {"clf": {"num_replicas": 2}}
    config.write_text("ray:\n  replicas: 2\n")
    with pytest.raises(InvalidArgument, match=re.escape("unknown key 'ray.replicas'")):
        load_settings(config, environ={})


@pytest.fixture
def process_state(monkeypatch: pytest.MonkeyPatch) -> Any:
    """What serving a built tiffin changes in a process (sys.path, model lookups), restored."""
    import sys

    from tiffin.store.models import use_bundled_models

    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    use_bundled_models(None)


def test_a_built_tiffin_travels_by_tag_and_a_new_node_pulls_it(
    s3_bucket: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, process_state: Any
) -> None:
    from tests.test_build_support import invoke, project, save_clf
    from tiffin.exceptions import NotFound
    from tiffin.store.remote import REMOTE_ENV, push_tiffin

    save_clf()
    monkeypatch.chdir(project(tmp_path / "proj", tiffinfile='service: "service.py:svc"\n'))
    tag = invoke("build", "-q").stdout.strip()
    url = f"s3://{s3_bucket.name}/shared"
    push_tiffin(tag, url)
    monkeypatch.chdir(tmp_path)
    spec, service = make_spec(tag.split(":")[0], ServeSettings(), batching=None,
                              enable_batching=True)  # fmt: skip
    assert (spec.built, spec.target, service.name) == (True, tag, "clfsvc")  # version pinned
    assert spec.models == {"clf": [str(tiffin.models.get("clf").tag)]}
    monkeypatch.setenv("TIFFIN_HOME", str(tmp_path / "new-node"))  # nothing stored there
    monkeypatch.delenv(REMOTE_ENV, raising=False)
    with pytest.raises(NotFound, match=f"built tiffin '{tag}' is not in this node's store"):
        load_service(spec)
    monkeypatch.setenv(REMOTE_ENV, url)
    replica, _settings = load_service(spec)
    assert Path.cwd() == tmp_path / "new-node" / "tiffins" / "clfsvc" / tag.split(":")[1] / "src"
    runner = replica.runners[0]
    runner.init_local()
    try:
        assert runner.predict.run([[0.0, 0.0], [1.0, 1.0]]).tolist() == [0, 1]
    finally:
        runner.destroy()


def test_serve_on_ray_whose_serve_does_not_start_is_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ray Serve's proxy dying while it starts (as on an overloaded host) is one line and exit
    code 1, not Ray's traceback. (Ray itself is stood in for here; the real cluster is
    tests/test_ray.py's.)"""
    import ray
    from ray import serve

    import tiffin.ray.application as application
    import tiffin.ray.cluster as cluster

    class Named:
        name = "svc"

    def start(**_: Any) -> None:
        raise RuntimeError("The actor died unexpectedly before finishing this task.\n  ProxyActor")

    monkeypatch.setattr(application, "build", lambda *a, **k: (object(), Named()))
    monkeypatch.setattr(cluster, "connect", lambda *a: False)
    monkeypatch.setattr(serve, "start", start)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    result = CliRunner().invoke(main, ["serve", "svc.py:svc", "--backend", "ray"])
    assert result.exit_code == 1
    assert "Ray Serve did not start on the cluster: The actor died" in result.output
    assert "Traceback" not in result.output and result.output.count("\n") == 1


def test_a_stop_while_deploying_removes_the_application(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM while Serve deploys (before the command serves): the half-deployed application
    is removed and the command ends cleanly, instead of Ray's handler aborting the process
    with the application left on the cluster. (Ray stood in for, as above.)"""
    import os
    import signal
    import time

    import ray
    from ray import serve

    import tiffin.ray.application as application
    import tiffin.ray.cluster as cluster

    class Named:
        name = "svc"

    deleted: list[str] = []
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def deploying(*_: Any, **__: Any) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 30  # the signal interrupts this; the bound is a guard
        while time.monotonic() < deadline:
            time.sleep(0.01)
        raise AssertionError("SIGTERM did not stop the deploy")

    monkeypatch.setattr(application, "build", lambda *a, **k: (object(), Named()))
    monkeypatch.setattr(cluster, "connect", lambda *a: False)
    monkeypatch.setattr(cluster, "_start_serve", lambda start: None)
    monkeypatch.setattr(serve, "run", deploying)
    monkeypatch.setattr(serve, "delete", deleted.append)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    result = CliRunner().invoke(main, ["serve", "svc.py:svc", "--backend", "ray"])
    assert result.exit_code == 0, result.output
    assert "stopped while deploying; removing application 'svc'" in result.output
    assert deleted == ["svc"]
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # put back


def test_serve_start_waits_past_serves_own_proxy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve gives its HTTP proxy a fixed 60 s; on a busy cluster it comes up later, and the
    command waits for it (Serve's status polled) instead of failing; a proxy that never turns
    healthy is one line. (Ray stood in for, as above.)"""
    from types import SimpleNamespace

    from ray import serve

    import tiffin.ray.cluster as cluster

    starts: list[dict[str, Any]] = []
    states = iter(["STARTING", "STARTING", "HEALTHY"])

    def start(**options: Any) -> None:
        starts.append(options)
        if len(starts) == 1:
            raise TimeoutError("HTTP proxies not available after 60s.")

    def status(state: Any = None) -> Any:
        return SimpleNamespace(proxies={"node": state or next(states)})

    monkeypatch.setattr(serve, "start", start)
    monkeypatch.setattr(serve, "status", status)
    monkeypatch.setattr(cluster.time, "sleep", lambda _s: None)
    cluster._start_serve({"http_options": {"port": 1}}, wait_s=60)
    assert starts == [{"http_options": {"port": 1}}] * 2
    assert next(states, "drained") == "drained"  # polled until HEALTHY

    starts.clear()
    monkeypatch.setattr(serve, "status", lambda: status("UNHEALTHY"))
    clock = iter(range(0, 1000, 10))
    monkeypatch.setattr(cluster.time, "monotonic", lambda: float(next(clock)))
    with pytest.raises(ServerError, match="its HTTP proxy was not healthy after 60 s more"):
        cluster._start_serve({}, wait_s=60)
