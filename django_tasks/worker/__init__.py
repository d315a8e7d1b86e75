"""The worker: ``loop.Worker`` claims and completes; ``pool`` runs; ``execute`` calls the task."""

from .loop import Worker

__all__ = ["Worker"]
