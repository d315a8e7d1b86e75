"""``manage.py demo``: create an admin user, enqueue sample jobs and run them."""

from __future__ import annotations

import secrets
import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.tasks import TaskResultStatus

from django_tasks.worker import Worker
from django_tasks.worker.supervisor import configure_logging
from sampleproject.demo.tasks import add, encode_video, mul, send_welcome_email, sometimes_fails


class Command(BaseCommand):
    help = "Create an admin user, enqueue the sample jobs and run a worker until they finish."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--timeout", type=float, default=60.0,
                            help="Give up waiting after this many seconds (default: 60).")
        parser.add_argument("--concurrency", type=int, default=2)

    def handle(self, *args: Any, **options: Any) -> None:
        configure_logging("INFO")
        self._admin_user()
        with transaction.atomic():
            results = [
                send_welcome_email.enqueue(1, "ada@example.com"),
                encode_video.enqueue(42),
                add.enqueue(2, 3),
                mul.delay(6, 7),
                add.apply_async(args=[10, 20], countdown=1),
                sometimes_fails.enqueue(0.3),
            ]
        self.stdout.write(f"Enqueued {len(results)} jobs; starting a worker.\n")
        deadline = time.monotonic() + options["timeout"]
        while time.monotonic() < deadline:
            # burst: run what is ready now, then return
            Worker(concurrency=options["concurrency"], pool="prefork", burst=True).run()
            for r in results:
                r.refresh()
            if all(r.is_finished for r in results):
                break
            time.sleep(0.2)  # retries and countdowns become ready shortly
        self.stdout.write(f"\n{'task':<40} {'status':<11} {'attempts':<8} result")
        for r in results:
            value = r.return_value if r.status == TaskResultStatus.SUCCESSFUL else (
                r.errors[-1].message if r.errors else "-")
            name = r.task.module_path.rsplit(".", 1)[-1]
            self.stdout.write(f"{name:<40} {r.status:<11} {r.attempts:<8} {value}")
        self.stdout.write(
            "\nSee them in the admin: .venv/bin/python manage.py runserver, then "
            "http://127.0.0.1:8000/admin/django_tasks/job/\n"
            "Run a worker yourself: .venv/bin/python manage.py worker\n"
        )

    def _admin_user(self) -> None:
        User = get_user_model()
        if User.objects.filter(username="admin").exists():
            self.stdout.write("Admin user: admin (already exists; password unchanged)\n")
            return
        password = secrets.token_urlsafe(9)
        User.objects.create_superuser("admin", "admin@example.com", password)
        self.stdout.write(f"Admin user created: username 'admin', password '{password}'\n")
