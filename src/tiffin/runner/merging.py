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
  A result whose rows do not add up is a :class:`~tiffin.exceptions.RunnerError` for all; a
  call that ran alone gets a result that holds no rows at all (one string for the call, as a
  pyfunc model may answer) whole. Merged, such a result fails, and isolation runs each alone.
* When a merged call fails and ``isolate(exc)`` says so (default: always), the calls are
  bisected: each half runs merged, a half that fails is split again, until the calls at fault
  fail alone and get their own errors; the others get their answers. (The dispatcher isolates
  its failed batches its own way, sharing the model meanwhile: :mod:`~tiffin.runner.isolation`.)
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
    "Infer",
    "Outcome",
    "answer",
    "attempt",
    "bisect",
    "fail",
    "isolates",
    "merge_payloads",
    "run_merged",
    "same_options",
]

Outcome = Literal["ok", "isolated", "failed"]

#: ``infer(merged_payloads, kwargs, number_of_calls)``: one model call (or message) for many calls
Infer = Callable[[tuple[Any, ...], dict[str, Any], int], Awaitable[Any]]


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
    """Give each call its own rows of ``result``; a call that ran alone gets a result that
    holds no rows (a string, a number, a dict of them) whole, as an unbatched method would."""
    try:
        parts = containers.split(result, [call.rows for call in calls], output_dim)
    except InvalidArgument as exc:
        if len(calls) != 1 or _has_rows(result, output_dim):
            raise RunnerError(f"runner method '{name}': {exc}") from exc
        parts = [result]
    for call, part in zip(calls, parts, strict=True):
        if not call.future.done():
            call.future.set_result(part)


def _has_rows(result: Any, output_dim: int) -> bool:
    try:
        containers.count_rows(result, output_dim)
    except InvalidArgument:
        return False
    return True


def isolates(error: BaseException, isolate: Callable[[Exception], bool] | None) -> bool:
    """Whether the calls of a merged call that failed with ``error`` are run apart: an
    ``Exception`` (not a cancellation) that ``isolate`` accepts (``None``: any)."""
    return isinstance(error, Exception) and (isolate is None or isolate(error))


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


async def run_merged(
    infer: Infer,
    calls: Sequence[Call],
    *,
    input_dim: int,
    output_dim: int,
    name: str,
    isolate: Callable[[Exception], bool] | None = None,
) -> Outcome:
    """Run ``calls`` as one ``infer(payloads, kwargs, number_of_calls)``.

    ``"ok"``: every call has its rows. ``"isolated"``: the merged call failed and the calls
    were bisected (see :func:`bisect`). ``"failed"``: every call was answered with the error.
    """
    error = await attempt(infer, calls, input_dim, output_dim, name)
    if error is None:
        return "ok"
    if len(calls) > 1 and isolates(error, isolate):
        await bisect(
            infer, calls, input_dim=input_dim, output_dim=output_dim, name=name, isolate=isolate
        )
        return "isolated"
    fail(calls, error, name)
    return "failed"


async def bisect(
    infer: Infer,
    calls: Sequence[Call],
    *,
    input_dim: int,
    output_dim: int,
    name: str,
    isolate: Callable[[Exception], bool] | None = None,
) -> None:
    """After ``calls`` failed together: run each half merged, and split a half that fails
    again, until the calls at fault fail alone and get their own errors.

    One bad call among n costs about 2·log2(n) runs instead of n runs of one call. Halves run
    depth first, so calls are answered in order; a call whose caller went away is left out;
    an error ``isolate`` does not isolate (say the runner process is down) answers every call
    of the half it struck.
    """

    async def settle(group: list[Call]) -> None:
        group = [call for call in group if not call.future.done()]
        if not group:
            return
        error = await attempt(infer, group, input_dim, output_dim, name)
        if error is None:
            return
        if len(group) > 1 and isolates(error, isolate):
            await split(group)
        else:
            fail(group, error, name)

    async def split(group: list[Call]) -> None:
        middle = len(group) // 2
        await settle(group[:middle])
        await settle(group[middle:])

    try:
        await split(list(calls))
    except BaseException:  # interrupted: answer every call still waiting, then go
        fail(calls, RunnerError(f"a batch of runner method '{name}' was interrupted"), name)
        raise


async def attempt(
    infer: Infer,
    calls: Sequence[Call],
    input_dim: int,
    output_dim: int,
    name: str,
) -> BaseException | None:
    """Run ``calls`` merged and answer each; the error instead, with no call answered."""
    try:
        merged = merge_payloads(calls, input_dim)
        result = await infer(merged, calls[0].kwargs, len(calls))
        answer(calls, result, output_dim, name)
    except BaseException as exc:
        return exc
    return None
