"""What the admin pages of django_tasks share."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest
from django.utils.html import format_html


def pretty(value: Any) -> str:
    """A JSON value, indented, in a <pre>."""
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, sort_keys=True))


class ReadOnlyMixin:
    """Jobs change through workers and actions, never by editing fields."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def seconds(value: Any) -> str:
    """A time to the second in the current time zone (``2026-12-06 00:31:07``), or "-"."""
    from django.utils import timezone

    if value is None:
        return "-"
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M:%S")


def worker_link(worker_id: str) -> str:
    """A link to a worker's page (or "-"); no query: the worker row may be pruned since."""
    from django.urls import reverse

    if not worker_id:
        return "-"
    return format_html('<a href="{}">{}</a>',
                       reverse("admin:django_tasks_worker_change", args=[worker_id]), worker_id)


def human_bytes(n: int) -> str:
    """``n`` bytes for a person: ``"312.4 MiB"``; ``"-"`` for 0 (unknown)."""
    if not n:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return ""
