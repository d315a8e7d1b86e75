"""Side connections: one per thread (or forked child) and database, apart from the
connection the task's own code uses.

A task's progress reports and its ``is_cancelled()`` look go through one, in
autocommit, so they are never part of the task's own transaction: others see a report
at once, a rollback of the task's work does not take it back, and a cancel request
committed while the task holds a transaction open is seen. A pool's threads and
children keep theirs open (:func:`keep_side_connections`); anywhere else (a test, a
script, the inline pool) it is closed after each use, so it never outlives what the
caller knows of its connections (a test run could not drop its database).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from django.db import DatabaseError, connections

__all__ = ["close_side_connections", "keep_side_connections", "on_side", "side_connection"]

_side = threading.local()
#: Side connections a forked child inherited: kept referenced, never closed (closing
#: would act on the parent's session).
_inherited_side: list[Any] = []


def _drop_side_connection(alias: str) -> None:
    conn = getattr(_side, "conns", {}).pop(alias, None)
    if conn is not None:
        try:
            conn.close()
        except Exception:
            pass


def keep_side_connections() -> None:
    """This thread (a pool's thread, a prefork child) keeps its side connections open
    between reports, until :func:`close_side_connections`."""
    _side.keep = True


def close_side_connections() -> None:
    """Close this thread's side connections (a pool thread or child that is done)."""
    if getattr(_side, "pid", None) == os.getpid():
        for alias in list(_side.conns):
            _drop_side_connection(alias)


def side_connection(alias: str) -> Any:
    """This thread's side connection to ``alias`` (opened on first use; a forked child
    opens its own rather than share its parent's)."""
    conns = getattr(_side, "conns", None)
    if conns is None or _side.pid != os.getpid():
        if conns:
            _inherited_side.extend(conns.values())  # the parent's: never closed here
        conns = _side.conns = {}
        _side.pid = os.getpid()
    conn = conns.get(alias)
    if conn is None:
        conn = conns[alias] = connections.create_connection(alias)
    return conn


def on_side(alias: str, run: Callable[[Any], Any]) -> Any:
    """``run(cursor)`` on this thread's side connection to ``alias`` (autocommit),
    reconnecting once if the connection broke."""
    for attempt in (1, 2):
        conn = side_connection(alias)
        try:
            with conn.cursor() as cursor:
                return run(cursor)
        except DatabaseError:
            if attempt == 2 or conn.is_usable():
                raise
            _drop_side_connection(alias)
        finally:
            if not getattr(_side, "keep", False):
                _drop_side_connection(alias)
    raise AssertionError("unreachable")
