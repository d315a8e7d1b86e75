"""The statuses a job row goes through, as stored.

Django's ``TaskResultStatus`` names what a caller sees; the table needs one more word.
READY -> CLAIMED (a worker took it, not started) -> RUNNING (started; the attempt is
counted) -> SUCCESSFUL | FAILED, or READY again for a retry. A workflow step starts as
WAITING (for the jobs it depends on) and becomes READY once they have all succeeded, or
FAILED without running once one of them failed. Any job not finished may end
CANCELLED (``result.cancel()``). Results report CLAIMED and WAITING as READY, which
they still are for the caller, and CANCELLED as FAILED (Django's API has no word for
it) with a last error ``django_tasks.exceptions.Cancelled``; ``result.is_cancelled``
tells it apart. Because a start is recorded, after a crash the
table tells which jobs had started (their attempt counts) from those only prefetched.

The column is wide enough for statuses still to come; code that must
act on "every status a worker holds" or "every final status" uses ``HELD`` and
``FINISHED`` rather than listing them.
"""

from __future__ import annotations

from django.db import models
from django.tasks import TaskResultStatus
from django.utils.translation import gettext_lazy as _

__all__ = ["ACTIVE", "CANCELLED", "CLAIMED", "FAILED", "FINISHED", "HELD", "READY", "RUNNING",
           "SUCCESSFUL", "WAITING", "JobStatus", "public_status"]


class JobStatus(models.TextChoices):
    WAITING = "WAITING", _("Waiting")
    READY = TaskResultStatus.READY.value, TaskResultStatus.READY.label
    CLAIMED = "CLAIMED", _("Claimed")
    RUNNING = TaskResultStatus.RUNNING.value, TaskResultStatus.RUNNING.label
    FAILED = TaskResultStatus.FAILED.value, TaskResultStatus.FAILED.label
    SUCCESSFUL = TaskResultStatus.SUCCESSFUL.value, TaskResultStatus.SUCCESSFUL.label
    CANCELLED = "CANCELLED", _("Cancelled")


READY = JobStatus.READY.value
CLAIMED = JobStatus.CLAIMED.value
RUNNING = JobStatus.RUNNING.value
SUCCESSFUL = JobStatus.SUCCESSFUL.value
FAILED = JobStatus.FAILED.value
WAITING = JobStatus.WAITING.value
CANCELLED = JobStatus.CANCELLED.value
#: A worker holds the job: nobody else may claim or change it.
HELD = (CLAIMED, RUNNING)
FINISHED = (SUCCESSFUL, FAILED, CANCELLED)
#: Every status before a final one: a unique job holds its key through all of them.
ACTIVE = (READY, *HELD)


def public_status(stored: str) -> TaskResultStatus:
    """What a stored status means to a caller of Django's task API: a claimed job and
    a workflow step waiting for its inputs are still READY to it; a cancelled job
    FAILED (its last error is ``Cancelled``)."""
    if stored in (CLAIMED, WAITING):
        return TaskResultStatus.READY
    if stored == CANCELLED:
        return TaskResultStatus.FAILED
    return TaskResultStatus(stored)
