import logging

from django.apps import AppConfig


class DjangoTasksConfig(AppConfig):
    name = "django_tasks"
    verbose_name = "Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .jobs.policy import LoggedByWorker
        from .jobs.store import register_outcome_hook
        from .workflows.advance import advance

        # Workflows move forward in the transaction of each outcome write.
        register_outcome_hook(advance, linked_only=True)

        django_logger = logging.getLogger("django.tasks")
        if not any(isinstance(f, LoggedByWorker) for f in django_logger.filters):
            django_logger.addFilter(LoggedByWorker())
