"""Running many callers' calls as one: merge their payloads, call once, give each its rows.

Both places that merge calls use this: the :class:`~tiffin.runner.batching.Dispatcher` in
front of a model, and the :class:`~tiffin.runner.coalescer.Coalescer` in an API worker in
front of a runner process. A :class:`Call` is one caller's call (or one chunk of an oversize
call) with the future its caller awaits.

Rules:

* The calls of one merge share their keyword arguments and their batch key (kind and
  non-batch shape of every payload, :func:`~tiffin.runner.containers.batch_key`); the caller
  of :func:`run_merged` chose them so.
* Each call gets exactly its own rows of the result, in order, split along ``output_dim``.
  A result whose rows do not add up is a :class:`~tiffin.exceptions.RunnerError` for all.
* When a merged call fails and ``isolate(exc)`` says so (default: always), each call is run
  once more on its own: the call at fault gets its own error, the others their answers.
* A call whose caller went away (its future already done) is left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tiffin.exceptions import InvalidArgument, RunnerError
from tiffin.runner import containers

__all__ = [
    "Call",
    "Outcome",
    "answer",
    "fail",
    "merge_payloads",
    "run_alone",
    "run_merged",
    "same_options",
]

Outcome = Literal["ok", "isolated", "failed"]


@dataclass(eq=False, slots=True)
class Call:
    """One caller's call: its payloads, options, rows and the future it awaits."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    rows: int
    future: asyncio.Future[Any]


def same_options(left: dict[str, Any], right: dict[str, Any]) -> bool:
    """Whether two calls' keyword arguments are equal (so they may share a batch)."""
    if left is right:
        return True
    try:
        return bool(left == right)
    except Exception:  # e.g. arrays as option values: treat as different
        return False


def merge_payloads(calls: Sequence[Call], input_dim: int) -> tuple[Any, ...]:
    """The positional payloads of ``calls``, each merged along ``input_dim``."""
    head = calls[0]
    if len(calls) == 1:
        return head.args
    return tuple(
        containers.concat([call.args[i] for call in calls], input_dim)
        for i in range(len(head.args))
    )


def answer(calls: Sequence[Call], result: Any, output_dim: int, name: str) -> None:
    """Give each call its own rows of ``result``."""
    try:
        parts = containers.split(result, [call.rows for call in calls], output_dim)
    except InvalidArgument as exc:
        raise RunnerError(f"runner method '{name}': {exc}") from exc
    for call, part in zip(calls, parts, strict=True):
        if not call.future.done():
            call.future.set_result(part)


def fail(calls: Sequence[Call], exc: BaseException, name: str) -> None:
    """Answer every call with ``exc``; re-raise a cancellation after answering."""
    error = exc
    if not isinstance(exc, Exception):  # cancelled by loop shutdown: still answer
        error = RunnerError(f"a batch of runner method '{name}' was interrupted")
    for call in calls:
        if not call.future.done():
            call.future.set_exception(error)
    if error is not exc:
        raise exc


async def run_alone(
    infer: Callable[[Call], Awaitable[Any]], calls: Sequence[Call], name: str
) -> None:
    """Each call on its own: its own answer or its own error."""
    for index, call in enumerate(calls):
        if call.future.done():  # its caller went away meanwhile
            continue
        try:
            result = await infer(call)
        except Exception as exc:
            call.future.set_exception(exc)
        except BaseException as exc:
            fail(calls[index:], exc, name)
        else:
            if not call.future.done():
                call.future.set_result(result)


async def run_merged(
    infer: Callable[[tuple[Any, ...], dict[str, Any], int], Awaitable[Any]],
    calls: Sequence[Call],
    *,
    input_dim: int,
    output_dim: int,
    name: str,
    isolate: Callable[[Exception], bool] | None = None,
) -> Outcome:
    """Run ``calls`` as one ``infer(payloads, kwargs, number_of_calls)``.

    ``"ok"``: every call has its rows. ``"isolated"``: the merged call failed and each call
    was run alone. ``"failed"``: every call was answered with the error.
    """
    try:
        merged = merge_payloads(calls, input_dim)
        result = await infer(merged, calls[0].kwargs, len(calls))
        answer(calls, result, output_dim, name)
    except BaseException as exc:
        if isinstance(exc, Exception) and len(calls) > 1 and (isolate is None or isolate(exc)):
            # one caller's bad input must not fail everyone it was merged with
            await run_alone(lambda call: infer(call.args, call.kwargs, 1), calls, name)
            return "isolated"
        fail(calls, exc, name)
        return "failed"
    return "ok"
