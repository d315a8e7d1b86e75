"""A table of the test app, written by tests/atomic_tasks.py: one row per run of a task
that writes, so a test counts the writes that committed (no unique constraint: a
duplicate run shows as two rows)."""

from django.db import models


class Effect(models.Model):
    job_id = models.CharField(max_length=64, db_index=True)
    pid = models.IntegerField(default=0)

    class Meta:
        app_label = "tests"
