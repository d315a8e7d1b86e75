import logging

from django.apps import AppConfig


class DjangoTasksConfig(AppConfig):
    name = "django_tasks"
    verbose_name = "Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from .canvas import advance
        from .outcomes import LoggedByWorker
        from .store import register_outcome_hook

        # Workflows move forward in the transaction of each outcome write.
        register_outcome_hook(advance, linked_only=True)

        django_logger = logging.getLogger("django.tasks")
        if not any(isinstance(f, LoggedByWorker) for f in django_logger.filters):
            django_logger.addFilter(LoggedByWorker())
