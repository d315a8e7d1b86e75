"""The admin: the control room of django_tasks.

- ``jobs``: the job list and page (fast at millions of rows; retry and cancel with permission);
- ``workers``: the workers page;
- ``schedules``: periodic schedules (edit, switch on and off, run now).
"""

from .jobs import AdminJobQuerySet, JobAdmin, JobPaginator, task_paths
from .schedules import ScheduleAdmin
from .workers import WorkerAdmin

__all__ = ["AdminJobQuerySet", "JobAdmin", "JobPaginator", "ScheduleAdmin", "WorkerAdmin",
           "task_paths"]
