"""Calling the reward functions of a batch, and checking what each returned.

Synchronous functions are called one after another, in config order. `async def` functions are then awaited
together: every async function of a batch runs on one event loop under `asyncio.gather`, as TRL's GRPOTrainer runs
them, so functions that wait (an LLM judge over HTTP, a code sandbox) overlap instead of adding up. Whatever a
function returns, sync or async, goes through the same checks: a list with one finite number (or None) per
completion, or a `RewardFunctionError` naming the function, the sample and the value. An exception raised inside a
function becomes a `RewardFunctionError` that names it and the sample (when the function set `sample_index` on it).
"""

from __future__ import annotations

import asyncio
import math
import numbers
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from reward.functions import completion_text
from reward.resolve import RewardFunctionError, is_async


class EventLoop:
    """One asyncio event loop, reused for every batch of a composite reward, so that what an async reward function
    keeps between calls (an HTTP client, a semaphore) stays on the loop it was made on.

    It runs in the caller's thread, or in a helper thread when the caller is itself inside a running event loop
    (a notebook), where a second loop cannot run."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, coroutine) -> Any:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            weakref.finalize(self, self._loop.close)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return self._loop.run_until_complete(coroutine)
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(self._loop.run_until_complete, coroutine).result()


def call_functions(
    functions: list[tuple[str, Callable[..., Any]]], arguments: dict[str, Any], completions: list[Any],
    loop: EventLoop,
) -> dict[str, list[float | None]]:
    """Each function's checked values for one batch, in the order of `functions`: the sync ones called in turn
    with `arguments`, then all async ones awaited concurrently on `loop`."""
    values: dict[str, list[float | None]] = {}
    waiting = []
    for name, fn in functions:
        if is_async(fn):
            waiting.append((name, fn))
            continue
        try:
            result = fn(**arguments)
        except Exception as err:
            raise RewardFunctionError(raised_message(f"reward function '{name}'", err, completions)) from err
        values[name] = checked_values(f"reward function '{name}'", result, completions, allow_none=True)
    if waiting:
        results = loop.run(_gather([fn for _, fn in waiting], arguments))
        for (name, _), result in zip(waiting, results):  # the first failure in config order is reported
            if isinstance(result, Exception):
                raise RewardFunctionError(raised_message(f"reward function '{name}'", result, completions)) \
                    from result
            if isinstance(result, BaseException):  # e.g. KeyboardInterrupt: not the function's failure
                raise result
            values[name] = checked_values(f"reward function '{name}'", result, completions, allow_none=True)
    return {name: values[name] for name, _ in functions}


async def _gather(functions: list[Callable[..., Any]], arguments: dict[str, Any]) -> list[Any]:
    """Await every function's call at once; an exception is returned in its place instead of cancelling the rest."""

    async def call(fn: Callable[..., Any]) -> Any:
        return await fn(**arguments)

    return await asyncio.gather(*(call(fn) for fn in functions), return_exceptions=True)


# --- what a function returned ---------------------------------------------------------------------------------


def excerpt(completion: Any) -> str:
    """A completion's text for an error message, cut to 60 characters."""
    try:
        text = completion_text(completion)
    except (TypeError, ValueError):
        text = str(completion)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def raised_message(subject: str, err: Exception, completions: list[Any]) -> str:
    index = getattr(err, "sample_index", None)  # set by the built-ins (and any user function) to name the sample
    if isinstance(index, int) and 0 <= index < len(completions):
        where = f"sample {index} (completion {excerpt(completions[index])})"
    else:
        where = f"a batch of {len(completions)} samples"
    return f"{subject} raised on {where}: {type(err).__name__}: {err}"


def checked_values(subject: str, result: Any, completions: list[Any], *, allow_none: bool) -> list[float | None]:
    """`result` as floats (None kept where allowed), or an error naming `subject`, the sample and the value."""
    n = len(completions)
    if hasattr(result, "tolist") and not isinstance(result, (list, tuple)):
        result = result.tolist()  # numpy arrays and torch tensors
    if not isinstance(result, (list, tuple)):
        raise RewardFunctionError(
            f"{subject} returned {type(result).__name__} instead of a list of {n} values "
            "(one float per completion, or None where it does not apply)"
        )
    if len(result) != n:
        raise RewardFunctionError(
            f"{subject} returned {len(result)} values for {n} samples; it must return exactly one value "
            "per completion (a float, or None where it does not apply)"
        )
    values: list[float | None] = []
    for index, value in enumerate(result):
        if value is None and allow_none:
            values.append(None)
            continue
        if not isinstance(value, numbers.Real) or not math.isfinite(value):
            kind = "" if isinstance(value, numbers.Real) else f" ({type(value).__name__})"
            allowed = "finite numbers, or None where it does not apply" if allow_none else "finite numbers"
            raise RewardFunctionError(
                f"{subject} returned {value!r}{kind} for sample {index} "
                f"(completion {excerpt(completions[index])}); rewards must be {allowed}"
            )
        values.append(float(value))
    return values
