"""Server settings in one place: defaults < YAML file < ``TIFFIN_*`` variables < CLI flags.

The YAML file (``--config FILE`` or ``TIFFIN_CONFIG``) looks like::

    host: 127.0.0.1
    port: 3000
    api_timeout_s: 60            # per request, from its headers to its answer; 504 past it
    max_body_size: 67108864      # bytes received; 413 above it
    max_decoded_cells: 10000000  # rows x columns (or array elements) a body may decode to
    max_columns: 10000           # columns a table body may have
    max_image_pixels: 40000000   # width x height of an image body
    max_concurrent_requests: 1000  # per worker; 503 with Retry-After above it
    log_level: info
    log_format: text             # or json: one JSON object per log line
    access_log: true
    workers: 1                   # API worker processes (--workers)
    # pin_workers: true          # --workers N: each API worker on a CPU of its own; unset:
                                 # only when N equals the CPUs this server may use
    apis:
      predict:                   # API name
        timeout_s: 5             # this API's own timeout
    runners:
      iris_clf:                  # runner name
        max_batch_size: 512      # rows
        max_latency_ms: 2000
        workers: 2               # runner processes the API workers share (also with one
                                 # API worker: the runner then lives in its own process)
        # embedded: true         # --workers N: load it in every API worker instead
        device: auto             # auto, cpu, cuda or cuda:N (tiffin.device_settings)
        # precision: float16     # or bfloat16: PyTorch weights and inputs in that dtype
    ray:                         # --backend ray (tiffin.ray): Ray deployment options
      service: {num_replicas: 1}
      runners: {iris_clf: {num_replicas: 2, ray_actor_options: {num_cpus: 1}}}
      # direct_port: 3001        # each ingress replica serves HTTP itself too, past Serve's
      # direct_host: 127.0.0.1   # proxy (--direct-port)

Read elsewhere, not server settings: ``TIFFIN_HOME`` (the store) and ``TIFFIN_REMOTE`` (the
store's S3 remote, :mod:`tiffin.store.remote`).

Environment variables: ``TIFFIN_HOST``, ``TIFFIN_PORT``, ``TIFFIN_API_TIMEOUT_S``,
``TIFFIN_MAX_BODY_SIZE``, ``TIFFIN_MAX_DECODED_CELLS``, ``TIFFIN_MAX_COLUMNS``,
``TIFFIN_MAX_IMAGE_PIXELS``, ``TIFFIN_MAX_CONCURRENT_REQUESTS``, ``TIFFIN_LOG_LEVEL``,
``TIFFIN_LOG_FORMAT``, ``TIFFIN_ACCESS_LOG``,
``TIFFIN_PIN_WORKERS``, per
runner ``TIFFIN_RUNNERS__<RUNNER>__MAX_BATCH_SIZE`` / ``..._MAX_LATENCY_MS`` / ``..._WORKERS`` /
``..._EMBEDDED`` / ``..._DEVICE`` / ``..._PRECISION``, and per API
``TIFFIN_APIS__<API>__TIMEOUT_S``. An unknown key in the file, or an unknown setting of a
runner or API, is an error that names the key; any other ``TIFFIN_*`` variable that is not a
setting is ignored with a one-line warning (environments carry unrelated variables).
"""

from __future__ import annotations

import difflib
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from tiffin.batch_settings import check_max_batch_size, check_max_latency_ms
from tiffin.device_settings import check_device, check_precision
from tiffin.exceptions import InvalidArgument

__all__ = [
    "ENV_PREFIX",
    "MULTIPROC_ENV",
    "ApiSettings",
    "RaySettings",
    "RunnerSettings",
    "ServeSettings",
    "load_settings",
]

logger = logging.getLogger("tiffin.config")

ENV_PREFIX = "TIFFIN_"
#: TIFFIN_* variables that are not server settings (read elsewhere, or set by ``serve --reload``)
_NOT_SETTINGS = frozenset(
    {
        "TIFFIN_HOME",
        "TIFFIN_CONFIG",
        "TIFFIN_MLFLOW_MODEL_PATH",
        "TIFFIN_REMOTE",
        "TIFFIN_RUNNER_THREADS",
        "TIFFIN_SERVE_TARGET",
        "TIFFIN_SETTINGS_JSON",
    }
)
_NESTED = ("runners", "apis")
#: prometheus-client's multiprocess directory, which the supervisor sets for ``--workers N``
#: (before prometheus-client is imported: it reads the variable once) so that /metrics on any
#: API worker shows the counts of every worker
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _checked(check: Callable[[Any], Any]) -> AfterValidator:
    """One of tiffin.batch_settings' checks as a pydantic validator (the rule lives there)."""

    def validate(value: Any) -> Any:
        if value is None:
            return value
        try:
            return check(value)
        except InvalidArgument as exc:
            raise ValueError(str(exc)) from None

    return AfterValidator(validate)


class RunnerSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: Annotated[int | None, _checked(check_max_batch_size)] = None
    max_latency_ms: Annotated[float | None, _checked(check_max_latency_ms)] = None
    #: runner processes for this runner (set: it lives in its own processes even when one API
    #: worker serves; unset: one process under --workers > 1, none otherwise)
    workers: int | None = Field(default=None, ge=1, le=64)
    #: with --workers > 1: load this runner in every API worker instead (no runner process)
    embedded: bool | None = None
    #: where the model runs: auto, cpu, cuda or cuda:N (None: the runner's own default)
    device: Annotated[str | None, _checked(check_device)] = None
    #: float32, float16 or bfloat16 for a PyTorch model's weights and inputs (None: as saved)
    precision: Annotated[str | None, _checked(check_precision)] = None

    @model_validator(mode="after")
    def _processes_or_embedded(self) -> RunnerSettings:
        if self.embedded and self.workers is not None:
            raise ValueError(
                "an embedded runner has no processes of its own: set workers or embedded, "
                "not both"
            )
        return self


class ApiSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout_s: float | None = Field(default=None, gt=0)


class RaySettings(BaseModel):
    """``ray:`` in the settings file: how ``tiffin serve --backend ray`` deploys (file only)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: the cluster (else ``--address``, ``RAY_ADDRESS``, one on this machine, or a new one)
    address: str | None = None
    #: where Serve runs HTTP proxies: EveryNode (Ray's default), HeadOnly or Disabled
    proxy_location: Literal["EveryNode", "HeadOnly", "Disabled"] | None = None
    #: Ray deployment options of the ingress, and of each runner by name
    service: dict[str, Any] = Field(default_factory=dict)
    runners: dict[str, dict[str, Any]] = Field(default_factory=dict)
    enable_batching: bool = True
    #: the driver's Ray runtime_env (working_dir, pip, env_vars), inherited by the replicas
    runtime_env: dict[str, Any] | None = None
    #: each ingress replica also serves HTTP itself on this port of its node, past Serve's
    #: proxy (tiffin.ray.direct); None: Serve's proxy only
    direct_port: int | None = Field(default=None, ge=1, le=65535)
    direct_host: str = "127.0.0.1"


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=0, le=65535)
    api_timeout_s: float = Field(default=60.0, gt=0)
    max_body_size: int = Field(default=64 * 1024 * 1024, ge=1)
    #: what a body may decode to (tiffin.io.limits): 413 naming the setting above it
    max_decoded_cells: int = Field(default=10_000_000, ge=1)
    max_columns: int = Field(default=10_000, ge=1)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    #: requests one worker handles at once; above it a 503 with Retry-After
    max_concurrent_requests: int = Field(default=1000, ge=1)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] = "text"
    access_log: bool = True
    workers: int = Field(default=1, ge=1, le=64)
    #: --workers N: pin each API worker to a CPU of its own; None (the default): only when N
    #: equals the number of CPUs this server may use (tiffin.supervisor.worker_cpus)
    pin_workers: bool | None = None
    #: bearer token API routes require (``Authorization: Bearer <key>``); None: no auth
    api_key: str | None = Field(default=None, min_length=1)
    #: whether /metrics and /docs.json need the key too (health checks never do)
    auth_metrics: bool = False
    cors_origins: list[str] = Field(default_factory=list)
    runners: dict[str, RunnerSettings] = Field(default_factory=dict)
    apis: dict[str, ApiSettings] = Field(default_factory=dict)
    #: ``tiffin serve --backend ray`` (the settings file only)
    ray: RaySettings = Field(default_factory=RaySettings)

    @property
    def runner_processes(self) -> bool:
        """Whether the server runs as a process tree (tiffin.process.supervisor): several API
        workers, or a runner given processes of its own (``runners.<name>.workers``)."""
        return self.workers > 1 or any(r.workers for r in self.runners.values())


def _env_settings(environ: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    fields = set(ServeSettings.model_fields) - set(_NESTED) - {"ray"}
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key in _NOT_SETTINGS:
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        group = rest.split("__", 1)[0]
        if group in _NESTED and "__" in rest:
            parts = rest.split("__")
            if len(parts) != 3 or not parts[1] or not parts[2]:
                what = "RUNNER" if group == "runners" else "API"
                raise InvalidArgument(
                    f"environment variable {key}: expected "
                    f"TIFFIN_{group.upper()}__<{what}>__<SETTING>"
                )
            out.setdefault(group, {}).setdefault(parts[1], {})[parts[2]] = value
        elif rest in fields:
            out[rest] = value
        else:  # environments carry unrelated variables: say so, do not refuse to start
            known = [f"TIFFIN_{f.upper()}" for f in sorted(fields)]
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            logger.warning("tiffin: ignoring %s: it is not a tiffin setting%s", key, hint)
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServeSettings:
    """Build settings from the file, the environment and explicit overrides (highest)."""
    environ = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    config_file = config_file or environ.get("TIFFIN_CONFIG") or None
    if config_file:
        data = _read_file(Path(config_file))
    data = _merge(data, _env_settings(environ))
    data = _merge(data, {k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return ServeSettings.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgument(f"invalid settings{_where(config_file)}: {_summarise(exc)}") from exc


def _where(config_file: Any) -> str:
    return f" (config file {config_file})" if config_file else ""


def _read_file(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidArgument(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        message = f"config file {path} is not valid YAML: {exc}".replace("\n", " ")
        raise InvalidArgument(message) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InvalidArgument(f"config file {path} must hold a mapping of settings")
    return data


def _summarise(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        if error["type"] == "extra_forbidden":
            parts.append(f"unknown key {where!r}")
        else:
            parts.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts)
