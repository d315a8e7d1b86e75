from django.db import transaction
from django.http import HttpRequest, JsonResponse

from .tasks import send_welcome_email


def signup(request: HttpRequest) -> JsonResponse:
    """Enqueue inside the request's transaction: the email job exists only if the signup commits."""
    with transaction.atomic():
        user_id = 123  # pretend we created a user here
        result = send_welcome_email.enqueue(user_id, "new-user@example.com")
    return JsonResponse({"job": result.id, "status": result.status})
