from django.contrib import admin
from django.urls import path

import django_tasks.views
from sampleproject.demo import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("signup/", views.signup, name="signup"),
    # Prometheus (docs/observability.md): staff only, or TASKS_METRICS_TOKEN's bearer.
    path("tasks/metrics", django_tasks.views.metrics),
]
