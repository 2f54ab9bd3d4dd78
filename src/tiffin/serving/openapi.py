"""The OpenAPI 3.1 document of a service, and the Swagger UI page that shows it.

The document lists the service's APIs and the documented routes of the route table
(:mod:`~tiffin.serving.routes`), MLflow's only on a server that speaks MLflow's protocol.
Swagger UI's assets come from the ``swagger-ui-bundle-v2`` package and are served by the
server itself (``/static/swagger-ui/``), so the page works with no internet access.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from tiffin._version import __version__
from tiffin.io.spec import describe
from tiffin.serving.routes import served
from tiffin.serving.service import Service

__all__ = [
    "ERROR_RESPONSES",
    "ERROR_SCHEMA",
    "openapi_spec",
    "served_document",
    "swagger_assets_dir",
    "swagger_page",
]

ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "error code, e.g. BAD_REQUEST"},
        "detail": {"type": "string", "description": "what went wrong and what to do"},
        "error_id": {"type": "string", "description": "500 only: the id logged with the trace"},
    },
    "required": ["error", "detail"],
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


ERROR_RESPONSES = {
    "400": _error("Bad input: malformed body, wrong dtype or shape"),
    "413": _error("Body over the size limit"),
    "415": _error("Content type not accepted"),
    "500": _error("The API function or the model raised"),
    "503": _error("Overloaded: waited in the batching queue past max_latency_ms"),
    "504": _error("Did not finish within the API timeout"),
}


def openapi_spec(service: Service, invocations: dict[str, Any] | None = None) -> dict[str, Any]:
    """The document: the service's APIs, then the route table's documented routes; MLflow's
    only with ``invocations`` (the ``/invocations`` operation of the model served)."""
    paths: dict[str, Any] = {}
    for api in service.apis.values():
        paths[api.route] = {
            "post": {
                "operationId": api.name,
                "summary": api.doc.splitlines()[0] if api.doc else api.name,
                "description": api.doc,
                "tags": ["APIs"],
                "requestBody": api.input.openapi_request_body(),
                "responses": {"200": api.output.openapi_response(), **ERROR_RESPONSES},
                "x-tiffin-io": {"input": describe(api.input), "output": describe(api.output)},
            }
        }
    for route in served(mlflow=invocations is not None):
        if route.summary is None:
            continue
        tag = "MLflow" if route.mlflow else "Infrastructure"
        if route.method == "POST":
            # the table's one POST, /invocations: its request body is the model's
            operation = {"summary": route.summary, "tags": [tag], **(invocations or {})}
        else:
            # MLflow's routes answer with a JSON content type, the others with plain text
            media = "application/json" if route.mlflow else "text/plain"
            ok = {"description": route.response,
                  "content": {media: {"schema": {"type": "string"}}}}
            operation = {"summary": route.summary, "tags": [tag], "responses": {"200": ok}}
        paths[route.path] = {route.method.lower(): operation}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": service.name,
            "version": __version__,
            "description": f"tiffin service {service.name!r}",
        },
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA}},
    }


def served_document(service: Service) -> dict[str, Any]:
    """The document a server of ``service`` serves at ``/docs.json`` (with MLflow's
    ``/invocations`` when the service serves exactly one MLflow model)."""
    from tiffin.serving.mlflow_protocol import _openapi_operation, mlflow_runner

    found = mlflow_runner(service)
    return openapi_spec(service, _openapi_operation(found[1]) if found is not None else None)


def swagger_assets_dir() -> Path | None:
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    path = Path(swagger_ui_bundle.swagger_ui_path)
    return path if path.is_dir() else None


def swagger_page(title: str) -> str:
    title = html.escape(title)
    if swagger_assets_dir() is None:
        return (
            f"<!doctype html><title>{title}</title><p>Swagger UI assets are not installed; "
            'the OpenAPI document is at <a href="docs.json">docs.json</a>.</p>'
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title} · tiffin</title>
<link rel="stylesheet" href="static/swagger-ui/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="static/swagger-ui/swagger-ui-bundle.js"></script>
<script>window.ui = SwaggerUIBundle({{url: "docs.json", dom_id: "#swagger-ui"}});</script>
</body></html>"""
