"""Tasks written Celery's way, ported with only the import changed (tests.celery_tasks.*).

Each was ``from celery import shared_task as task``; the bodies are Celery's idioms.
"""

from django.tasks import task

from django_tasks import MaxRetriesExceededError


@task(bind=True, max_retries=3, default_retry_delay=30)
def fetch_feed(self, url, fail_times):
    try:
        if self.request.retries < fail_times:
            raise ConnectionError(f"{url} down at retry {self.request.retries}")
    except ConnectionError as exc:
        raise self.retry(exc=exc)  # noqa: B904 (Celery's idiom, verbatim)
    return {"url": url, "retries": self.request.retries, "id": self.request.id,
            "args": self.request.args, "kwargs": self.request.kwargs,
            "task": self.request.task, "hostname": self.request.hostname,
            "max_retries": self.max_retries}


@task(bind=True, max_retries=2)
def bare_retry(self):
    if self.request.retries < 2:
        self.retry(countdown=5)  # no raise: Celery's retry() raises by itself
    return self.request.retries


@task(bind=True, max_retries=2, default_retry_delay=1)
def gives_up(self):
    self.retry(exc=LookupError(f"still missing at retry {self.request.retries}"))


@task(bind=True)
def default_retry(self):
    raise self.retry()


@task(bind=True, max_retries=3)
def raises_unlisted(self):
    raise ValueError("no autoretry_for: not retried")


@task(autoretry_for=(ConnectionError,), retry_backoff=2, retry_backoff_max=5,
      retry_jitter=False, max_retries=3)
def flaky_backoff():
    raise ConnectionResetError("reset")


@task(autoretry_for=(ConnectionError,), max_retries=2, default_retry_delay=7)
def flaky_fixed():
    raise ConnectionError("refused")


@task(autoretry_for=(ConnectionError,), retry_backoff=True, retry_jitter=False)
def wrong_error():
    raise ValueError("not listed in autoretry_for")


@task(bind=True, acks_late=True)
def acks_late_task(self, x):
    return [self.request.task, x]


@task(acks_late=True)
def acks_late_plain(x):
    return x * 2


@task(autoretry_for=(ConnectionError,), retry_kwargs={"max_retries": 1, "countdown": 4})
def autoretry_with_kwargs():
    raise ConnectionRefusedError("refused")


@task(autoretry_for=(OSError,), dont_autoretry_for=(FileNotFoundError,), max_retries=2,
      default_retry_delay=3)
def skips_some_errors(missing):
    if missing:
        raise FileNotFoundError("no such file")
    raise ConnectionError("refused")


@task(reject_on_worker_lost=True, max_retries=1, default_retry_delay=2)
def rerun_when_lost():
    return "ran"


@task(bind=True, max_retries=1, default_retry_delay=1)
def catches_max_retries(self, item):
    try:
        self.retry()
    except MaxRetriesExceededError as exc:
        return {"gave_up_at": self.request.retries, "args": exc.task_args,
                "error": str(exc)}


@task(bind=True)
def reports_state(self, total):
    for i in range(1, total + 1):
        self.update_state(state="PROGRESS", meta={"current": i, "total": total})
    return total


@task(bind=True, max_retries=1)
def retries_without_throwing(self, then):
    if self.request.retries == 0:
        returned = self.retry(countdown=3, throw=False)
        if then == "raise":
            raise KeyError(f"after {type(returned).__name__}")
        return "dropped: the retry asked for runs instead"
    if then == "again":
        self.retry(countdown=3, throw=False)  # no retry left: raises
    return "second run"


# Ours (no Celery option), for contrast: context.retry() keeps its own rule.
@task(takes_context=True, max_attempts=2)
def ours_retries_without_throwing(context):
    returned = context.retry(countdown=3, throw=False)
    return type(returned).__name__
