"""``tiffin build`` and ``tiffin.build(...)``: a tiffinfile to a built tiffin in the store.

1. The tiffinfile is read and checked (:mod:`~tiffin.building.tiffinfile`); every path in it
   is expanded and must exist.
2. The service is imported once, from the build context (also the working directory for the
   moment), to check that it loads and to record its APIs and runners; an error shows the
   user's own frames. Installed packages it imports load when first used
   (:mod:`~tiffin.building.lazy`). The user's modules are forgotten afterwards, so that the
   next build in the same process imports its own.
3. The models are the runners' (and the service's ``models=``) and the tiffinfile's
   ``models``, ``latest`` resolved to the version it names now.
4. Everything is written into the store's staging directory -- ``src/``, ``models/`` (copies),
   ``env/``, ``apis/openapi.yaml``, ``README.md``, ``tiffin.yaml`` -- and renamed into place
   under the name's lock. A failure at any step leaves nothing in the store.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tiffin._version import __version__
from tiffin.building import files as build_files
from tiffin.building.environment import Progress, conda_env, docker_env, python_env
from tiffin.building.lazy import lazy_packages, module_file
from tiffin.building.record import apis_of, model_record, readme, runners_of
from tiffin.building.tiffinfile import (
    TiffinFile,
    find_tiffinfile,
    load_tiffinfile,
    parse_options,
    resolve_path,
)
from tiffin.exceptions import AlreadyExists, InvalidArgument, NotFound
from tiffin.process.targets import resolve_service
from tiffin.serving.service import Service
from tiffin.store import models as store_models
from tiffin.store import tiffins
from tiffin.store.model_info import validate_labels
from tiffin.store.versioned import Store, home
from tiffin.tag import LATEST, Tag

__all__ = ["BuildReport", "Progress", "build", "build_tiffin"]



@dataclass
class BuildReport:
    """A finished build: the built tiffin and where the time went (seconds)."""

    tiffin: tiffins.BuiltTiffin
    seconds: dict[str, float] = field(default_factory=dict)
    models_bytes: int = 0
    files: int = 0


def build(
    service: str | None = None,
    *,
    name: str | None = None,
    version: str | None = None,
    description: str | None = None,
    labels: Mapping[str, str] | None = None,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    python: Mapping[str, Any] | None = None,
    conda: Mapping[str, Any] | None = None,
    docker: Mapping[str, Any] | None = None,
    models: Sequence[str] | None = None,
    build_ctx: str | os.PathLike[str] | None = None,
    tiffinfile: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
) -> tiffins.BuiltTiffin:
    """Build a tiffin. With ``service`` the options are these arguments (the tiffinfile's
    keys); without it they come from ``tiffinfile`` or the build context's tiffinfile.yaml."""
    if service is not None:
        given = {
            "service": service, "name": name, "description": description, "labels": labels,
            "include": include, "exclude": exclude, "python": python, "conda": conda,
            "docker": docker, "models": models,
        }  # fmt: skip
        options = {k: v for k, v in given.items() if v is not None}
        return build_tiffin(
            parse_options(options, "tiffin.build()"), version=version, build_ctx=build_ctx,
            progress=progress,
        ).tiffin  # fmt: skip
    ctx = Path(build_ctx or os.getcwd()).resolve()
    path = find_tiffinfile(ctx, tiffinfile)
    config = load_tiffinfile(path)
    return build_tiffin(config, version=version, build_ctx=ctx, progress=progress).tiffin


# -- the service -------------------------------------------------------------------------------


def _under(module: Any, root: str) -> bool:
    file = module_file(module)  # not getattr: that would load a lazy package
    return file is not None and os.path.realpath(file).startswith(root)


@contextlib.contextmanager
def _users_modules(ctx: Path, target: str) -> Iterator[None]:
    """Import the user's code from ``ctx`` (the working directory meanwhile); forget it after.

    A module of the same name imported earlier from elsewhere is set aside meanwhile (and put
    back), so ``service:svc`` means this context's ``service.py``.
    """
    root = str(ctx) + os.sep
    top = target.partition(":")[0].split(".")[0]
    shadowed: dict[str, Any] = {}
    if not target.partition(":")[0].endswith(".py") and (
        (ctx / top).is_dir() or (ctx / f"{top}.py").is_file()
    ):
        shadowed = {
            name: module for name, module in sys.modules.items()
            if (name == top or name.startswith(top + ".")) and not _under(module, root)
        }  # fmt: skip
        for name in shadowed:
            del sys.modules[name]
    before, path_before, cwd_before = set(sys.modules), list(sys.path), os.getcwd()
    os.chdir(ctx)
    try:
        yield
    finally:
        os.chdir(cwd_before)
        for name in set(sys.modules) - before:
            if name.startswith("_tiffin_service_") or _under(sys.modules[name], root):
                del sys.modules[name]
        sys.path[:] = path_before
        sys.modules.update(shadowed)


def _service_file(target: str, ctx: Path) -> Path | None:
    module_part = target.partition(":")[0]
    if module_part.endswith(".py") or "/" in module_part:
        return (ctx / module_part).resolve()
    file = module_file(sys.modules.get(module_part))
    return Path(os.path.realpath(file)) if file else None


def _check_included(service_file: Path | None, ctx: Path, files: list[Path], target: str) -> None:
    if service_file is None or not service_file.is_relative_to(ctx):
        return  # an installed package: it travels as a requirement, not as a file
    if service_file.relative_to(ctx) not in files:
        raise InvalidArgument(
            f"the service's file {service_file.relative_to(ctx)} (of {target!r}) is not among "
            "the files the build includes: fix include/exclude or .tiffinignore"
        )


# -- models ------------------------------------------------------------------------------------


def _models(service: Service, extra: Sequence[str]) -> list[store_models.Model]:
    found: dict[str, store_models.Model] = {}
    for model in [*service.models, *(m for r in service.runners for m in r.models)]:
        found.setdefault(str(model.tag), model)
    for tag in extra:
        try:
            model = store_models.get(tag)
        except NotFound:
            raise NotFound(
                f"model {tag!r} (under `models:` in the tiffinfile) is not in the model store "
                f"{store_models.default_store().root}; run `tiffin models list` to see what is "
                "there"
            ) from None
        found.setdefault(str(model.tag), model)
    return list(found.values())


def _copy_models(
    models: list[store_models.Model], target: Path, progress: Progress | None
) -> int:
    total = sum(model.size_bytes() for model in models)
    done = 0

    def copy(src: str, dst: str) -> str:
        nonlocal done
        shutil.copy2(src, dst)
        done += os.path.getsize(dst)
        if progress is not None:
            progress("copying models", done, total)
        return dst

    newest: dict[str, store_models.Model] = {}
    for model in models:
        shutil.copytree(model.path, target / model.tag.name / str(model.tag.version),
                        copy_function=copy)  # fmt: skip
        best = newest.get(model.tag.name)
        if best is None or (model.creation_time, model.tag.version or "") > (
            best.creation_time, best.tag.version or ""
        ):
            newest[model.tag.name] = model
    for model_name, model in newest.items():
        (target / model_name / LATEST).write_text(f"{model.tag.version}\n", encoding="utf-8")
    return total


# -- the build ---------------------------------------------------------------------------------


def _check_paths(config: TiffinFile, ctx: Path) -> None:
    """Every path the tiffinfile names exists (before the service is imported)."""
    python, conda, docker = config.python, config.conda, config.docker
    checks = [(python.requirements_txt, "python.requirements_txt", "requirements file"),
              (docker.setup_script, "docker.setup_script", "setup script")]  # fmt: skip
    checks += [(wheel, "python.wheels", "wheel") for wheel in python.wheels]
    if conda is not None:
        checks.append((conda.environment_yml, "conda.environment_yml", "conda environment file"))
    for value, where, what in checks:
        if value:
            resolve_path(ctx, value, where, what=what)


def _description(config: TiffinFile, ctx: Path) -> str:
    text = config.description or ""
    if text.startswith("file:"):
        path = resolve_path(ctx, text.removeprefix("file:").strip(), "description",
                            what="description file")  # fmt: skip
        return path.read_text(encoding="utf-8")
    return text


def build_tiffin(
    config: TiffinFile,
    *,
    version: str | None = None,
    build_ctx: str | os.PathLike[str] | None = None,
    progress: Progress | None = None,
    store: Store | None = None,
) -> BuildReport:
    """Build ``config`` from ``build_ctx`` (default: the working directory)."""
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    ctx = Path(build_ctx or os.getcwd()).resolve()
    if not ctx.is_dir():
        raise NotFound(f"build context {ctx} is not a directory")
    store = store or tiffins.default_store()
    _check_paths(config, ctx)
    description = _description(config, ctx)
    labels = validate_labels(config.labels)
    with _users_modules(ctx, config.service), lazy_packages(ctx):
        service = resolve_service(config.service, cwd=ctx)
        service_file = _service_file(config.service, ctx)
    seconds["import"] = time.perf_counter() - started
    tag = Tag(config.name or service.name, version)
    if tag.is_latest and version is not None:
        raise InvalidArgument("'latest' is not a version you can build; omit --version")
    tag = tag if tag.version else tag.with_new_version()
    if (store.root / tag.name / str(tag.version)).exists():
        raise AlreadyExists(
            f"tiffin '{tag}' already exists in store {store.root}; omit the version to get a new "
            f"one, or `tiffin delete {tag}` first"
        )
    models = _models(service, config.models)
    files = build_files.collect(ctx, config.include, config.exclude, skip=[home(), store.root])
    _check_included(service_file, ctx, files, config.service)
    with store.staging() as staged:
        for relative in files:
            (staged / "src" / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ctx / relative, staged / "src" / relative)
        (staged / "src").mkdir(exist_ok=True)
        began = time.perf_counter()
        models_bytes = _copy_models(models, staged / tiffins.MODELS_DIR, progress)
        seconds["copy_models"] = time.perf_counter() - began
        began = time.perf_counter()
        frameworks = {model.info.framework for model in models}
        python = python_env(config, ctx, staged / "env", frameworks, progress)
        seconds["python_env"] = time.perf_counter() - began
        conda = conda_env(config, ctx, staged / "env")
        docker = docker_env(config, ctx, staged / "env", tag, conda is not None,
                             bool(python["wheels"]))  # fmt: skip
        from tiffin.serving.openapi import served_document

        (staged / "apis").mkdir()
        (staged / "apis" / "openapi.yaml").write_text(
            yaml.safe_dump(served_document(service), sort_keys=False, allow_unicode=True),
            encoding="utf-8",
        )
        service_target = config.service
        if service_file is not None and service_file.is_relative_to(ctx) and (
            service_target.partition(":")[0].endswith(".py")
        ):
            # a file path as it is inside src/ (the build may have named it from elsewhere)
            rel = service_file.relative_to(ctx).as_posix()
            attr = service_target.partition(":")[2]
            service_target = f"{rel}:{attr}" if attr else rel
        info = tiffins.TiffinInfo(
            name=tag.name, version=str(tag.version), service=service_target,
            creation_time=dt.datetime.now(dt.UTC), tiffin_version=__version__,
            python_version=platform.python_version(), description=description,
            labels=labels, apis=apis_of(service), models=[model_record(m) for m in models],
            runners=runners_of(service), python=python, conda=conda, docker=docker,
        )  # fmt: skip
        (staged / "README.md").write_text(readme(info, description), encoding="utf-8")
        info.dump(staged / tiffins.INFO_FILE)
        entry = store.commit(staged, tag)
    seconds["total"] = time.perf_counter() - started
    built = tiffins.BuiltTiffin(info, entry.path)
    return BuildReport(built, seconds, models_bytes, len(files))
