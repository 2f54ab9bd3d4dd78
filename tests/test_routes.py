"""The route table (tiffin.serving.routes) drives what the server mounts, who needs the API
key, the OpenAPI document, the reserved API paths, MLflow's clash check, the metrics' route
labels and the 404 detail (in process, httpx.ASGITransport)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import tiffin
from tests.test_serving_support import asgi_client, save_iris_model, store_at
from tiffin.config import load_settings
from tiffin.exceptions import InvalidArgument
from tiffin.io import JSON
from tiffin.serving import auth, service
from tiffin.serving.app import build_app
from tiffin.serving.routes import (
    MLFLOW_ROUTES,
    RESERVED_ROUTES,
    ROUTES,
    SWAGGER_STATIC,
    Access,
    served,
)

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.filterwarnings("ignore:X (has|does not have valid) feature names:UserWarning"),
]

AUTH = {"Authorization": "Bearer k3y"}


def plain_service() -> tiffin.Service:
    svc = tiffin.Service("plain")
    svc.api(input=JSON(), output=JSON(), name="echo")(lambda value: value)
    return svc


@pytest.fixture(scope="module")
def mlflow_model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tiffin.frameworks import mlflow as tiffin_mlflow

    root: Path = tmp_path_factory.mktemp("routes")
    return tiffin_mlflow.import_model(
        "iris", save_iris_model(root / "iris"), store=store_at(root / "home")
    )


def mlflow_service(model: Any) -> tiffin.Service:
    runner = model.to_runner()
    svc = tiffin.Service("speaks_mlflow", runners=[runner])
    svc.api(input=JSON(), output=JSON(), name="echo")(lambda value: value)
    return svc


def _call(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    if method == "POST":
        return client.post(path, json={"inputs": [[1.0, 2.0, 3.0, 4.0]]}, **kwargs)
    return client.request(method, path, **kwargs)


def test_the_table_is_one_route_per_path_and_the_reserved_sets_come_from_it() -> None:
    paths = [route.path for route in ROUTES]
    assert len(paths) == len(set(paths))
    assert all(route.method in ("GET", "POST") for route in ROUTES)
    assert set(paths) == RESERVED_ROUTES and MLFLOW_ROUTES < RESERVED_ROUTES
    assert service.RESERVED_ROUTES is RESERVED_ROUTES
    assert service.MLFLOW_ROUTES is MLFLOW_ROUTES
    assert {r.path for r in ROUTES if r.access is Access.OPEN} == auth.ALWAYS_OPEN
    assert {r.path for r in ROUTES if r.access is Access.DOCS} == auth.DOCS
    assert served(mlflow=False) == tuple(r for r in ROUTES if not r.mlflow)


@pytest.mark.parametrize("path", sorted(RESERVED_ROUTES))
def test_an_api_may_not_take_a_path_of_the_table_mlflows_included(path: str) -> None:
    """Refused where the API is defined, on any service: MLflow's routes too, so a service's
    APIs do not become invalid when the model behind them is an MLflow model."""
    with pytest.raises(InvalidArgument, match="one the tiffin server answers itself"):
        plain_service().api(input=JSON(), output=JSON(), name="x", route=path)(lambda v: v)


async def test_every_table_route_is_answered_and_mlflows_only_by_a_service_speaking_it(
    mlflow_model: Any,
) -> None:
    for svc, speaks in ((plain_service(), False), (mlflow_service(mlflow_model), True)):
        async with asgi_client(build_app(svc)) as client:
            for route in ROUTES:
                response = await _call(client, route.method, route.path)
                answered = response.status_code not in (404, 405)
                assert answered == (speaks or not route.mlflow), (route, response.text)
                if route.mlflow and not speaks:
                    assert response.json()["error"] == "NOT_FOUND"


async def test_every_documented_table_route_is_in_the_openapi_document(mlflow_model: Any) -> None:
    for svc, speaks in ((plain_service(), False), (mlflow_service(mlflow_model), True)):
        async with asgi_client(build_app(svc)) as client:
            paths = (await client.get("/docs.json")).json()["paths"]
        own = {path for path in paths if path != "/echo"}
        assert own == {r.path for r in served(mlflow=speaks) if r.summary is not None}
        for route in served(mlflow=speaks):
            if route.summary is not None:
                operation = paths[route.path][route.method.lower()]
                assert operation["summary"] == route.summary
                assert operation["tags"] == ["MLflow" if route.mlflow else "Infrastructure"]
                assert operation["responses"]["200"]["description"] == route.response


@pytest.mark.parametrize("auth_metrics", [False, True])
async def test_the_table_says_which_routes_need_the_key(
    mlflow_model: Any, auth_metrics: bool
) -> None:
    settings = load_settings(overrides={"api_key": "k3y", "auth_metrics": auth_metrics},
                             environ={})  # fmt: skip
    async with asgi_client(build_app(mlflow_service(mlflow_model), settings)) as client:
        for route in ROUTES:
            docs_open = route.access is Access.DOCS and not auth_metrics
            open_ = route.access is Access.OPEN or docs_open
            without = await _call(client, route.method, route.path)
            assert (without.status_code == 401) != open_, (route, without.status_code)
            with_key = await _call(client, route.method, route.path, headers=AUTH)
            assert with_key.status_code != 401, route
        assert (await client.post("/echo", json=1)).status_code == 401
        assert (await client.post("/echo", json=1, headers=AUTH)).json() == 1
        static = await client.get(f"{SWAGGER_STATIC}/swagger-ui.css")
        assert (static.status_code == 401) == auth_metrics


async def test_every_table_route_has_its_own_metrics_label_and_is_in_the_404_detail(
    mlflow_model: Any,
) -> None:
    async with asgi_client(build_app(mlflow_service(mlflow_model))) as client:
        for route in ROUTES:
            if route.path != "/metrics":
                await _call(client, route.method, route.path)
        detail = (await client.get("/no-such-route")).json()["detail"]
        metrics = (await client.get("/metrics")).text
    for route in ROUTES:
        if route.path != "/metrics":
            assert f'route="{route.path}"' in metrics, route.path
        assert route.path in detail.split("answers ", 1)[1].replace(",", " ").split(), route
    assert "POST /echo" in detail and "POST /invocations" in detail
    assert 'route="<other>"' in metrics  # the unknown path
