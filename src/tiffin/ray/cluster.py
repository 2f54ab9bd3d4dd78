"""``tiffin serve TARGET --backend ray``: deploy a service on a Ray cluster while the command runs.

Rules:

* The cluster is ``--address``, else the settings file's ``ray.address``, else
  ``RAY_ADDRESS``, else one running on this machine; with none, a local cluster is started
  for the command (and said so on stderr), and stops with it.
* Serve's HTTP proxy listens on ``--host``/``--port`` (the settings' host and port) when this
  command starts Serve on the cluster; a Serve already running keeps its own.
* The application is named after the service and served at ``/``; the command returns once
  SIGINT or SIGTERM arrives, after deleting the application (a cluster it started is shut
  down too). A deployment that fails is a :class:`~tiffin.exceptions.ServerError` in one line.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import TYPE_CHECKING, Any, Literal

import click

from tiffin.exceptions import ServerError, TiffinError, missing_dependency

if TYPE_CHECKING:
    from tiffin.config import ServeSettings

__all__ = ["connect", "serve_on_ray"]

logger = logging.getLogger("tiffin.ray")


def connect(address: str | None, runtime_env: dict[str, Any] | None) -> bool:
    """Connect this process to a Ray cluster; True when it started a local one."""
    try:
        import ray
    except ImportError as exc:
        raise missing_dependency("ray[serve]", "ray") from exc
    options: dict[str, Any] = {"logging_level": logging.WARNING}
    if runtime_env:
        options["runtime_env"] = runtime_env
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address:
            ray.init(address=address, **options)
            return False
        try:
            ray.init(address="auto", **options)
            return False
        except ConnectionError:
            click.echo("tiffin: no Ray cluster is running here; starting a local one for this "
                       "command (it stops with it)", err=True)  # fmt: skip
            ray.init(address="local", include_dashboard=False, **options)
            return True
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = address or "this machine"
        raise ServerError(f"cannot connect to the Ray cluster at {where}: {exc}") from exc


def _wait_for_signal() -> None:
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}  # fmt: skip
    try:
        while not stop.wait(1.0):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_on_ray(
    target: str,
    settings: ServeSettings,
    address: str | None = None,
    *,
    force: Literal["service", "tiffin"] | None = None,
) -> None:
    """Deploy ``target`` (a service or a built tiffin; ``force`` as ``--service``/``--tiffin``)
    and keep it deployed until interrupted (see the module docstring)."""
    from tiffin.process.logs import configure_logging, flush_logs
    from tiffin.ray.application import build

    configure_logging(settings.log_level, settings.log_format)
    app, service = build(
        target, settings.ray.service, settings.ray.runners, settings.ray.enable_batching, None,
        settings=settings, force=force,
    )  # fmt: skip
    name = service.name
    started = connect(address or settings.ray.address, settings.ray.runtime_env)
    import ray
    from ray import serve

    try:
        start: dict[str, Any] = {"http_options": {"host": settings.host, "port": settings.port}}
        if settings.ray.proxy_location:
            start["proxy_location"] = settings.ray.proxy_location
        try:
            serve.start(**start)
        except Exception as exc:  # its proxy or controller did not come up: one line
            text = " ".join(str(exc).split())
            raise ServerError(f"Ray Serve did not start on the cluster: {text[:800]}") from exc
        try:
            serve.run(app, name=name, route_prefix="/", blocking=False)
        except TiffinError:
            raise
        except Exception as exc:  # Serve's deploy errors: one line, the replica logs have more
            text = " ".join(str(exc).split())
            try:
                serve.delete(name)  # no half-deployed application left retrying on the cluster
            except Exception as cleanup:
                logger.warning("could not remove application %r: %s", name, cleanup)
            raise ServerError(
                f"Ray Serve could not deploy service {name!r}: {text[:800]}"
            ) from exc
        click.echo(
            f"tiffin: serving {name!r} on Ray Serve at http://{settings.host}:{settings.port} "
            f"(cluster {ray.get_runtime_context().gcs_address}); Ctrl-C stops it", err=True,
        )  # fmt: skip
        _wait_for_signal()
        click.echo(f"tiffin: removing application {name!r} from the cluster", err=True)
        serve.delete(name)
    finally:
        if started:
            serve.shutdown()
        ray.shutdown()
        flush_logs()
