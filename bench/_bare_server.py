"""The baseline of bench/serve.py: a bare Starlette endpoint that calls the model's predict
once per request, with no batching, plus a no-op endpoint (the ceiling of the stack).

``python bench/_bare_server.py MODEL_DIR PORT``: ``POST /invocations`` takes MLflow's
``{"inputs": [[...], ...]}`` and answers ``{"predictions": [...]}``; ``POST /noop`` answers a
constant; ``GET /ping`` is 200 once the model is loaded. uvicorn with its fast defaults
(uvloop, httptools), no access log.
"""

from __future__ import annotations

import sys

import mlflow.pyfunc
import numpy as np
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

model = mlflow.pyfunc.load_model(sys.argv[1])


async def invocations(request: Request) -> Response:
    rows = np.asarray(orjson.loads(await request.body())["inputs"], dtype=np.float64)
    predictions = model.predict(rows)  # on the event loop: no thread hop, no batching
    return Response(
        orjson.dumps({"predictions": predictions}, option=orjson.OPT_SERIALIZE_NUMPY),
        media_type="application/json",
    )


async def noop(request: Request) -> Response:
    return Response(b'{"predictions":[0]}', media_type="application/json")


async def ping(request: Request) -> Response:
    return Response(b"\n", media_type="application/json")


app = Starlette(
    routes=[
        Route("/invocations", invocations, methods=["POST"]),
        Route("/noop", noop, methods=["POST"]),
        Route("/ping", ping, methods=["GET"]),
    ]
)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), access_log=False,
                log_level="warning")
