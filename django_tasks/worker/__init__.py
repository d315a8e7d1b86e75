"""The worker: ``loop.TaskWorker`` runs the main loop; ``ledger`` holds its jobs;
``broker_thread`` makes the round trips; ``duties`` runs the periodic duties; ``pools``
run the jobs; ``execute`` calls the task.

``Worker`` is ``TaskWorker`` under its former name, kept because projects import it
(``from django_tasks.worker import Worker``). It is not ``django_tasks.models.Worker``,
the worker registry's row.
"""

from .loop import TaskWorker
from .phase import Phase

#: ``TaskWorker`` under its former name (not ``django_tasks.models.Worker``).
Worker = TaskWorker

__all__ = ["Phase", "TaskWorker", "Worker"]
