"""``tiffinfile.yaml``: what ``tiffin build`` builds, checked with pydantic like the server's
settings (:mod:`tiffin.config`).

::

    service: "service.py:svc"        # or module:attr; required
    name: iris_classifier            # default: the service's name
    description: "file: ./README.md" # or the text itself
    labels: {owner: ml-team}
    include: ["*.py", "data/"]       # gitignore-style patterns (default: everything)
    exclude: ["tests/"]              # and the lines of .tiffinignore, if there is one
    python:
      packages: ["scikit-learn>=1.3"]
      requirements_txt: $TIFFIN_MLFLOW_MODEL_PATH/mlflow_model/requirements.txt
      lock_packages: false           # true: pin the whole resolved set with pip
      index_url: https://...
      extra_index_url: [https://...]
      wheels: [./dist/mylib-1.0-py3-none-any.whl]
    conda:                           # environment_yml, or channels and dependencies
      environment_yml: $TIFFIN_MLFLOW_MODEL_PATH/mlflow_model/conda.yaml
    docker:
      distro: debian                 # or alpine; base_image instead to pick your own
      python_version: "3.11"         # default: the Python that builds
      cuda_version: "12.4.1"         # an NVIDIA CUDA runtime image (debian only)
      system_packages: [libgomp1]
      env: {OMP_NUM_THREADS: "1"}
      setup_script: ./setup.sh       # run as root while the image is built
    models: ["extra_model:latest"]   # besides the models the service's runners use

Unknown keys are errors that name the key and the valid ones. In every path (``requirements_txt``,
``wheels``, ``environment_yml``, ``setup_script``, ``description: "file: ..."``) ``$VAR`` and
``${VAR}`` are expanded, and an unset variable is an error naming it; a relative path is
relative to the build context.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from tiffin.exceptions import InvalidArgument, NotFound

__all__ = [
    "FILE_NAMES",
    "CondaOptions",
    "DockerOptions",
    "PythonOptions",
    "TiffinFile",
    "expand",
    "find_tiffinfile",
    "load_tiffinfile",
    "parse_options",
    "resolve_path",
]

FILE_NAMES = ("tiffinfile.yaml", "tiffinfile.yml")
_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)\}|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


def _list_of_str(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _version_text(value: Any) -> Any:
    # YAML reads an unquoted 3.11 as a float; take it (3.10 comes out 3.1 and fails the check)
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PythonOptions(_Strict):
    packages: list[str] = []
    requirements_txt: str | None = None
    lock_packages: bool = False
    index_url: str | None = None
    extra_index_url: list[str] = []
    wheels: list[str] = []

    @field_validator("extra_index_url", "packages", "wheels", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _list_of_str(value)


class CondaOptions(_Strict):
    environment_yml: str | None = None
    channels: list[str] = []
    dependencies: list[str | dict[str, list[str]]] = []

    @model_validator(mode="after")
    def _one_source(self) -> CondaOptions:
        if self.environment_yml and (self.channels or self.dependencies):
            raise ValueError(
                "give environment_yml, or channels and dependencies, not both (the file "
                "would silently win)"
            )
        if not (self.environment_yml or self.dependencies):
            raise ValueError("give environment_yml, or the dependencies to install")
        return self


class DockerOptions(_Strict):
    base_image: str | None = None
    distro: Literal["debian", "alpine"] = "debian"
    python_version: str | None = None
    cuda_version: str | None = None
    system_packages: list[str] = []
    env: dict[str, str] = {}
    setup_script: str | None = None

    @field_validator("python_version", "cuda_version", mode="before")
    @classmethod
    def _versions(cls, value: Any) -> Any:
        return _version_text(value)

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> Any:
        if isinstance(value, list):  # ["KEY=VALUE", ...] as docker takes them
            pairs = {}
            for item in value:
                key, sep, text = str(item).partition("=")
                if not sep or not key:
                    raise ValueError(f"{item!r} is not KEY=VALUE")
                pairs[key] = text
            value = pairs
        if isinstance(value, dict):
            for key in value:
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(key)):
                    raise ValueError(f"{key!r} is not an environment variable name")
            return {k: v if isinstance(v, str) else str(v) for k, v in value.items()}
        return value

    @field_validator("system_packages")
    @classmethod
    def _packages(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9+._:=~-]*", name):
                raise ValueError(f"{name!r} is not a package name")
        return value

    @field_validator("python_version")
    @classmethod
    def _python(cls, value: str | None) -> str | None:
        if value is None:
            return value
        match = re.fullmatch(r"3\.(\d+)", value)
        if not match or int(match.group(1)) < 11:
            raise ValueError(
                f"{value!r} is not a Python tiffin runs on: give '3.11' or newer as MAJOR.MINOR "
                "(quote it: YAML reads an unquoted 3.10 as 3.1)"
            )
        return value

    @field_validator("cuda_version")
    @classmethod
    def _cuda(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\d+\.\d+\.\d+", value):
            raise ValueError(f"{value!r} is not a CUDA version such as '12.4.1'")
        return value

    @model_validator(mode="after")
    def _image(self) -> DockerOptions:
        if self.base_image and (self.python_version or self.cuda_version):
            raise ValueError(
                "base_image is used as it is: python_version and cuda_version describe the "
                "image tiffin picks, so give one or the other"
            )
        if self.cuda_version and self.distro != "debian":
            raise ValueError("cuda_version needs distro: debian (NVIDIA's images are Ubuntu)")
        return self


class TiffinFile(_Strict):
    service: str
    name: str | None = None
    description: str | None = None
    labels: dict[str, str] = {}
    include: list[str] = ["*"]
    exclude: list[str] = []
    python: PythonOptions = PythonOptions()
    conda: CondaOptions | None = None
    docker: DockerOptions = DockerOptions()
    models: list[str] = []

    @field_validator("include", "exclude", "models", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return _list_of_str(value)

    @field_validator("service")
    @classmethod
    def _service(cls, value: str) -> str:
        module, _, attr = value.partition(":")
        if not module.strip() or (attr and not attr.isidentifier()):
            raise ValueError(f"{value!r} is not module:attr or path/to/file.py:attr")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: v if isinstance(v, str) else str(v) for k, v in value.items()}
        return value


# -- errors ------------------------------------------------------------------------------------

_MODELS: dict[str, type[BaseModel]] = {
    "python": PythonOptions, "conda": CondaOptions, "docker": DockerOptions,
}  # fmt: skip


def _describe(exc: ValidationError, where: str) -> str:
    """The first problem, in one line: an unknown key with the valid ones, a missing key, or
    the field and what is wrong with it."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    dotted = ".".join(loc)
    if error["type"] == "extra_forbidden":
        parent = _MODELS.get(loc[0], TiffinFile) if len(loc) > 1 else TiffinFile
        valid = list(parent.model_fields)
        close = difflib.get_close_matches(loc[-1], valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        section = f"{loc[0]}'s keys" if len(loc) > 1 else "the keys"
        return f"{where}: unknown key {dotted!r}{hint}; {section} are: {', '.join(valid)}"
    if error["type"] == "missing" and dotted == "service":
        return (
            f"{where} has no `service`: name the service to build, e.g. "
            'service: "service.py:svc" or service: "module:svc"'
        )
    if error["type"] == "missing":
        return f"{where}: {dotted!r} is required"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {dotted or 'the file'}: {message}"


def parse_options(data: Any, where: str) -> TiffinFile:
    """Validate a parsed tiffinfile (or ``tiffin.build``'s keyword arguments)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise InvalidArgument(f"{where} must hold a mapping of keys, found {type(data).__name__}")
    try:
        return TiffinFile.model_validate(data)
    except ValidationError as exc:
        raise InvalidArgument(_describe(exc, where)) from None


# -- files and paths ---------------------------------------------------------------------------


def find_tiffinfile(build_ctx: Path, file: str | os.PathLike[str] | None = None) -> Path:
    """The tiffinfile to build from: ``file``, else ``tiffinfile.yaml`` (or ``.yml``) in the
    build context."""
    if file is not None:
        path = Path(file).expanduser()
        if not path.is_file():
            raise NotFound(f"tiffinfile {path} does not exist")
        return path
    found = [build_ctx / name for name in FILE_NAMES if (build_ctx / name).is_file()]
    if not found:
        raise NotFound(
            f"no {FILE_NAMES[0]} (or {FILE_NAMES[1]}) in {build_ctx}: write one there, or pass "
            "-f FILE"
        )
    if len(found) > 1:
        raise InvalidArgument(
            f"{build_ctx} holds both {FILE_NAMES[0]} and {FILE_NAMES[1]}: keep one, or pass -f FILE"
        )
    return found[0]


def load_tiffinfile(path: Path) -> TiffinFile:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"cannot read {path}: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise InvalidArgument(f"{path} is not valid YAML: {problem}{at}") from None
    return parse_options(data, str(path))


def expand(value: str, where: str, environ: Any = None) -> str:
    """``value`` with ``$VAR`` / ``${VAR}`` expanded and ``~`` for the home directory; an
    unset variable is an error naming it (and ``where`` it is used)."""
    environ = os.environ if environ is None else environ

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("bare")
        if name not in environ:
            raise InvalidArgument(
                f"{where}: environment variable ${name} is not set (in {value!r}); "
                f"export {name}=... and build again"
            )
        return str(environ[name])

    return os.path.expanduser(_VAR.sub(substitute, value))


def resolve_path(build_ctx: Path, value: str, where: str, *, what: str = "file") -> Path:
    """A path from the tiffinfile: expanded, relative to the build context, and existing."""
    path = Path(expand(value, where))
    if not path.is_absolute():
        path = build_ctx / path
    if not path.exists():
        raise NotFound(f"{where}: {what} {path} does not exist (from {value!r})")
    return path

