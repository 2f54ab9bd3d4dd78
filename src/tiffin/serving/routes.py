"""The one table of the routes a tiffin server answers by itself (besides a Service's APIs).

Everything that names these routes reads them from :data:`ROUTES`: the app builder (which
routes to mount), :mod:`~tiffin.serving.auth` (which need the API key), the OpenAPI document
(their summaries), ``Service.api`` (an API may not take a reserved path or name), the metrics
labels and the 404 detail. Rules:

* Every route here has one fixed path and one method; API routes are always ``POST``.
* ``access`` says who may call it without the API key: :attr:`Access.OPEN` always (probes
  must reach them), :attr:`Access.DOCS` unless ``auth_metrics: true``, :attr:`Access.KEY`
  never. API routes are :attr:`Access.KEY`.
* A route with ``mlflow`` set exists only on a server that speaks MLflow's scoring protocol;
  the others exist on every server. Every route of the table is reserved, MLflow's too (no
  API may take its path or be named after it), so whether a service's APIs are valid never
  depends on the model it serves.
* A route without a ``summary`` is not in the OpenAPI document (the documentation itself).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "MLFLOW_ROUTES",
    "RESERVED_NAMES",
    "RESERVED_ROUTES",
    "ROUTES",
    "SWAGGER_STATIC",
    "Access",
    "ServerRoute",
    "paths_with",
    "served",
]


class Access(enum.Enum):
    """Who may call a route without the server's API key (when one is configured)."""

    OPEN = "open"  # always: health and readiness probes
    DOCS = "docs"  # unless auth_metrics is true: metrics and documentation
    KEY = "key"  # never: the APIs and /invocations


@dataclass(frozen=True)
class ServerRoute:
    """One route of the server's own."""

    path: str
    method: str
    access: Access
    #: the OpenAPI summary; None keeps the route out of the document
    summary: str | None
    #: the OpenAPI description of its 200 answer
    response: str = "ok"
    #: only on servers that speak MLflow's scoring protocol
    mlflow: bool = False


ROUTES: tuple[ServerRoute, ...] = (
    ServerRoute("/livez", "GET", Access.OPEN, "Liveness: the process answers", "alive"),
    ServerRoute("/readyz", "GET", Access.OPEN,
                "Readiness: 200 once every runner is loaded, else 503", "ready"),
    ServerRoute("/healthz", "GET", Access.OPEN, "Health: same as /readyz", "healthy"),
    ServerRoute("/metrics", "GET", Access.DOCS, "Prometheus metrics",
                "metrics in Prometheus text format"),
    ServerRoute("/docs.json", "GET", Access.DOCS, None),
    ServerRoute("/", "GET", Access.DOCS, None),
    ServerRoute("/docs", "GET", Access.DOCS, None),
    ServerRoute("/invocations", "POST", Access.KEY, "MLflow scoring protocol", "predictions",
                mlflow=True),
    ServerRoute("/ping", "GET", Access.OPEN, "MLflow health check", mlflow=True),
    ServerRoute("/health", "GET", Access.OPEN, "MLflow health check", mlflow=True),
    ServerRoute("/version", "GET", Access.OPEN, "MLflow version", mlflow=True),
)  # fmt: skip

#: where Swagger UI's own files are served (documentation: Access.DOCS)
SWAGGER_STATIC = "/static/swagger-ui"


def served(*, mlflow: bool) -> tuple[ServerRoute, ...]:
    """The table's routes a server answers: MLflow's only when it speaks the protocol."""
    return tuple(route for route in ROUTES if mlflow or not route.mlflow)


def paths_with(access: Access) -> frozenset[str]:
    """The table's paths that ``access`` applies to."""
    return frozenset(route.path for route in ROUTES if route.access is access)


#: paths a server answers itself (MLflow's only when it speaks the protocol); no API may take one
RESERVED_ROUTES = frozenset(route.path for route in ROUTES)
#: their names (``/health``: ``health``); no API may be called so
RESERVED_NAMES = frozenset(path.strip("/") for path in RESERVED_ROUTES if path != "/")
#: paths a server that speaks MLflow's protocol answers (reserved on every server)
MLFLOW_ROUTES = frozenset(route.path for route in ROUTES if route.mlflow)
