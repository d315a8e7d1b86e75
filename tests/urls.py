from django.contrib import admin
from django.urls import path

import django_tasks.views

urlpatterns = [path("admin/", admin.site.urls),
               path("tasks/metrics", django_tasks.views.metrics)]
