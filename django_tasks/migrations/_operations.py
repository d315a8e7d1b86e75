"""Migration operations of our own (a module whose name starts with "_" is not a
migration to Django's loader)."""

from __future__ import annotations

import inspect
from typing import Any

from django.db import migrations


def _builds_concurrently(schema_editor: Any) -> bool:
    """Whether this database's schema editor builds indexes concurrently (PostgreSQL's
    ``add_index(..., concurrently=True)``); asked of the editor, not of a vendor name."""
    return "concurrently" in inspect.signature(schema_editor.add_index).parameters


class AddIndexConcurrently(migrations.AddIndex):
    """``AddIndex`` that on PostgreSQL builds the index ``CONCURRENTLY``: a busy job table
    keeps taking inserts and updates while it is built, instead of being locked against
    writes (every enqueue and claim) for the whole build. Other databases get a plain
    ``CREATE INDEX``. The migration using it must be ``atomic = False``. Unlike
    ``django.contrib.postgres.operations.AddIndexConcurrently`` it runs on SQLite too
    and needs no ``django.contrib.postgres``.

    If a concurrent build fails, PostgreSQL leaves an INVALID index of that name: drop it
    (``DROP INDEX CONCURRENTLY name``) and migrate again."""

    def describe(self) -> str:
        return super().describe() + " (concurrently on PostgreSQL)"

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any,
                          to_state: Any) -> None:
        if not _builds_concurrently(schema_editor):
            return super().database_forwards(app_label, schema_editor, from_state, to_state)
        if schema_editor.connection.in_atomic_block:
            raise ValueError(f"{type(self).__name__} builds {self.index.name} concurrently, "
                             f"which PostgreSQL refuses in a transaction: set atomic = False "
                             f"on the migration.")
        model = to_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.add_index(model, self.index, concurrently=True)

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any,
                           to_state: Any) -> None:
        if not _builds_concurrently(schema_editor):
            return super().database_backwards(app_label, schema_editor, from_state, to_state)
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index, concurrently=True)
