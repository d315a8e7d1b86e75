"""The statuses a job row goes through, as stored.

Django's ``TaskResultStatus`` names what a caller sees; the table needs one more word.
READY -> CLAIMED (a worker took it, not started) -> RUNNING (started; the attempt is
counted) -> SUCCESSFUL | FAILED, or READY again for a retry. A workflow step starts as
WAITING (for the jobs it depends on) and becomes READY once they have all succeeded, or
FAILED without running once one of them failed. Results report CLAIMED as
READY, which it still is for the caller. Because a start is recorded, after a crash the
table tells which jobs had started (their attempt counts) from those only prefetched.

The column is wide enough for statuses still to come (say CANCELLED); code that must
act on "every status a worker holds" or "every final status" uses ``HELD`` and
``FINISHED`` rather than listing them.
"""

from __future__ import annotations

from django.db import models
from django.tasks import TaskResultStatus
from django.utils.translation import gettext_lazy as _

__all__ = ["ACTIVE", "CLAIMED", "FAILED", "FINISHED", "HELD", "READY", "RUNNING", "SUCCESSFUL",
           "WAITING", "JobStatus", "public_status"]


class JobStatus(models.TextChoices):
    WAITING = "WAITING", _("Waiting")
    READY = TaskResultStatus.READY.value, TaskResultStatus.READY.label
    CLAIMED = "CLAIMED", _("Claimed")
    RUNNING = TaskResultStatus.RUNNING.value, TaskResultStatus.RUNNING.label
    FAILED = TaskResultStatus.FAILED.value, TaskResultStatus.FAILED.label
    SUCCESSFUL = TaskResultStatus.SUCCESSFUL.value, TaskResultStatus.SUCCESSFUL.label


READY = JobStatus.READY.value
CLAIMED = JobStatus.CLAIMED.value
RUNNING = JobStatus.RUNNING.value
SUCCESSFUL = JobStatus.SUCCESSFUL.value
FAILED = JobStatus.FAILED.value
WAITING = JobStatus.WAITING.value
#: A worker holds the job: nobody else may claim or change it.
HELD = (CLAIMED, RUNNING)
FINISHED = (SUCCESSFUL, FAILED)
#: Every status before a final one: a unique job holds its key through all of them.
ACTIVE = (READY, *HELD)


def public_status(stored: str) -> TaskResultStatus:
    """What a stored status means to a caller of Django's task API: a claimed job and
    a workflow step waiting for its inputs are still READY to it."""
    return TaskResultStatus.READY if stored in (CLAIMED, WAITING) else TaskResultStatus(stored)
