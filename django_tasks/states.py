"""The statuses a job row goes through, as stored.

Django's ``TaskResultStatus`` names what a caller sees; the table needs one more word.
READY -> CLAIMED (a worker took it, not started) -> RUNNING (started; the attempt is
counted) -> SUCCESSFUL | FAILED, or READY again for a retry. Results report CLAIMED as
READY, which it still is for the caller. Because a start is recorded, after a crash the
table tells which jobs had started (their attempt counts) from those only prefetched.
"""

from __future__ import annotations

from django.tasks import TaskResultStatus

READY = TaskResultStatus.READY.value
CLAIMED = "CLAIMED"
RUNNING = TaskResultStatus.RUNNING.value
SUCCESSFUL = TaskResultStatus.SUCCESSFUL.value
FAILED = TaskResultStatus.FAILED.value
#: A worker holds the job: nobody else may claim or change it.
HELD = (CLAIMED, RUNNING)
FINISHED = (SUCCESSFUL, FAILED)


def public_status(stored: str) -> TaskResultStatus:
    """What a stored status means to a caller of Django's task API."""
    return TaskResultStatus.READY if stored == CLAIMED else TaskResultStatus(stored)
