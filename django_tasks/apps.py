from django.apps import AppConfig


class DjangoTasksConfig(AppConfig):
    name = "django_tasks"
    verbose_name = "Tasks"
    default_auto_field = "django.db.models.BigAutoField"
