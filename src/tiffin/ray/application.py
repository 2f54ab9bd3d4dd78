"""``tiffin.ray.deployment(...)``: a Service as a Ray Serve application.

The application is an ingress deployment (tiffin's ASGI app), one deployment per runner, and
a small stats deployment; :func:`deployment` returns it unstarted, so ``serve.run(app)``,
``serve run module:app`` and ``serve deploy`` (a config file whose ``import_path`` names it)
all deploy it. :func:`app_builder` is the same as a Serve application builder, for config
files that pass the target as an argument.

Rules (see :mod:`tiffin.ray.spec` for how replicas find the service and its models):

* Deployment names: the ingress is the service's name, each runner ``runner-<name>``, the
  stats ``tiffin-stats``; a runner config for a runner the service lacks is an error.
* ``enable_batching=False`` calls each runner method once per request (max_batch_size 1);
  ``batching_config`` sets ``max_batch_size``/``max_latency_ms`` per runner method.
* Ray's own errors about an option are :class:`~tiffin.exceptions.InvalidArgument` naming the
  deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

from tiffin.config import ServeSettings
from tiffin.exceptions import InvalidArgument, missing_dependency
from tiffin.ray.spec import (
    QUIET_LOGGING,
    ingress_options,
    make_spec,
    messages_in_flight,
    runner_options,
)

if TYPE_CHECKING:
    from tiffin.serving.service import Service

__all__ = [
    "STATS_DEPLOYMENT",
    "app_builder",
    "build",
    "deployment",
    "runner_deployment_name",
    "with_direct_http",
]

STATS_DEPLOYMENT = "tiffin-stats"


def runner_deployment_name(runner: str) -> str:
    return f"runner-{runner}"


def _deployments() -> Any:
    try:
        from tiffin.ray import _deployments
    except ImportError as exc:
        if exc.name and exc.name.split(".")[0] == "ray":
            raise missing_dependency("ray[serve]", "ray") from exc
        raise
    return _deployments


def _with_options(cls: Any, name: str, options: Mapping[str, Any]) -> Any:
    try:
        return cls.options(**{"name": name, **options})
    except (TypeError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise InvalidArgument(f"Ray deployment {name!r}: {message}") from exc


def deployment(
    target: Service | str,
    service_deployment_config: Mapping[str, Any] | None = None,
    runners_deployment_config_map: Mapping[str, Mapping[str, Any]] | None = None,
    enable_batching: bool = True,
    batching_config: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
    *,
    settings: ServeSettings | None = None,
    force: Literal["service", "tiffin"] | None = None,
    direct_port: int | None = None,
    direct_host: str | None = None,
) -> Any:
    """A Ray Serve application serving ``target`` (a Service, ``module:attr`` /
    ``path.py:attr``, or a built tiffin's ``NAME[:VERSION]``; ``force`` says which, as
    ``tiffin serve --service/--tiffin`` do).

    ``service_deployment_config`` and each ``runners_deployment_config_map[runner]`` are Ray
    deployment options (``num_replicas``, ``autoscaling_config``, ``ray_actor_options``
    with ``num_cpus``/``num_gpus``/``resources``, ``max_ongoing_requests``, ...).
    ``settings``: the server settings (default: the config file and ``TIFFIN_*`` variables,
    as ``tiffin serve`` reads them). ``direct_port``/``direct_host``: each ingress replica
    also serves HTTP on that address of its node, past Serve's proxy (:mod:`tiffin.ray.direct`;
    default: ``settings.ray``'s).
    """
    if settings is None:
        from tiffin.config import load_settings

        settings = load_settings()
    settings = with_direct_http(settings, direct_port, direct_host)
    return build(
        target, service_deployment_config, runners_deployment_config_map, enable_batching,
        batching_config, settings=settings, force=force,
    )[0]  # fmt: skip


def build(
    target: Service | str,
    service_deployment_config: Mapping[str, Any] | None,
    runners_deployment_config_map: Mapping[str, Mapping[str, Any]] | None,
    enable_batching: bool,
    batching_config: Mapping[str, Mapping[str, Mapping[str, Any]]] | None,
    *,
    settings: ServeSettings,
    force: Literal["service", "tiffin"] | None = None,
) -> tuple[Any, Service]:
    """:func:`deployment`'s application, and the service it serves."""
    classes = _deployments()
    spec, service = make_spec(
        target, settings, batching=batching_config, enable_batching=enable_batching, force=force
    )
    runner_configs = dict(runners_deployment_config_map or {})
    known = {runner.name for runner in service.runners}
    unknown = sorted(set(runner_configs) - known)
    if unknown:
        raise InvalidArgument(
            f"runners_deployment_config_map names runner(s) {unknown}; service "
            f"{service.name!r} has {sorted(known)}"
        )
    plain = asdict(spec)
    stats = _with_options(classes.TiffinStats, STATS_DEPLOYMENT,
                          {"logging_config": dict(QUIET_LOGGING)}).bind()  # fmt: skip
    runners, in_flight = {}, {}
    for runner in service.runners:
        options = runner_options(runner_configs.get(runner.name), runner, spec)
        in_flight[runner.name] = messages_in_flight(options)
        runners[runner.name] = _with_options(
            classes.TiffinRunner, runner_deployment_name(runner.name), options
        ).bind(plain, runner.name, stats)
    ingress = _with_options(
        classes.TiffinIngress, service.name, ingress_options(service_deployment_config, settings)
    )
    return ingress.bind(plain, runners, stats, in_flight), service


def with_direct_http(
    settings: ServeSettings, port: int | None, host: str | None = None
) -> ServeSettings:
    """``settings`` with ``ray.direct_port``/``direct_host`` set where given (checked)."""
    update = {key: value for key, value in (("direct_port", port), ("direct_host", host))
              if value is not None}  # fmt: skip
    if not update:
        return settings
    from tiffin.config import load_settings

    data = settings.model_dump()
    data["ray"].update(update)
    return load_settings(overrides=data, environ={})


def app_builder(args: dict[str, Any]) -> Any:
    """A Serve application builder: ``import_path: tiffin.ray:app_builder`` with ``args``
    ``target`` (required), ``service_deployment_config``, ``runners_deployment_config_map``,
    ``enable_batching``, ``batching_config``, ``direct_port`` and ``direct_host``."""
    args = dict(args)
    target = args.pop("target", None)
    if not isinstance(target, str):
        raise InvalidArgument("tiffin.ray:app_builder needs args.target, e.g. 'service:svc'")
    allowed = {"service_deployment_config", "runners_deployment_config_map",
               "enable_batching", "batching_config", "direct_port", "direct_host"}  # fmt: skip
    unknown = sorted(set(args) - allowed)
    if unknown:
        raise InvalidArgument(f"tiffin.ray:app_builder: unknown args {unknown}")
    return deployment(target, **args)
