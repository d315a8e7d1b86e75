"""A database router for projects that keep jobs in a database of their own.

With ``TASKS[...]["OPTIONS"]["DATABASE"] = "tasks"``, the backend, worker and
``manage.py tasks`` already use that alias; add this router so that everything else
touching the ``Job`` and ``Worker`` models (the admin, your own queries) does too::

    DATABASE_ROUTERS = ["django_tasks.routers.TasksRouter"]

It routes to the database of the ``default`` task backend (set ``TASKS_ROUTER_BACKEND``
to another alias to choose), and says nothing about other models.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS

__all__ = ["TasksRouter"]

APP_LABEL = "django_tasks"


class TasksRouter:
    """Reads and writes of django_tasks' models go to the task backend's database."""

    def _database(self) -> str:
        alias = getattr(settings, "TASKS_ROUTER_BACKEND", DEFAULT_TASK_BACKEND_ALIAS)
        options = settings.TASKS.get(alias, {}).get("OPTIONS", {})
        return options.get("DATABASE", "default")

    def db_for_read(self, model: type, **hints: Any) -> str | None:
        return self._database() if model._meta.app_label == APP_LABEL else None

    def db_for_write(self, model: type, **hints: Any) -> str | None:
        return self._database() if model._meta.app_label == APP_LABEL else None

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        return None

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool | None:
        return None  # migrate django_tasks wherever you run `migrate --database`
