"""Tasks for tests/test_testing.py and the samples of docs/testing.md (tests.testing_tasks.*)."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.core.mail import send_mail
from django.db import transaction
from django.tasks import task


@task(queue_name="emails")
def send_welcome_email(address: str) -> str:
    send_mail("Welcome", "Glad to have you.", "hello@example.com", [address])
    return address


@task()
def welcome_all(addresses: list[str]) -> int:
    for address in addresses:
        send_welcome_email.enqueue(address)
    return len(addresses)


@task(takes_context=True, max_attempts=3, retry_on=(ConnectionError,), backoff=60,
      jitter=False)
def sync_account(context, account_id: int) -> str:
    """Fails twice, then succeeds: retried after 60 s, then after 120 s."""
    if context.attempt < 3:
        raise ConnectionError("CRM unreachable")
    return f"synced {account_id}"


@task()
def poll_forever(n: int) -> int:
    """Enqueues its own next run every time: a queue that never empties."""
    poll_forever.enqueue(n + 1)
    return n


@task(priority=10)
def urgent(n: int) -> int:
    return n


@task()
def create_user(username: str) -> int:
    return User.objects.create(username=username).pk


@task()
def create_user_atomic(username: str) -> int:
    with transaction.atomic():
        return User.objects.create(username=username).pk


@task(max_attempts=3)
def interrupts() -> None:
    raise KeyboardInterrupt("raised by the task")
