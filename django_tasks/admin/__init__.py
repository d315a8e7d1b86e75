"""The admin: the control room of django_tasks.

- ``dashboard``: the dashboard (queues, charts, percentiles, stuck jobs, workers,
  schedules; its data read by ``stats``, its charts drawn by ``charts``);
- ``jobs``: the job list and page (fast at millions of rows; retry and cancel with permission);
- ``workers``: the workers page;
- ``rates``: rate limits in use and their next free start slot;
- ``schedules``: periodic schedules (edit, switch on and off, run now).
"""

from .dashboard import DashboardAdmin
from .jobs import AdminJobQuerySet, JobAdmin, JobPaginator, task_paths
from .rates import RateLimitAdmin
from .schedules import ScheduleAdmin
from .workers import WorkerAdmin

__all__ = ["AdminJobQuerySet", "DashboardAdmin", "JobAdmin", "JobPaginator", "RateLimitAdmin",
           "ScheduleAdmin", "WorkerAdmin", "task_paths"]
