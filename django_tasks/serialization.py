"""Strict JSON for task arguments and return values.

A value is accepted only if it comes back from ``json.loads(json.dumps(value))``
equal to what went in (tuples become lists, as Django's own ``normalize_json`` does).
Anything else is refused with a message that names where the value was and what to
pass instead, before anything is written.
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable
from typing import Any

from .exceptions import ArgumentNotSerializable, ReturnValueNotSerializable

__all__ = ["check_arguments", "check_return_value", "dumps"]


def dumps(value: Any) -> str:
    """Compact JSON text; refuses NaN and infinity."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


class _Bad(Exception):
    def __init__(self, value: Any, reason: str) -> None:
        self.value = value
        self.reason = reason
        self.path: list[str] = []


def _walk(value: Any) -> None:
    # Hot path: one type() per node, no path strings unless something is wrong.
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return
    if t is float:
        if not math.isfinite(value):
            raise _Bad(value, f"{value!r} is not valid JSON: pass None or a string instead")
        return
    if t is list or t is tuple:
        for i, item in enumerate(value):
            try:
                _walk(item)
            except _Bad as bad:
                bad.path.append(f"[{i}]")
                raise
        return
    if t is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise _Bad(
                    key,
                    f"has the key {key!r} of type {type(key).__name__}: "
                    "JSON object keys are strings, so it would come back as "
                    f"{json.dumps(str(key))}; use string keys",
                )
            try:
                _walk(item)
            except _Bad as bad:
                bad.path.append(f"[{key!r}]")
                raise
        return
    # str and int subclasses (StrEnum, IntEnum, TextChoices) compare equal after the trip.
    if isinstance(value, str | int) and not isinstance(value, bool):
        return
    raise _Bad(value, _hint(value))


def _hint(value: Any) -> str:
    name = type(value).__name__
    module = type(value).__module__
    if name in {"datetime", "date", "time"} and module == "datetime":
        advice = "pass an ISO string (value.isoformat()) or a timestamp"
    elif name == "timedelta":
        advice = "pass a number of seconds (value.total_seconds())"
    elif name == "Decimal":
        advice = "pass a string (str(value)) to keep its precision"
    elif name == "UUID":
        advice = "pass str(value)"
    elif isinstance(value, set | frozenset):
        advice = "pass a list (sorted(value))"
    elif isinstance(value, bytes | bytearray | memoryview):
        advice = "pass a str (decode it, or base64-encode binary data)"
    elif hasattr(value, "_meta") and hasattr(value, "pk"):
        advice = "pass its primary key (obj.pk) and load the object inside the task"
    else:
        advice = "pass only str, int, float, bool, None, list and dict with string keys"
    return f"is a {module}.{name}, which is not JSON: {advice}"


def _describe(bad: _Bad, root: str) -> str:
    return f"{root}{''.join(reversed(bad.path))} {bad.reason}"


def check_arguments(
    func: Callable[..., Any] | None, args: tuple | list, kwargs: dict[str, Any], *, task_name: str
) -> None:
    """Raise ArgumentNotSerializable naming the first argument that is not strict JSON."""
    for index, value in enumerate(args):
        try:
            _walk(value)
        except _Bad as bad:
            raise ArgumentNotSerializable(
                f"{task_name}: {_describe(bad, _positional_name(func, index))}. "
                "Nothing was enqueued."
            ) from None
    for key, value in kwargs.items():
        try:
            _walk(value)
        except _Bad as bad:
            raise ArgumentNotSerializable(
                f"{task_name}: {_describe(bad, f'argument {key!r}')}. Nothing was enqueued."
            ) from None


def _positional_name(func: Callable[..., Any] | None, index: int) -> str:
    """'argument 'when' (position 0)' when the signature tells, else 'positional argument 0'."""
    if func is not None:
        try:
            params = [
                p
                for p in inspect.signature(func).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            ]
        except (TypeError, ValueError):
            params = []
        if params and params[0].name == "context":
            params = params[1:]
        if index < len(params):
            return f"argument {params[index].name!r} (position {index})"
    return f"positional argument {index}"


def check_return_value(value: Any, *, task_name: str) -> None:
    """Raise ReturnValueNotSerializable if the task's return value is not strict JSON."""
    try:
        _walk(value)
    except _Bad as bad:
        raise ReturnValueNotSerializable(
            f"{task_name} returned a value that cannot be stored: "
            f"{_describe(bad, 'return value')}"
        ) from None
