"""Observability (#22): the /metrics view's protection, counters that never go down,
OpenTelemetry spans from the enqueue to each attempt (in-memory exporter), JSON logs.
The scrape after a real worker ran jobs is in test_statistics.py (one worker run for
both)."""

import io
import json
import logging
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from django_tasks import chain
from django_tasks.jobs.enqueued import COUNTER
from django_tasks.jobs.tally import Tally
from django_tasks.models import Job, Statistic, Total
from django_tasks.observe.logs import JsonFormatter
from django_tasks.testing import drain
from tests import tasks
from tests.test_statistics import scrape

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_metrics_view_wants_the_token_or_a_staff_user(client, settings):
    assert client.get("/tasks/metrics").status_code == 403
    staff = User.objects.create_user("op", password="pw", is_staff=True)
    client.force_login(staff)
    assert client.get("/tasks/metrics").status_code == 200
    settings.TASKS_METRICS_TOKEN = "t0ken"
    assert client.get("/tasks/metrics").status_code == 401  # staff is not enough now
    wrong = client.get("/tasks/metrics", HTTP_AUTHORIZATION="Bearer nope")
    assert wrong.status_code == 401 and wrong["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/tasks/metrics", HTTP_AUTHORIZATION="Bearer t0ken").status_code == 200


@pytest.mark.parametrize("token", [None, "t0ken"])
def test_the_workers_metrics_port_wants_the_token_when_one_is_set(settings, token):
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    from django_tasks.observe.prometheus import serve

    settings.TASKS_METRICS_TOKEN = token
    tasks.add.enqueue(1, 2)
    COUNTER.flush()
    server = serve(0, "127.0.0.1")  # any free port
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    try:
        if token:
            with pytest.raises(HTTPError) as refused:
                urlopen(url, timeout=10)
            assert refused.value.code == 401
            assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
            with pytest.raises(HTTPError):
                urlopen(Request(url, headers={"Authorization": "Bearer nope"}), timeout=10)
        request = Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
        body = urlopen(request, timeout=10).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    assert 'django_tasks_enqueued_total{' in body and 'task="tests.tasks.add"' in body


def test_counters_never_go_down_when_minutes_are_rolled_up_or_pruned(client, settings):
    settings.TASKS_METRICS_TOKEN = "t"
    COUNTER.take()
    store = tasks.add.get_backend().store
    counts = Tally()
    # Not on an hour's start: a roll-up leaves a period's first minute where it is, so
    # an old minute at :00 (this test run at :07) had nothing to roll up.
    old = (timezone.now() - timedelta(days=3)).replace(minute=7)
    counts.add(old, [("default", "tests.tasks.add", "SUCCESSFUL", 0.02, 0.5)] * 3)
    counts.add(timezone.now(), [("default", "tests.tasks.add", "SUCCESSFUL", 0.02, 0.5)])
    store.add_statistics(counts)
    tasks.add.enqueue(1, 1)

    def value(name):
        return scrape(client.get("/tasks/metrics", HTTP_AUTHORIZATION="Bearer t"))[
            (name, (("backend", "default"), ("queue", "default"), ("task", "tests.tasks.add")))]

    before = (value("django_tasks_succeeded_total"), value("django_tasks_run_seconds_count"),
              value("django_tasks_enqueued_total"))
    assert before == (4, 4, 1)
    assert store.roll_up_statistics(timezone.now() - timedelta(hours=2)) == 1
    assert store.prune_statistics(timezone.now() - timedelta(days=1)) == 1
    assert Statistic.objects.count() == 1  # the old minute is gone from the charts ...
    after = (value("django_tasks_succeeded_total"), value("django_tasks_run_seconds_count"),
             value("django_tasks_enqueued_total"))
    assert after == before  # ... not from the counters
    assert Total.objects.get(outcome="SUCCESSFUL").n == 4


@pytest.fixture(scope="module")
def spans():
    """An SDK tracer provider exporting to memory (a process has one provider: set once)."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    yield exporter


def test_a_jobs_attempts_are_consumer_spans_under_its_producer_span(spans):
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind

    spans.clear()
    with trace.get_tracer("tests").start_as_current_span("request") as request:
        result = tasks.retries_then_succeeds.enqueue()
        steps = chain(tasks.add.s(1, 2), tasks.mul.s(10)).delay()
    trace_id = request.get_span_context().trace_id
    job = Job.objects.get(pk=result.id)
    assert job.headers["traceparent"].split("-")[1] == f"{trace_id:032x}"
    assert drain() == 5
    assert steps.get() == 30
    done = spans.get_finished_spans()
    assert {s.context.trace_id for s in done} == {trace_id}  # one trace, every step
    producers = {s.attributes["messaging.message.id"]: s for s in done
                 if s.kind is SpanKind.PRODUCER}
    assert len(producers) == 3
    assert all(p.parent.span_id == request.get_span_context().span_id
               for p in producers.values())
    consumers = [s for s in done if s.kind is SpanKind.CONSUMER]
    attempts = [s for s in consumers if s.attributes["messaging.message.id"] == result.id]
    # three attempts (two retries): three spans, each a child of the one producer span
    assert [s.attributes["django_tasks.attempt"] for s in attempts] == [1, 2, 3]
    assert [s.attributes["django_tasks.outcome"] for s in attempts] == [
        "READY", "READY", "SUCCESSFUL"]
    assert {s.parent.span_id for s in attempts} == {producers[result.id].context.span_id}
    assert attempts[0].status.status_code.name == "ERROR"
    first = attempts[0].attributes
    assert (first["messaging.system"], first["messaging.operation"],
            first["messaging.destination.name"], first["django_tasks.task"]) == (
        "django_tasks", "process", "default", "tests.tasks.retries_then_succeeds")
    # the chain's steps: each consumer span under its own producer span, in the trace
    # of the code that started the chain
    for step in consumers:
        assert step.parent.span_id == producers[
            step.attributes["messaging.message.id"]].context.span_id


def test_tracing_off_stores_no_headers(spans, settings):
    settings.TASKS_TRACING = False
    spans.clear()
    from opentelemetry import trace

    with trace.get_tracer("tests").start_as_current_span("request"):
        result = tasks.add.enqueue(1, 2)
    assert Job.objects.get(pk=result.id).headers is None
    assert drain() == 1
    assert [s.name for s in spans.get_finished_spans()] == ["request"]


def test_json_log_lines_carry_the_jobs_fields():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("django_tasks.worker")
    logger.addHandler(handler)
    try:
        result = tasks.always_fails.enqueue()
        drain()
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [line for line in lines if line.get("job_id") == result.id]
    assert [line.get("outcome") for line in mine if "outcome" in line] == [
        "RETRY", "RETRY", "FAILED"]
    last = mine[-1]
    assert (last["task"], last["queue"], last["attempt"], last["level"]) == (
        "tests.tasks.always_fails", "default", 3, "ERROR")
    assert last["worker_id"] and isinstance(last["duration"], float)


def test_your_own_headers_travel_with_the_job(settings):
    from django_tasks.observe.headers import current_headers, job_headers

    settings.TASKS_TRACING = False
    with job_headers(tenant="acme"), job_headers(request_id=7):
        result = tasks.returns_header.enqueue("tenant")
    plain = tasks.returns_header.enqueue("tenant")
    assert Job.objects.get(pk=result.id).headers == {"tenant": "acme", "request_id": 7}
    assert Job.objects.get(pk=plain.id).headers is None
    assert drain() == 2
    result.refresh()
    plain.refresh()
    assert (result.return_value, plain.return_value) == ("acme", None)
    assert current_headers() == {}
