"""The serving layer: a Service as an ASGI application.

* :mod:`~tiffin.serving.service` -- ``tiffin.Service``: named APIs over runners;
* :mod:`~tiffin.serving.app` -- the one app builder: routes, start-up, the short path;
* :mod:`~tiffin.serving.routes` -- the one table of the server's own routes;
* :mod:`~tiffin.serving.pipeline` -- the one request path of the APIs and ``/invocations``;
* :mod:`~tiffin.serving.errors` -- errors as responses, in tiffin's shape or MLflow's;
* :mod:`~tiffin.serving.mlflow_protocol` -- MLflow's scoring protocol (``/invocations``);
* :mod:`~tiffin.serving.model_service` -- ``serve-model``: a Service for one stored model;
* :mod:`~tiffin.serving.openapi`, :mod:`~tiffin.serving.metrics`,
  :mod:`~tiffin.serving.access_log`, :mod:`~tiffin.serving.auth`,
  :mod:`~tiffin.serving.deadlines` -- what every server adds around the APIs.

May import: ``tiffin.io`` and everything below it (frameworks, runner, store). Nothing here
starts a process or binds a socket; that is :mod:`tiffin.process`.
"""

__all__: list[str] = []
