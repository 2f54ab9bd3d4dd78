"""Scaling out on Ray Serve: ``tiffin.ray.deployment(...)`` and ``tiffin serve --backend ray``.

* :mod:`~tiffin.ray.application` -- :func:`deployment` (a Service as a Ray Serve application:
  an ingress running tiffin's ASGI app, one deployment per runner, a stats deployment) and
  :func:`app_builder` for Serve config files;
* :mod:`~tiffin.ray.spec` -- what each replica builds its service from, and the deployment
  options tiffin fills in;
* :mod:`~tiffin.ray.backend` -- the ingress's runner backend, calling a runner deployment
  through a Ray Serve handle;
* :mod:`~tiffin.ray.replica_stats` -- every runner replica's batching figures for
  ``/metrics``;
* :mod:`~tiffin.ray.direct` -- direct HTTP: an ingress replica serving tiffin's app on a
  port of its own, past Serve's proxy (``direct_port``);
* :mod:`~tiffin.ray.cluster` -- the command line's way onto a cluster;
* ``_deployments`` -- the deployment classes themselves (the one module that imports Ray at
  its top; loaded only when an application is built).

May import: the process, serving, runner and store layers, ``config``, ``exceptions``; Ray
only inside functions (it is the optional ``tiffin[ray]`` extra), except in ``_deployments``.
"""

from __future__ import annotations

from tiffin.ray.application import app_builder, deployment

__all__ = ["app_builder", "deployment"]
