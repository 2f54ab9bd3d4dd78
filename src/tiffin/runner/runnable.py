"""``tiffin.Runnable``: the class whose marked methods a runner calls.

A Runnable is written by the user, or built from a stored model by its framework
(:func:`model_runnable`). Each method marked with :meth:`Runnable.method` (or added with
:meth:`Runnable.add_method`) carries its :class:`~tiffin.batch_settings.BatchSettings`; the
runner exposes it as ``runner.<method>``.

Devices: a runnable that lists ``"nvidia.com/gpu"`` in ``SUPPORTED_RESOURCES`` may run on a
GPU (its runner's ``device`` defaults to ``auto``); one whose ``__init__`` takes a ``device``
keyword gets the runner's resolved device (``"cpu"`` or ``"cuda:N"``), and one that takes
``precision`` gets the runner's precision setting (:func:`placement_parameters`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from tiffin.batch_settings import BatchSettings
from tiffin.exceptions import InvalidArgument

if TYPE_CHECKING:
    from tiffin.store.models import Model

__all__ = ["Runnable", "check_methods", "model_runnable", "placement_parameters"]

_METHOD_ATTR = "__tiffin_method__"


class Runnable:
    """Base class of the objects a Runner runs. Subclass it and mark methods::

    class MyRunnable(tiffin.Runnable):
        SUPPORTED_RESOURCES = ("cpu",)
        SUPPORTS_CPU_MULTI_THREADING = True

        def __init__(self):
            self.model = load_something()

        @tiffin.Runnable.method(batchable=True, batch_dim=0)
        def predict(self, batch):
            return self.model.predict(batch)
    """

    SUPPORTED_RESOURCES: ClassVar[tuple[str, ...]] = ("cpu",)
    SUPPORTS_CPU_MULTI_THREADING: ClassVar[bool] = False
    methods: ClassVar[dict[str, BatchSettings]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        found = {}
        for klass in reversed(cls.__mro__):
            for attr, value in vars(klass).items():
                settings = getattr(value, _METHOD_ATTR, None)
                if isinstance(settings, BatchSettings):
                    found[attr] = settings
        cls.methods = found

    @staticmethod
    def method(
        fn: Callable[..., Any] | None = None,
        *,
        batchable: bool = False,
        batch_dim: int | Sequence[int] = 0,
    ) -> Any:
        """Mark a method as callable through a Runner (usable bare or with options)."""
        settings = BatchSettings(batchable=batchable, batch_dim=batch_dim)  # type: ignore[arg-type]

        def mark(func: Callable[..., Any]) -> Callable[..., Any]:
            setattr(func, _METHOD_ATTR, settings)
            return func

        return mark(fn) if fn is not None else mark

    @classmethod
    def add_method(
        cls,
        name: str,
        fn: Callable[..., Any],
        *,
        batchable: bool = False,
        batch_dim: int | Sequence[int] = 0,
    ) -> None:
        """Add a method at run time (framework runnables build their methods from signatures)."""
        if not name.isidentifier() or name.startswith("_"):
            raise InvalidArgument(f"runnable method name {name!r} is not a public identifier")
        settings = BatchSettings(batchable=batchable, batch_dim=batch_dim)  # type: ignore[arg-type]
        setattr(cls, name, fn)
        cls.methods = {**cls.methods, name: settings}


def placement_parameters(runnable_class: type[Runnable]) -> frozenset[str]:
    """Which of ``device`` and ``precision`` the runnable's ``__init__`` takes by name."""
    import inspect

    try:
        parameters = inspect.signature(runnable_class.__init__).parameters
    except (TypeError, ValueError):
        return frozenset()
    named = (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return frozenset(
        name for name in ("device", "precision")
        if name in parameters and parameters[name].kind in named
    )


def check_methods(obj: Any, methods: Iterable[str], what: str) -> None:
    """Every declared method must be a callable the object has."""
    for method in methods:
        if not callable(getattr(obj, method, None)):
            raise InvalidArgument(
                f"signature names method {method!r}, but the {what} ({type(obj).__name__}) "
                "has no such method"
            )


def model_runnable(model: Model, load: Callable[[Model], Any], framework: str) -> type[Runnable]:
    """A Runnable class whose methods are the model's signatures, called on the loaded object."""

    def __init__(self: Any) -> None:
        self.model = load(model)
        check_methods(self.model, model.info.signatures, f"loaded {framework} model")

    runnable: type[Runnable] = type(
        f"{framework.title().replace('_', '')}Runnable",
        (Runnable,),
        {"__init__": __init__, "SUPPORTS_CPU_MULTI_THREADING": True},
    )
    for method, signature in model.info.signatures.items():
        runnable.add_method(
            method,
            _forward(method),
            batchable=signature["batchable"],
            batch_dim=signature["batch_dim"],
        )
    return runnable


def _forward(method: str) -> Callable[..., Any]:
    def call(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self.model, method)(*args, **kwargs)

    call.__name__ = method
    return call
