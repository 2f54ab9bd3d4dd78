"""The tiffin error tree.

Every error tiffin raises on purpose is a named subclass of :class:`TiffinError`. Each class
carries the HTTP status the server answers with (``http_status``), the code in the JSON body
(``error_code``) and the exit code the CLI ends with (``exit_code``); only those two
boundaries turn an error into a response or an exit. Third-party errors are wrapped where
they enter, with ``raise ... from exc``.

::

    TiffinError                       500  exit 1
    ├── NotFound                      404  exit 1  a model, tiffin, run or file
    ├── InvalidArgument               400  exit 2  bad input, option or setting
    │   ├── InvalidTag                              a name or version breaks the rule
    │   ├── DeviceUnavailable                       a device this machine does not have
    │   ├── InvalidArchive                          a truncated, corrupt or unsafe archive
    │   ├── SignatureMismatch                       an input's shape or columns are not
    │   │                                           the model's signature
    │   ├── UnsupportedMediaType      415
    │   └── PayloadTooLarge           413
    │       └── DecodedTooLarge                     too big once decoded (names the setting)
    ├── AlreadyExists                 409  exit 1  saving would overwrite
    ├── StoreError                                  the store cannot be read or written
    │   ├── CorruptEntry                            a metadata file is unreadable
    │   ├── UnknownFramework                        model.yaml names no framework tiffin knows
    │   └── ExportFailed                            an archive could not be written
    ├── MissingDependency                           an optional extra is not installed
    ├── ImportFailed                                importing from outside (an MLflow URI)
    ├── LoadFailed                                  a stored model could not be loaded
    ├── RunnerError                                 a runner used wrongly, or its model raised
    │   ├── PredictFailed                           ``tiffin models predict``: the model raised
    │   ├── OutOfDeviceMemory         503           one row does not fit in GPU memory
    │   └── FrameError                              a message between processes did not decode
    ├── InvalidOutput                 500           an API returned what its descriptor
    │                                               cannot encode (a server-side bug)
    ├── RunnerUnavailable             503           a runner process is down
    ├── Overloaded                    503           queued past max_latency_ms
    ├── ServerError                                 a server could not start
    │   └── AddressInUse                            its address is taken
    ├── UserCodeFailed                              the user's service or model code raised
    │                                               while loading (its own frames only)
    ├── ToolFailed                                  a tool tiffin ran (pip, a container
    │                                               engine) failed
    └── RemoteError                   (the answer)  a tiffin server answered with an error
"""

from __future__ import annotations

from typing import Self

__all__ = [
    "AddressInUse",
    "AlreadyExists",
    "CorruptEntry",
    "DecodedTooLarge",
    "DeviceUnavailable",
    "ExportFailed",
    "FrameError",
    "ImportFailed",
    "InvalidArchive",
    "InvalidArgument",
    "InvalidOutput",
    "InvalidTag",
    "LoadFailed",
    "MissingDependency",
    "NotFound",
    "OutOfDeviceMemory",
    "Overloaded",
    "PayloadTooLarge",
    "PredictFailed",
    "RemoteError",
    "RunnerError",
    "RunnerUnavailable",
    "ServerError",
    "SignatureMismatch",
    "StoreError",
    "TiffinError",
    "ToolFailed",
    "UnknownFramework",
    "UnsupportedMediaType",
    "UserCodeFailed",
    "missing_dependency",
]


class TiffinError(Exception):
    """Base class of every tiffin error."""

    http_status: int = 500
    exit_code: int = 1
    error_code: str = "INTERNAL_ERROR"

    @property
    def message(self) -> str:
        return str(self)

    def prefixed(self, prefix: str) -> Self:
        """A copy of this error (same class and fields) whose message starts with ``prefix``."""
        import copy

        error = copy.copy(self)
        error.args = (f"{prefix}{self}",)
        return error


class NotFound(TiffinError):
    """A model, tiffin, run or file that was asked for does not exist."""

    http_status = 404
    exit_code = 1
    error_code = "NOT_FOUND"


class InvalidArgument(TiffinError):
    """The caller passed something tiffin cannot accept (bad tag, bad option, bad input)."""

    http_status = 400
    exit_code = 2
    error_code = "BAD_REQUEST"


class InvalidTag(InvalidArgument):
    """A tag, name or version breaks the naming rule."""


class DeviceUnavailable(InvalidArgument):
    """A runner or ``load_model`` asked for a device this machine does not have (``cuda``
    with no visible GPU, ``cuda:N`` past the last one, a runnable that runs only on the CPU)."""


class InvalidArchive(InvalidArgument):
    """An exported model archive is truncated, corrupt, or holds unsafe members."""


class SignatureMismatch(InvalidArgument):
    """An input whose shape, columns or form are not what the model's signature declares
    (its values are another matter: those are ``InvalidArgument``). MLflow's scoring protocol
    answers it with ``INVALID_PARAMETER_VALUE``, as ``mlflow models serve`` does."""

    mlflow_error_code = "INVALID_PARAMETER_VALUE"


class UnsupportedMediaType(InvalidArgument):
    """A request body came with a content type the endpoint does not accept."""

    http_status = 415
    error_code = "UNSUPPORTED_MEDIA_TYPE"


class PayloadTooLarge(InvalidArgument):
    """A request body is over the configured limit."""

    http_status = 413
    error_code = "PAYLOAD_TOO_LARGE"


class DecodedTooLarge(PayloadTooLarge):
    """A request body that would decode into more than a limit allows (cells, columns,
    pixels); ``setting`` names the limit (``max_decoded_cells``, ``max_columns``,
    ``max_image_pixels``)."""

    def __init__(self, message: str, setting: str) -> None:
        super().__init__(message)
        self.setting = setting

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.setting))


class AlreadyExists(TiffinError):
    """Saving would overwrite something that exists."""

    http_status = 409
    exit_code = 1
    error_code = "ALREADY_EXISTS"


class StoreError(TiffinError):
    """The store on disk cannot be read or written."""


class CorruptEntry(StoreError):
    """A store entry's metadata file is unreadable or breaks its schema."""


class UnknownFramework(StoreError):
    """A model names a framework module tiffin does not know (``model.yaml``'s ``module``)."""


class ExportFailed(StoreError):
    """An archive of a store entry could not be written."""


class MissingDependency(TiffinError):
    """An optional dependency (a framework) is not installed."""


class ImportFailed(TiffinError):
    """Importing a model from outside (an MLflow URI, a file) failed."""


class LoadFailed(TiffinError):
    """A stored model could not be loaded (its framework raised)."""


class RunnerError(TiffinError):
    """A runner was used wrongly, or its model raised."""


class PredictFailed(RunnerError):
    """``tiffin models predict``: the model raised on the given input."""


class OutOfDeviceMemory(RunnerError):
    """A model ran out of GPU memory on a batch it could not split further (one row, or a
    method that is not batchable); the runner keeps serving."""

    http_status = 503
    error_code = "OUT_OF_DEVICE_MEMORY"


class FrameError(RunnerError):
    """A message between an API worker and a runner process arrived whole but could not be
    decoded (for instance a class the receiving process cannot import). Only the call it
    belongs to (``call_id``) fails; the connection goes on."""

    def __init__(self, message: str, call_id: int) -> None:
        super().__init__(message)
        self.call_id = call_id

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.call_id))


class ServerError(TiffinError):
    """A server could not start."""


class AddressInUse(ServerError):
    """The address a server was to listen on is taken."""


class InvalidOutput(TiffinError):
    """An API function returned a value its output descriptor cannot encode (a server-side bug)."""

    http_status = 500
    exit_code = 1
    error_code = "INVALID_OUTPUT"


class RunnerUnavailable(TiffinError):
    """A runner process is down (crashed and restarting, or not started yet)."""

    http_status = 503
    exit_code = 1
    error_code = "RUNNER_UNAVAILABLE"
    retry_after = 1.0


class Overloaded(TiffinError):
    """A call waited in a batching queue past its runner's max_latency_ms."""

    http_status = 503
    exit_code = 1
    error_code = "OVERLOADED"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RemoteError(TiffinError):
    """A tiffin server answered a client's request with an error; carries its body."""

    def __init__(self, message: str, status: int, body: object) -> None:
        super().__init__(message)
        self.http_status = status
        self.body = body
        self.error_code = str(body.get("error", "HTTP_ERROR")) if isinstance(body, dict) else (
            "HTTP_ERROR"
        )
        self.detail = body.get("detail") if isinstance(body, dict) else body

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.http_status, self.body))

    @classmethod
    def from_response(cls, status: int, content: bytes, what: str) -> RemoteError:
        import json

        try:
            body: object = json.loads(content)
        except ValueError:
            body = content.decode("utf-8", "replace")
        detail = body.get("detail") or body.get("message") if isinstance(body, dict) else body
        return cls(f"{what} answered {status}: {detail}", status, body)


class UserCodeFailed(TiffinError):
    """The user's code (a service module, a model's loader) raised while tiffin loaded it.

    The message is the error with the user's own frames only -- their files and lines, no
    frames of tiffin, importlib or the command line -- so it fits on one screen.
    """

    #: the most frames shown, innermost last
    MAX_FRAMES = 8

    @classmethod
    def from_exception(cls, what: str, exc: BaseException) -> UserCodeFailed:
        import traceback

        frames = [
            frame
            for frame in traceback.extract_tb(exc.__traceback__)
            if not _internal(frame.filename)
        ][-cls.MAX_FRAMES :]
        lines = [f"{what}:"]
        for frame in frames:
            lines.append(f'  File "{frame.filename}", line {frame.lineno}, in {frame.name}')
            if frame.line:
                lines.append(f"    {frame.line.strip()}")
        lines += [line.rstrip("\n") for line in traceback.format_exception_only(exc)]
        return cls("\n".join(lines))


class ToolFailed(TiffinError):
    """A tool tiffin runs to completion (pip locking a build's packages, a container engine
    building an image) exited with an error; the message ends with the tool's own words."""


def _internal(filename: str) -> bool:
    """Frames of tiffin itself, of importlib's machinery and of click: not the user's."""
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.abspath(filename)
    return (
        filename.startswith("<frozen ")
        or path.startswith(here + os.sep)
        or f"{os.sep}importlib{os.sep}" in path
        or f"{os.sep}click{os.sep}" in path
    )


def missing_dependency(package: str, extra: str) -> MissingDependency:
    """The error to raise when an optional framework is not installed."""
    return MissingDependency(
        f"{package} is not installed; install it with `pip install 'tiffin[{extra}]'`"
    )
