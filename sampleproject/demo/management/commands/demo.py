"""``manage.py demo``: create an admin user, enqueue sample jobs and run them."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import connections, transaction
from django.tasks import TaskResultStatus

from django_tasks import chain, chord, group
from django_tasks.beat.scheduler import Scheduler
from django_tasks.models import Schedule
from django_tasks.worker import TaskWorker
from django_tasks.worker.supervisor import configure_logging
from sampleproject.demo.tasks import (
    add,
    build_report,
    credit_account,
    encode_video,
    import_feed,
    mul,
    send_welcome_email,
    tsum,
)

#: The TASKS alias of the demo's jobs (settings.py): the same table, queues and routes as
#: "default", but a worker of this alias claims nothing else, so a database with older
#: jobs (a backlog, one that never ends) neither runs them nor waits for them.
DEMO = "demo"


#: The demo's periodic schedule (settings.py, TASKS["demo"]["OPTIONS"]["SCHEDULE"]).
DEMO_SCHEDULE = "demo-add-every-10-seconds"


class Command(BaseCommand):
    help = ("Create an admin user, enqueue the sample jobs (one fails, one is retried, one "
            "reports progress for a few seconds, an atomic one keeps one write however "
            "often it runs, one comes from a periodic schedule) and run a worker until "
            "they finish.")

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--timeout", type=float, default=60.0,
                            help="Give up waiting after this many seconds (default: 60).")
        parser.add_argument("--concurrency", type=int, default=2)

    def handle(self, *args: Any, **options: Any) -> None:
        configure_logging("INFO")
        self._admin_user()
        demo_add, demo_mul = add.using(backend=DEMO), mul.using(backend=DEMO)
        with transaction.atomic():
            results = [
                send_welcome_email.using(backend=DEMO).enqueue(1, "ada@example.com"),
                encode_video.using(backend=DEMO).enqueue(42),
                add.using(backend=DEMO).enqueue(2, 3),
                mul.using(backend=DEMO).delay(6, 7),
                add.using(backend=DEMO).apply_async(args=[10, 20], countdown=1),
                # Fails at once (a ValueError is not in its retry_on): the failure path.
                import_feed.using(backend=DEMO).enqueue("https://supplier.example/feed"),
                # A few seconds of work with a progress bar in the admin.
                build_report.using(backend=DEMO).enqueue("2026-11"),
                # Workflows, Celery's tutorial examples: (2 + 2) * 4, and the sum of
                # ten additions run in parallel (a chord's callback runs once, after all).
                chain(demo_add.s(2, 2), demo_mul.s(4)).delay(),
                chord(group(demo_add.s(i, i) for i in range(10)),
                      tsum.using(backend=DEMO).s()).delay(),
                # Atomic: fails once after writing; exactly one ledger entry is kept.
                credit_account.using(backend=DEMO).enqueue("ada", 10),
            ]
        results.append(self._run_schedule_now())
        self.stdout.write(f"Enqueued {len(results)} jobs; starting a worker.\n")
        # grace=0: when told to stop, a job still running is interrupted, not waited for.
        # beat=True: the worker also fires the demo's schedule while it runs.
        worker = TaskWorker(backend=DEMO, concurrency=options["concurrency"], pool="prefork",
                            grace=0, beat=True)
        deadline = time.monotonic() + options["timeout"]
        watcher = threading.Thread(target=self._stop_when_done,
                                   args=(worker, results, deadline), daemon=True)
        watcher.start()
        worker.run()
        watcher.join()
        for r in results:
            r.refresh()
        if not all(r.is_finished for r in results):
            self.stdout.write(f"\nGave up after {options['timeout']:g}s.")
        self.stdout.write(f"\n{'task':<40} {'status':<11} {'attempts':<8} result")
        for r in results:
            value = r.return_value if r.status == TaskResultStatus.SUCCESSFUL else (
                r.errors[-1].message if r.errors else "-")
            name = r.task.module_path.rsplit(".", 1)[-1]
            self.stdout.write(f"{name:<40} {r.status:<11} {r.attempts:<8} {value}")
        self.stdout.write(
            "\nThe control room: .venv/bin/python manage.py runserver, then open "
            "http://127.0.0.1:8000/admin/django_tasks/dashboard/\n"
            "From the terminal: .venv/bin/python manage.py tasks status\n"
            "Run a worker yourself: .venv/bin/python manage.py worker\n"
        )

    @staticmethod
    def _stop_when_done(worker: TaskWorker, results: list[Any], deadline: float) -> None:
        """Stop ``worker`` once the demo's jobs are finished (retries and countdowns
        included), or at ``deadline``."""
        try:
            while time.monotonic() < deadline:
                time.sleep(0.2)
                for r in results:
                    r.refresh()
                if all(r.is_finished for r in results):
                    break
        finally:
            connections.close_all()
            worker.stop()

    @staticmethod
    def _run_schedule_now() -> Any:
        """The demo's periodic schedule, synced from the settings and fired once now (as
        the admin's "Run selected schedules now" does): its job's result."""
        scheduler = Scheduler(DEMO)
        scheduler.sync()
        schedule = Schedule.objects.using(scheduler.database).get(backend=DEMO,
                                                                   name=DEMO_SCHEDULE)
        fired = scheduler.run_now(schedule)
        if fired.error:
            raise RuntimeError(f"{DEMO_SCHEDULE}: {fired.error}")
        return add.using(backend=DEMO).get_result(fired.job_id)

    def _admin_user(self) -> None:
        User = get_user_model()
        if User.objects.filter(username="admin").exists():
            self.stdout.write("Admin user: admin (already exists; password unchanged)\n")
            return
        password = secrets.token_urlsafe(9)
        User.objects.create_superuser("admin", "admin@example.com", password)
        self.stdout.write(f"Admin user created: username 'admin', password '{password}'\n")
