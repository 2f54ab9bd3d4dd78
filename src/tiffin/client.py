"""Python clients for a tiffin server: one method per API, discovered from ``/docs.json``.

``tiffin.Client.from_url(url)`` (blocking) and ``await tiffin.AsyncClient.from_url(url)``
read the server's OpenAPI document, rebuild each API's IO descriptors from its
``x-tiffin-io`` description, and so send numpy arrays, DataFrames, JSON, text, files and
multipart forms in the encoding the server expects, and decode answers the same way. An
ndarray (or tensor) goes as ``.npy`` and the answer is asked for as ``.npy`` too (``Accept``),
where the API's output can be: tensors cross without JSON either way. A non-2xx answer raises
:class:`~tiffin.exceptions.RemoteError` carrying the server's error body.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tiffin.exceptions import InvalidArgument, RemoteError
from tiffin.io.base import IODescriptor
from tiffin.io.spec import rebuild

__all__ = [
    "DEFAULT_TIMEOUT",
    "APISpec",
    "AsyncClient",
    "Client",
    "parse_spec",
]

DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class APISpec:
    name: str
    route: str
    input: IODescriptor
    output: IODescriptor


def parse_spec(document: dict[str, Any]) -> dict[str, APISpec]:
    """The APIs of an OpenAPI document written by a tiffin server."""
    apis: dict[str, APISpec] = {}
    for route, item in (document.get("paths") or {}).items():
        post = (item or {}).get("post") or {}
        io = post.get("x-tiffin-io")
        if not isinstance(io, dict) or "input" not in io:
            continue
        name = post.get("operationId") or route.strip("/").replace("/", "_")
        apis[name] = APISpec(name, route, rebuild(io["input"]), rebuild(io["output"]))
    return apis


_NPY = ("application/octet-stream", "application/x-npy")
_NPY_FIRST = "application/octet-stream, application/json;q=0.5"


def _headers_for(api: APISpec, content_type: str) -> dict[str, str]:
    """A request's headers: its Content-Type, and ``Accept`` asking for ``.npy`` back when it
    sends ``.npy`` and the API can answer so."""
    headers = {"content-type": content_type}
    if content_type in _NPY and any(t in _NPY for t in api.output.response_media_types):
        headers["accept"] = _NPY_FIRST
    return headers


def _request(api: APISpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[bytes, str]:
    if kwargs and args:
        raise InvalidArgument(f"{api.name}() takes one value or keyword parts, not both")
    if kwargs:
        value: Any = kwargs
    elif len(args) == 1:
        value = args[0]
    else:
        raise InvalidArgument(f"{api.name}() takes exactly one value, got {len(args)}")
    return api.input.encode_request(value)


def _answer(api: APISpec, response: httpx.Response) -> Any:
    if response.is_success:
        return api.output.decode_response(response.content, response.headers.get("content-type"))
    raise RemoteError.from_response(
        response.status_code, response.content, f"{response.request.method} {api.route}"
    )


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _apis_from(response: httpx.Response) -> dict[str, APISpec]:
    """The APIs a server's ``GET /docs.json`` answer describes, or its error."""
    if not response.is_success:
        raise RemoteError.from_response(response.status_code, response.content, "GET /docs.json")
    return parse_spec(response.json())


class _Base:
    """What both clients hold: the server's URL, its APIs, an httpx client of ``_http_class``."""

    _http_class: type[httpx.Client] | type[httpx.AsyncClient]

    def __init__(
        self,
        url: str,
        apis: dict[str, APISpec],
        *,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.url = url.rstrip("/")
        self.apis = apis
        self._http: Any = self._http_class(
            base_url=self.url, timeout=timeout, headers=_headers(api_key)
        )

    def _api(self, name: str) -> APISpec:
        try:
            return self.apis[name]
        except KeyError:
            raise AttributeError(
                f"the server at {self.url} has no API {name!r}; it has {sorted(self.apis)}"
            ) from None


class Client(_Base):
    """A blocking client; each API is a method: ``client.classify(array)``."""

    _http_class = httpx.Client

    @classmethod
    def from_url(
        cls, url: str, *, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> Client:
        with httpx.Client(timeout=timeout, headers=_headers(api_key)) as http:
            response = http.get(url.rstrip("/") + "/docs.json")
        return cls(url, _apis_from(response), api_key=api_key, timeout=timeout)

    def call(self, api_name: str, *args: Any, **kwargs: Any) -> Any:
        api = self._api(api_name)
        body, content_type = _request(api, args, kwargs)
        response = self._http.post(api.route, content=body, headers=_headers_for(api, content_type))
        return _answer(api, response)

    def is_ready(self) -> bool:
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            return super().__getattribute__(name)
        self._api(name)
        return lambda *args, **kwargs: self.call(name, *args, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """An asyncio client; each API is a coroutine method: ``await client.classify(array)``."""

    _http_class = httpx.AsyncClient

    @classmethod
    async def from_url(
        cls, url: str, *, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> AsyncClient:
        async with httpx.AsyncClient(timeout=timeout, headers=_headers(api_key)) as http:
            response = await http.get(url.rstrip("/") + "/docs.json")
        return cls(url, _apis_from(response), api_key=api_key, timeout=timeout)

    async def call(self, api_name: str, *args: Any, **kwargs: Any) -> Any:
        api = self._api(api_name)
        body, content_type = _request(api, args, kwargs)
        response = await self._http.post(
            api.route, content=body, headers=_headers_for(api, content_type)
        )
        return _answer(api, response)

    async def is_ready(self) -> bool:
        try:
            return (await self._http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            return super().__getattribute__(name)
        self._api(name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self.call(name, *args, **kwargs)

        return call

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
