"""The Redis broker: job ids travel through Redis, job rows stay in the database.

``TASKS = {"default": {"BACKEND": "django_tasks.backends.redis.RedisBackend",
"OPTIONS": {"URL": "redis://127.0.0.1:6379/0"}}}``. The broker is in :mod:`.broker`
(its key schema at the top), the Lua scripts it runs in :mod:`.scripts`, and the
pipelined publisher producers use in :mod:`.publisher`.
"""

from .broker import RedisBackend, RedisBroker

__all__ = ["RedisBackend", "RedisBroker"]
