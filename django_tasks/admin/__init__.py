"""The admin: the control room of django_tasks.

- ``dashboard``: the dashboard (queues, charts, percentiles, stuck jobs, workers,
  schedules; its data read by ``stats``, its charts drawn by ``charts``);
- ``jobs``: the job list and page (fast at millions of rows; retry and cancel with permission);
- ``workers``: the workers page;
- ``schedules``: periodic schedules (edit, switch on and off, run now).
"""

from .dashboard import DashboardAdmin
from .jobs import AdminJobQuerySet, JobAdmin, JobPaginator, task_paths
from .schedules import ScheduleAdmin
from .workers import WorkerAdmin

__all__ = ["AdminJobQuerySet", "DashboardAdmin", "JobAdmin", "JobPaginator", "ScheduleAdmin",
           "WorkerAdmin", "task_paths"]
