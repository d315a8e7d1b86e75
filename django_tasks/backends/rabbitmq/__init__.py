"""The RabbitMQ broker: job ids travel through RabbitMQ, job rows stay in the database.

``TASKS = {"default": {"BACKEND": "django_tasks.backends.rabbitmq.RabbitMQBackend",
"OPTIONS": {"URL": "amqp://guest:guest@127.0.0.1:5672/%2F"}}}``. The broker is in
:mod:`.broker` (how a job travels, the topology, reconciling), the connections and the
publisher (confirms read as they come) in :mod:`.connection`, a worker's consumer in
:mod:`.consumer`.
"""

from .broker import RabbitMQBackend, RabbitMQBroker

__all__ = ["RabbitMQBackend", "RabbitMQBroker"]
