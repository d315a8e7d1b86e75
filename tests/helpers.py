"""Helpers for tests that run real `manage.py worker` processes."""

import os
import subprocess
import sys
import time
from pathlib import Path

from django.db import connection

ROOT = Path(__file__).resolve().parent.parent


def start_worker(*args, env=None):
    """A `python -m django worker` subprocess on the test database, in its own session
    (so ``os.killpg(proc.pid, ...)`` reaches the supervisor and its children)."""
    return start_command("worker", *args, env=env)


def start_command(command, *args, env=None):
    """A `python -m django <command>` subprocess on the test database, as start_worker."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings",
           "DJANGO_TASKS_TEST_DB_NAME": connection.settings_dict["NAME"], **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "django", command, *args], cwd=ROOT, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )


def wait_for(predicate, timeout=20.0, interval=0.05):
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; returns its truth."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
