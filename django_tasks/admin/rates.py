"""Rate limits in use (``django_tasks.rates``): each limited key, its limit, and when its
next start slot is free. Read-only: workers write the slots."""

from __future__ import annotations

import time

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from ..jobs.policy import limit_of
from ..models import RateLimit
from .common import ReadOnlyMixin


@admin.register(RateLimit)
class RateLimitAdmin(ReadOnlyMixin, admin.ModelAdmin):
    list_display = ("key", "backend", "limit", "next_slot")
    list_filter = ("backend",)
    search_fields = ("key",)
    ordering = ("backend", "key")

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description=_("limit"))
    def limit(self, row: RateLimit) -> str:
        """The task's ``rate_limit``, or the queue's ``OPTIONS["RATE_LIMITS"]`` entry."""
        return limit_of(row.backend, row.key)

    @admin.display(description=_("next free start slot"))
    def next_slot(self, row: RateLimit) -> str:
        wait = row.next_at - time.time()
        return _("in %.1f s") % wait if wait > 0 else _("now")
