"""What every Ray Serve replica of a tiffin application is built from, and its deployment options.

An :class:`AppSpec` is plain data (it travels to every replica): the target that names the
Service, the server settings, the batching overrides and the concrete model tags the driver
resolved. Each replica imports the target itself (as tiffin's ``--workers`` processes do), so
nothing of the user's is pickled: the service's code must be importable on every node (the
same image, or a Ray ``runtime_env``), and its models come from the node's store or, with
``TIFFIN_REMOTE`` set there, from the shared bucket.

Rules:

* A target string is resolved as ``tiffin serve`` resolves it (``force``: ``--service`` /
  ``--tiffin``). A built tiffin travels by its tag, the version pinned: each replica serves it
  from its node's store (its own ``src/`` and ``models/``), pulled from ``TIFFIN_REMOTE`` first
  where the node lacks it. The driver imports the built service too, so its process's model
  lookups see that tiffin's ``models/`` from then on, as in a server.
* A relative target is looked up in the driver's working directory where it exists on the
  replica's node (one machine, a shared mount), else in the replica's own (a Ray
  ``working_dir``).
* A Service object given to :func:`tiffin.ray.deployment` is found again by where it is
  defined: ``module:attr`` for an importable module, ``/abs/path.py:attr`` for a file that
  tiffin imported or that ran as ``__main__``; anything else is an error that says so.
* Every replica serves the model versions the driver saw: a ``name:latest`` that resolves to
  another version on a node is an error naming both, not a silent mix of versions.
* Deployment options pass through to Ray as given (Ray checks them); tiffin only fills
  ``max_ongoing_requests`` and ``graceful_shutdown_timeout_s`` when they are not given: a
  replica being replaced finishes its calls for up to a request's ``api_timeout_s`` (Serve's
  20 s can cut a slow call off, a 500, in a redeploy on a busy machine; :func:`drain_s`);
  for ``max_ongoing_requests`` the ingress takes as many requests as the
  server's ``max_concurrent_requests``, a runner at least its largest ``max_batch_size``
  (Ray's default of 5 would cap every batch at 5 calls). Ray's own access log is off on
  every tiffin deployment unless ``logging_config`` is given: the ingress writes tiffin's
  access log line per request, as ``tiffin serve`` does, and a runner call is no request.
  Each deployment's ``ray_actor_options.runtime_env`` carries :data:`REPLICA_ENV` (Serve's
  per-process options: tiffin's code and the handles' routing on the replica's main event
  loop) under the user's own ``env_vars``; a deployment given no runtime_env gets the
  driver's with them (what Serve would give it), and where the process is not connected to
  Ray when the application is built, nothing (:func:`_with_replica_env`).
* An ingress replica keeps at most two messages per runner replica in flight to a runner
  (:func:`messages_in_flight`, from ``num_replicas`` or the autoscaling maximum); calls that
  find them all out go together when one comes back (:class:`~tiffin.runner.coalescer.
  Coalescer`): every message is an actor call on both sides, the dearest part of a call.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tiffin.config import ServeSettings
from tiffin.exceptions import InvalidArgument, LoadFailed, NotFound
from tiffin.serving.service import Service

if TYPE_CHECKING:
    from tiffin.runner.runner import Runner

__all__ = [
    "NOT_BATCHABLE_ONGOING",
    "REPLICA_ENV",
    "AppSpec",
    "drain_s",
    "ingress_options",
    "load_service",
    "messages_in_flight",
    "runner_options",
    "target_of",
]

logger = logging.getLogger("tiffin.ray")

#: Ray's logging options on tiffin's deployments unless a config gives its own
QUIET_LOGGING = {"enable_access_log": False}
#: messages an ingress replica keeps in flight per runner replica
IN_FLIGHT_PER_REPLICA = 2
#: ``max_ongoing_requests`` of a runner with no batchable method (its calls queue in tiffin)
NOT_BATCHABLE_ONGOING = 100
_BATCH_KEYS = frozenset({"max_batch_size", "max_latency_ms"})
#: Serve's default ``graceful_shutdown_timeout_s``, and what tiffin adds to ``api_timeout_s``
GRACEFUL_SHUTDOWN_S = 20.0
DRAIN_MARGIN_S = 5.0
#: Ray Serve's per-process settings in every tiffin replica unless its ``runtime_env`` sets
#: them: tiffin's code runs on the replica's own event loop (no thread hop per call: nothing
#: of tiffin's blocks a loop, models run on the runner's worker thread), and handles route on
#: that loop too
REPLICA_ENV = {
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
}


@dataclass(frozen=True)
class AppSpec:
    target: str
    settings_json: str
    #: runner -> method -> {max_batch_size, max_latency_ms}
    batching: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    enable_batching: bool = True
    #: runner -> the model tags it serves, as the driver resolved them
    models: dict[str, list[str]] = field(default_factory=dict)
    #: the driver's working directory: where a replica looks for the target when that
    #: directory exists on its node (the same machine, a shared mount), else in its own
    cwd: str | None = None
    #: True: ``target`` is a built tiffin's ``NAME:VERSION``
    built: bool = False

    @property
    def settings(self) -> ServeSettings:
        return ServeSettings.model_validate_json(self.settings_json)


def target_of(target: Service | str) -> str:
    """The ``tiffin serve`` target string that finds ``target`` again in another process."""
    if isinstance(target, str):
        return target
    if not isinstance(target, Service):
        raise InvalidArgument(
            f"tiffin.ray.deployment needs a tiffin.Service or a target such as 'module:svc', "
            f"got {type(target).__name__}"
        )
    for name, module in list(sys.modules.items()):
        attrs = [k for k, v in vars(module).items() if v is target] if module else []
        if not attrs:
            continue
        file = getattr(module, "__file__", None)
        if name == "__main__" or name.startswith("_tiffin_service_"):
            if file:
                return f"{Path(file).resolve()}:{attrs[0]}"
            continue
        return f"{name}:{attrs[0]}"
    raise InvalidArgument(
        f"cannot find where service {target.name!r} is defined: Ray replicas import it again, "
        "so define it at the top level of a module or file and pass it (or 'module:attr')"
    )


def _check_batching(batching: Mapping[str, Any] | None, service: Service) -> dict[str, Any]:
    """BentoML's ``batching_config`` shape, ``{runner: {method: {max_batch_size,
    max_latency_ms}}}``, checked against the service's runners and methods."""
    checked: dict[str, dict[str, dict[str, Any]]] = {}
    runners = {r.name: r for r in service.runners}
    for runner_name, methods in (batching or {}).items():
        runner = runners.get(runner_name)
        if runner is None:
            raise InvalidArgument(
                f"batching_config names runner {runner_name!r}; the service has {sorted(runners)}"
            )
        for method, values in dict(methods).items():
            if method not in runner.methods:
                raise InvalidArgument(
                    f"batching_config names method {method!r} of runner {runner_name!r}, which "
                    f"has {sorted(runner.methods)}"
                )
            unknown = set(values) - _BATCH_KEYS
            if unknown:
                raise InvalidArgument(
                    f"batching_config[{runner_name!r}][{method!r}]: unknown key(s) "
                    f"{sorted(unknown)}; tiffin batches adaptively and takes max_batch_size and "
                    "max_latency_ms (a load-shedding deadline, not a wait window)"
                )
            runner.methods[method].settings.with_overrides(**values)  # checks the values
            checked.setdefault(runner_name, {})[method] = dict(values)
    return checked


def make_spec(
    target: Service | str,
    settings: ServeSettings,
    *,
    batching: Mapping[str, Any] | None,
    enable_batching: bool,
    force: Literal["service", "tiffin"] | None = None,
) -> tuple[AppSpec, Service]:
    """The spec for ``target``, checked by loading the service here (as every replica will)."""
    target_str = target_of(target)
    built = False
    if isinstance(target, Service):
        service = target
    else:
        from tiffin.process.targets import load_built, resolve_target

        resolved = resolve_target(target_str, force=force)
        if resolved.tiffin is not None:
            built, target_str = True, str(resolved.tiffin.tag)
            service = load_built(resolved.tiffin.path)
        else:
            service = _resolve(target_str)
    checked = _check_batching(batching, service)
    spec = AppSpec(
        target_str,
        settings.model_dump_json(),
        checked,
        enable_batching,
        {r.name: [str(m.tag) for m in r.models] for r in service.runners},
        os.getcwd(),
        built,
    )
    return spec, service


def _resolve(target: str, cwd: str | None = None) -> Service:
    from tiffin.process.targets import resolve_service

    return resolve_service(target, cwd=cwd if cwd and Path(cwd).is_dir() else None)


def load_service(spec: AppSpec) -> tuple[Service, ServeSettings]:
    """In a replica: the service, with the spec's settings and batching applied.

    The model versions the driver resolved are fetched first (from ``TIFFIN_REMOTE`` where
    this node's store lacks them), so that ``name:latest`` in the service's code finds them.
    """
    if spec.built:
        service = _load_built(spec.target)
    else:
        from tiffin.store.models import get

        for tags in spec.models.values():
            for tag in tags:
                get(tag)
        service = _resolve(spec.target, spec.cwd)
    settings = spec.settings
    service.apply_settings(settings)
    for runner in service.runners:
        _pin_models(runner, spec.models.get(runner.name))
        for method_name, method in runner.methods.items():
            overrides = dict(spec.batching.get(runner.name, {}).get(method_name, {}))
            if not spec.enable_batching and method.settings.batchable:
                overrides["max_batch_size"] = 1
            if overrides:
                method.settings = method.settings.with_overrides(**overrides)
    return service, settings


def _load_built(tag: str) -> Service:
    """The built tiffin ``tag`` from this node's store, pulled from ``TIFFIN_REMOTE`` first
    when it is not here; served from its own ``src/`` (the working directory) and ``models/``."""
    from tiffin.process.targets import load_built
    from tiffin.store import tiffins
    from tiffin.store.remote import REMOTE_ENV, pull_tiffin

    try:
        found = tiffins.get(tag)
    except NotFound:
        if not os.environ.get(REMOTE_ENV, "").strip():
            raise NotFound(
                f"built tiffin '{tag}' is not in this node's store and {REMOTE_ENV} is not set "
                "here: push it (`tiffin push`) and set the remote on every node, or import it"
            ) from None
        found = pull_tiffin(tag)
    return load_built(found.path, chdir=True)


def _pin_models(runner: Runner, expected: list[str] | None) -> None:
    found = [str(m.tag) for m in runner.models]
    if expected is not None and found != expected:
        raise LoadFailed(
            f"runner {runner.name!r} serves {found} on this node but {expected} where the "
            "application was deployed; name the model versions (not latest) so every replica "
            "serves the same one"
        )


def _max_batch(runner: Runner, spec: AppSpec) -> int | None:
    """The largest max_batch_size the runner's replicas will use (the spec's overrides, the
    settings file's, the runner's own)."""
    if not spec.enable_batching:
        return None
    from_settings = spec.settings.runners.get(runner.name)
    sizes = []
    for name, method in runner.methods.items():
        if method.settings.batchable:
            override = spec.batching.get(runner.name, {}).get(name, {}).get("max_batch_size")
            if override is None and from_settings is not None:
                override = from_settings.max_batch_size
            sizes.append(int(override or method.settings.max_batch_size))
    return max(sizes) if sizes else None


def ingress_options(config: Mapping[str, Any] | None, settings: ServeSettings) -> dict[str, Any]:
    options = dict(config or {})
    options.setdefault("max_ongoing_requests", settings.max_concurrent_requests)
    options.setdefault("logging_config", dict(QUIET_LOGGING))
    options.setdefault("graceful_shutdown_timeout_s", drain_s(settings))
    return _with_replica_env(options)


def drain_s(settings: ServeSettings) -> float:
    """How long a replica being replaced (a redeploy, a scale-down) may finish the calls it
    has: a request's whole ``api_timeout_s`` and a little more, at least Serve's own 20 s."""
    return max(GRACEFUL_SHUTDOWN_S, settings.api_timeout_s + DRAIN_MARGIN_S)


def runner_options(
    config: Mapping[str, Any] | None, runner: Runner, spec: AppSpec
) -> dict[str, Any]:
    options = dict(config or {})
    options.setdefault("logging_config", dict(QUIET_LOGGING))
    options.setdefault("graceful_shutdown_timeout_s", drain_s(spec.settings))
    largest = _max_batch(runner, spec)
    if "max_ongoing_requests" not in options:
        options["max_ongoing_requests"] = largest or NOT_BATCHABLE_ONGOING
    elif largest is not None and int(options["max_ongoing_requests"]) < largest:
        logger.warning(
            "runner %r: max_ongoing_requests=%s caps its batches below max_batch_size=%d",
            runner.name, options["max_ongoing_requests"], largest,
        )  # fmt: skip
    return _with_replica_env(options)


def _with_replica_env(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with :data:`REPLICA_ENV` in its ``ray_actor_options``' ``runtime_env``
    under the variables that runtime_env sets.

    A deployment given no ``runtime_env`` gets the driver's from Serve (its pip, env_vars,
    working_dir, ...), and one given any gets only the driver's ``working_dir``: so where none
    is given, the driver's is the base (as Ray knows it when the application is built: the
    process must be connected, else Serve is left to give it and the variables are not set)."""
    actor = dict(options.get("ray_actor_options") or {})
    given = actor.get("runtime_env")
    if given is None:
        base = _driver_runtime_env()
        if base is None:
            return options
        given = base
    runtime_env = dict(given)
    runtime_env["env_vars"] = {**REPLICA_ENV, **(runtime_env.get("env_vars") or {})}
    actor["runtime_env"] = runtime_env
    options["ray_actor_options"] = actor
    return options


def _driver_runtime_env() -> dict[str, Any] | None:
    """The runtime_env Serve gives a deployment that sets none (the connected driver's, or a
    Serve config's application's in its build task); None when not connected to Ray."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    return copy.deepcopy(dict(ray.get_runtime_context().runtime_env or {}))


def messages_in_flight(options: Mapping[str, Any]) -> int:
    """How many messages an ingress replica keeps in flight to a runner deployment with these
    options: two per replica it may have (``num_replicas``; with autoscaling its
    ``max_replicas``, Ray's defaults included: 1 in a config, 100 for ``"auto"``)."""
    replicas = options.get("num_replicas")
    autoscaling = options.get("autoscaling_config")
    if replicas == "auto":
        replicas = 100
    elif isinstance(autoscaling, Mapping):
        replicas = autoscaling.get("max_replicas", 1)
    elif autoscaling is not None:  # Ray's AutoscalingConfig object
        replicas = getattr(autoscaling, "max_replicas", 1)
    if not isinstance(replicas, int) or replicas < 1:
        replicas = 1
    return IN_FLIGHT_PER_REPLICA * replicas
