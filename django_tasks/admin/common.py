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
