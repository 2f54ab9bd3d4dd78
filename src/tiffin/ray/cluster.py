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
* Serve waits a fixed 60 s for its HTTP proxy to start; on a busy cluster (a loaded host
  imports Ray's modules slowly) the command waits up to :data:`PROXY_WAIT_S` more, saying so.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Literal

import click

from tiffin.exceptions import InvalidArgument, ServerError, TiffinError, missing_dependency

if TYPE_CHECKING:
    from tiffin.config import ServeSettings

__all__ = ["connect", "serve_on_ray"]

logger = logging.getLogger("tiffin.ray")

#: seconds to wait for Serve's HTTP proxy after ``serve.start`` gave up on it (after 60 s)
PROXY_WAIT_S = 540.0


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


class _Stopped(BaseException):
    """SIGINT or SIGTERM, from the connection on: while the application serves it is the stop;
    before (starting Serve, deploying) Ray's own handler would abort the process and leave a
    half-deployed application on a cluster that outlives it."""


def _raise_stopped(signum: int, frame: Any) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):  # a second one: the cleanup goes on
        signal.signal(sig, signal.SIG_IGN)
    raise _Stopped


def _start_serve(start: dict[str, Any], wait_s: float = PROXY_WAIT_S) -> None:
    """``serve.start``, waiting up to ``wait_s`` for Serve's HTTP proxy where Serve itself gives
    up after its fixed 60 s (the controller stays up and the proxy keeps starting: on a busy
    cluster it may need longer); any other failure, or no healthy proxy by then, one line."""
    from ray import serve

    try:
        serve.start(**start)
        return
    except TimeoutError as exc:  # only the proxy wait: Serve's controller is running
        waited = exc
    except Exception as exc:  # its controller did not come up: one line
        raise _not_started(exc) from exc
    logger.warning("Ray Serve's HTTP proxy is not up after Serve's own wait (%s); waiting up "
                   "to %d s more for it", waited, wait_s)  # fmt: skip
    deadline = time.monotonic() + wait_s
    try:
        serve.start(**start)  # connects to the running controller: no second wait
        while time.monotonic() < deadline:
            states = {str(getattr(s, "value", s)) for s in serve.status().proxies.values()}
            if "HEALTHY" in states:
                return
            time.sleep(1.0)
    except Exception as exc:
        raise _not_started(exc) from exc
    raise _not_started(f"its HTTP proxy was not healthy after {wait_s:.0f} s more than Serve's "
                       "own wait")  # fmt: skip


def _not_started(why: BaseException | str) -> ServerError:
    text = " ".join(str(why).split())  # Ray's multi-line messages as one line
    return ServerError(f"Ray Serve did not start on the cluster: {text[:800]}")


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
    if settings.ray.direct_port is not None and settings.ray.direct_port == settings.port:
        raise InvalidArgument(
            f"direct port {settings.port} is Serve's HTTP port (--port): Serve's proxy binds "
            "with SO_REUSEPORT too, so the two would share it; give each a port of its own"
        )

    def application() -> tuple[Any, Any]:
        return build(
            target, settings.ray.service, settings.ray.runners, settings.ray.enable_batching,
            None, settings=settings, force=force,
        )  # fmt: skip

    app, service = application()  # a wrong target says so before anything touches a cluster
    name = service.name
    started = connect(address or settings.ray.address, settings.ray.runtime_env)
    import ray
    from ray import serve

    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # again, connected: the replicas' runtime_env starts from the job's (spec.REPLICA_ENV)
        app, service = application()
        start: dict[str, Any] = {"http_options": {"host": settings.host, "port": settings.port}}
        if settings.ray.proxy_location:
            start["proxy_location"] = settings.ray.proxy_location
        _start_serve(start)
        try:
            serve.run(app, name=name, route_prefix="/", blocking=False)
        except _Stopped:
            click.echo(f"tiffin: stopped while deploying; removing application {name!r} from "
                       "the cluster", err=True)  # fmt: skip
            try:
                serve.delete(name)
            except Exception as cleanup:
                logger.warning("could not remove application %r: %s", name, cleanup)
            return
        except TiffinError:
            raise
        except Exception as exc:  # Serve's deploy errors: one line, the replica logs have more
            text = " ".join(str(exc).split())
            try:
                serve.delete(name)  # no half-deployed application left retrying on the cluster
            except Exception as cleanup:
                logger.warning("could not remove application %r: %s", name, cleanup)
            raise ServerError(f"Ray Serve could not deploy service {name!r}: {text[:800]}") from exc
        direct = settings.ray.direct_port
        also = f" and http://{settings.ray.direct_host}:{direct} (direct)" if direct else ""
        click.echo(
            f"tiffin: serving {name!r} on Ray Serve at http://{settings.host}:{settings.port}"
            f"{also} (cluster {ray.get_runtime_context().gcs_address}); Ctrl-C stops it",
            err=True,
        )  # fmt: skip
        try:
            while True:  # until SIGINT/SIGTERM (_raise_stopped, which ignores a second one)
                time.sleep(3600)
        except _Stopped:
            pass
        click.echo(f"tiffin: removing application {name!r} from the cluster", err=True)
        serve.delete(name)
    except _Stopped:
        click.echo("tiffin: stopped before the application was deployed", err=True)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if started:
            serve.shutdown()
        ray.shutdown()
        flush_logs()
