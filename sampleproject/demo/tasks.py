"""The sample project's tasks: the seed use cases of django_tasks."""

from __future__ import annotations

import logging
import random
import time

from django.core.mail import send_mail
from django.tasks import task

logger = logging.getLogger(__name__)


class FlakyStorageError(ConnectionError):
    """The pretend object store dropped the connection."""


@task(queue_name="emails", priority=10, max_attempts=5)
def send_welcome_email(user_id: int, email: str) -> str:
    send_mail(
        subject="Welcome!",
        message=f"Hello user {user_id}, thanks for signing up.",
        from_email=None,
        recipient_list=[email],
    )
    return f"sent to {email}"


@task(takes_context=True, max_attempts=4, retry_on=(FlakyStorageError,), backoff=0.5)
def encode_video(context, video_id: int, steps: int = 5, fail_first: int = 1) -> dict:
    """Pretend to encode a video, reporting progress per chunk and stopping if cancelled;
    the upload step fails on the first ``fail_first`` attempts."""
    for step in range(1, steps + 1):
        if context.is_cancelled():  # result.cancel(), the admin or `tasks cancel`
            return {"video_id": video_id, "cancelled_at_step": step}
        time.sleep(0.05)
        # Shown as a bar in the admin and read by callers as result.progress.
        context.report_progress(step, steps, f"encoding chunk {step}/{steps}")
    if context.attempt <= fail_first:
        # Explicit retry, as with Celery's self.retry: exponential backoff between attempts.
        raise context.retry(countdown=0.5 * 2 ** (context.attempt - 1),
                            exc=FlakyStorageError("upload to object store timed out"))
    return {"video_id": video_id, "renditions": ["480p", "720p", "1080p"],
            "attempts": context.attempt}


@task(atomic=True, takes_context=True, max_attempts=3, backoff=0.2)
def credit_account(context, account: str, amount: int, fail_first: int = 1) -> int:
    """Exactly-once effects (docs/reliability.md): writes a ledger entry, then, on its
    first ``fail_first`` attempts, fails after writing. Atomic, so a failed attempt's
    entry is rolled back with it and the entry commits with the job's outcome: returns
    how many entries the job made (1, however many attempts it took)."""
    from .models import LedgerEntry

    LedgerEntry.objects.create(account=account, amount=amount, job_id=context.job_id)
    if context.attempt <= fail_first:
        raise FlakyStorageError("the bank's confirmation timed out after the entry was written")
    return LedgerEntry.objects.filter(job_id=context.job_id).count()


@task()
def add(x: float, y: float) -> float:
    return x + y


@task()
def mul(x: float, y: float) -> float:
    return x * y


@task()
def tsum(values: list[float]) -> float:
    """A chord's callback: the sum of its members' results."""
    return sum(values)


@task(max_attempts=3, backoff=0.2)
def sometimes_fails(probability: float = 0.5) -> str:
    if random.random() < probability:
        raise RuntimeError("bad luck")
    return "lucky"


@task(max_attempts=3, retry_on=(ConnectionError,))
def import_feed(url: str) -> int:
    """Import a supplier's product feed. This supplier's feed is broken: a ValueError is
    not in ``retry_on``, so the job fails at once, with its traceback in the admin."""
    raise ValueError(f"{url} is not a product feed: expected JSON, got an HTML error page")


@task(takes_context=True)
def build_report(context, month: str, sections: int = 30, seconds: float = 6.0) -> str:
    """A long job that reports its progress (the admin's progress bar, result.progress)."""
    for section in range(1, sections + 1):
        if context.is_cancelled():
            return f"report for {month} cancelled at section {section}"
        time.sleep(seconds / sections)
        context.report_progress(section, sections, f"section {section}/{sections}")
    return f"report for {month}: {sections} sections"


@task()
def clear_expired_sessions() -> int:
    """Delete expired sessions (what ``manage.py clearsessions`` does), every midnight."""
    from django.contrib.sessions.models import Session
    from django.utils import timezone

    deleted, _ = Session.objects.filter(expire_date__lt=timezone.now()).delete()
    return deleted
