"""Views to mount in your URLconf.

``metrics``: the Prometheus endpoint (docs/observability.md)::

    from django.urls import path
    import django_tasks.views

    urlpatterns = [..., path("tasks/metrics", django_tasks.views.metrics)]
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse

__all__ = ["metrics"]


def metrics(request: HttpRequest) -> HttpResponse:
    """Every metric in the Prometheus text format (:mod:`django_tasks.observe.prometheus`).

    Protected by the setting ``TASKS_METRICS_TOKEN``: when set, the request must carry
    ``Authorization: Bearer <token>`` (401 otherwise); when unset, only a logged-in staff
    user may see it (403 otherwise). 501 if ``prometheus_client`` is not installed."""
    from .observe.prometheus import CHALLENGE, REFUSED, token_refused

    if getattr(settings, "TASKS_METRICS_TOKEN", None):
        if token_refused(request.headers.get("Authorization", "")):
            response = HttpResponse(REFUSED, status=401, content_type="text/plain")
            response["WWW-Authenticate"] = CHALLENGE
            return response
    else:
        user = getattr(request, "user", None)
        if not (user is not None and user.is_active and user.is_staff):
            return HttpResponse("Staff only: log in as staff, or set TASKS_METRICS_TOKEN and "
                                "scrape with that bearer token.\n", status=403,
                                content_type="text/plain")
    from .jobs.enqueued import COUNTER

    COUNTER.flush()  # this process's enqueues not added yet: a lone process sees its own
    try:
        from .observe.prometheus import render

        body, content_type = render()
    except ImportError:
        return HttpResponse("prometheus_client is not installed: pip install "
                            "'django-tasks-engine[metrics]'.\n", status=501,
                            content_type="text/plain")
    return HttpResponse(body, content_type=content_type)
