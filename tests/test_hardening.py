"""Bad input and operator mistakes get a clear answer, and nothing is lost (issue 8)."""

import sys
import textwrap
from dataclasses import replace

import pytest
from django.tasks.exceptions import InvalidTask
from django.utils import timezone

from django_tasks import ArgumentNotSerializable, InvalidArguments, PayloadTooLarge
from django_tasks.models import Job
from django_tasks.serialization import MAX_DEPTH, check_signature
from django_tasks.worker.pools import make_pool
from tests import tasks
from tests.tasks import nested
from tests.test_backend import drain
from tests.test_pool import make_message, wait_outcomes

NOT_REGISTERED = "django_tasks.exceptions.TaskNotRegistered"
db = pytest.mark.django_db(transaction=True)


def with_task_modules(settings, *modules):
    settings.TASKS = {
        alias: {**params, "OPTIONS": {**params.get("OPTIONS", {}),
                                      "TASK_MODULES": ["tests", *modules]}}
        for alias, params in settings.TASKS.items()
    }


def write_package(root, name, modules):
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("")
    for module, source in modules.items():
        (package / f"{module}.py").write_text(textwrap.dedent(source))


def run(pool, message):
    pool.submit(message)
    (outcome,) = pool.collect() or wait_outcomes(pool)  # the inline pool ran it already
    assert outcome.id == message.id
    return outcome


# -- which modules a worker imports ----------------------------------------------------------


@pytest.fixture
def broken_package(tmp_path, monkeypatch, settings):
    """``brokenpkg``, listed in TASK_MODULES: one module raises at import, one does not parse."""
    write_package(tmp_path, "brokenpkg", {
        "raises": """
            from django.tasks import task

            raise RuntimeError("boom at import")

            @task()
            def job():
                return "never"
        """,
        "syntax": "from django.tasks import task\n\n@task()\ndef job(:\n    return 1\n",
        "needs": "import nonexistent_lib  # noqa\n",
    })
    monkeypatch.syspath_prepend(str(tmp_path))
    with_task_modules(settings, "brokenpkg")
    yield
    for name in ("brokenpkg", "brokenpkg.raises", "brokenpkg.syntax", "brokenpkg.needs"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("pool_name", ["prefork", "threads", "inline"])
def test_a_task_module_that_fails_to_import_fails_its_job_not_the_process(
    broken_package, pool_name
):
    pool = make_pool(pool_name, 1, "w1")
    pool.start()
    try:
        pid = run(pool, make_message("getpid")).return_value
        raises = run(pool, replace(make_message("x", max_attempts=3),
                                   task_path="brokenpkg.raises.job"))
        syntax = run(pool, replace(make_message("x", max_attempts=3),
                                   task_path="brokenpkg.syntax.job"))
        # The same child (prefork) ran all three: the import errors killed nothing.
        assert run(pool, make_message("getpid")).return_value == pid
    finally:
        pool.stop(at_once=True)
    for outcome in (raises, syntax):
        assert outcome.status == "FAILED"  # not retried: the task cannot be resolved
        assert outcome.error["exception_class_path"] == NOT_REGISTERED
    assert raises.error["message"] == (
        "'brokenpkg.raises.job' cannot be imported: importing 'brokenpkg.raises' raised "
        "RuntimeError: boom at import (its traceback follows)."
    )
    assert 'raise RuntimeError("boom at import")' in raises.error["traceback"]
    assert "SyntaxError" in syntax.error["message"]
    assert "syntax.py" in syntax.error["traceback"]


def test_a_missing_module_is_told_apart_from_a_module_whose_import_fails(broken_package):
    from django_tasks.exceptions import TaskNotRegistered
    from django_tasks.jobs.policy import resolve_task

    with pytest.raises(TaskNotRegistered, match=(
        r"^'brokenpkg\.gone\.job' cannot be imported: no module 'brokenpkg\.gone'\. Was the "
        r"task renamed or removed in a deploy\?$"
    )):
        resolve_task("brokenpkg.gone.job")
    with pytest.raises(TaskNotRegistered, match=(
        r"^'brokenpkg\.needs\.job' cannot be imported: importing 'brokenpkg\.needs' raised "
        r"ModuleNotFoundError: No module named 'nonexistent_lib' \(its traceback follows\)\.$"
    )):
        resolve_task("brokenpkg.needs.job")


@db
def test_a_job_naming_a_module_outside_the_installed_apps_never_imports_it(
    tmp_path, monkeypatch
):
    marker = tmp_path / "imported"
    evil = f"open({str(marker)!r}, 'w').write('ran')\ndef anything(*args):\n    pass\n"
    (tmp_path / "evil_mod.py").write_text(evil)
    # A name that starts like the allowed package "tests" but is not inside it.
    (tmp_path / "tests_evil.py").write_text(evil)
    monkeypatch.syspath_prepend(str(tmp_path))
    now = timezone.now()
    jobs = [Job.objects.create(task_path=path, args=["rm -rf /"], enqueued_at=now,
                               available_at=now)
            for path in ("evil_mod.anything", "tests_evil.anything")]
    drain()
    for job in jobs:
        job.refresh_from_db()
        assert job.status == "FAILED"
        assert job.errors[0]["exception_class_path"] == NOT_REGISTERED
        assert "is not in an installed app, so it was not imported" in job.errors[0]["message"]
    assert not marker.exists()
    assert "evil_mod" not in sys.modules and "tests_evil" not in sys.modules


@db
def test_a_task_defined_outside_the_installed_apps_is_refused_at_enqueue(
    tmp_path, monkeypatch, settings
):
    write_package(tmp_path, "outside", {"jobs": """
        from django.tasks import task

        @task()
        def double(x):
            return 2 * x
    """})
    monkeypatch.syspath_prepend(str(tmp_path))
    from outside.jobs import double

    try:
        with pytest.raises(InvalidTask, match=(
            r"outside\.jobs\.double is not in an installed app, so workers would not import "
            r"it: add its app to INSTALLED_APPS, or 'outside\.jobs' to "
            r"TASKS\['default'\]\['OPTIONS'\]\['TASK_MODULES'\]\. Nothing was enqueued\."
        )):
            double.enqueue(2)
        assert not Job.objects.exists()

        with_task_modules(settings, "outside")  # a package: its modules are allowed
        result = double.enqueue(2)
        drain()
        result.refresh()
        assert result.return_value == 4
    finally:
        for name in ("outside", "outside.jobs"):
            sys.modules.pop(name, None)


def test_task_modules_must_be_dotted_names():
    from django_tasks.conf import BackendOptions

    assert BackendOptions.parse({"TASK_MODULES": ["a.b", "c"]}).task_modules == ("a.b", "c")
    for bad in ("myproject.tasks", [".rel"], [3]):
        assert "TASK_MODULES" in BackendOptions.parse({"TASK_MODULES": bad}).problems[0]


@db
def test_a_task_that_exists_still_runs():
    result = tasks.add.enqueue(1, 2)
    drain()
    result.refresh()
    assert result.return_value == 3


# -- arguments checked at enqueue ------------------------------------------------------------


@db
@pytest.mark.parametrize(("call", "message"), [
    (lambda: tasks.add.enqueue(1),
     "tests.tasks.add(x, y): missing a required argument: 'y'. Nothing was enqueued."),
    (lambda: tasks.add.enqueue(1, 2, z=3),
     "tests.tasks.add(x, y): got an unexpected keyword argument 'z'. Nothing was enqueued."),
    (lambda: tasks.sleep_then_return.enqueue(1, 2, 3),
     "tests.tasks.sleep_then_return(seconds, marker=None): too many positional arguments. "
     "Nothing was enqueued."),
    # takes_context: the context is not the caller's to pass
    (lambda: tasks.retries_then_succeeds.enqueue(1),
     "tests.tasks.retries_then_succeeds(): too many positional arguments. "
     "Nothing was enqueued."),
    (lambda: tasks.add.apply_async(args=[1], kwargs={"x": 2}),
     "tests.tasks.add(x, y): multiple values for argument 'x'. Nothing was enqueued."),
])
def test_arguments_that_do_not_fit_the_signature_are_refused_showing_it(call, message):
    with pytest.raises(InvalidArguments) as e:
        call()
    assert str(e.value) == message
    assert isinstance(e.value, TypeError)  # as calling the function would raise
    assert not Job.objects.exists()


def test_annotations_are_left_out_of_the_signature_shown():
    def typed(context, user_id: int, email: str = "x") -> str:
        return email

    with pytest.raises(InvalidArguments, match=r"^t\(user_id, email='x'\): missing a required"):
        check_signature(typed, (), {}, task_name="t", takes_context=True)


@db
def test_nesting_is_limited_and_a_value_that_contains_itself_is_refused():
    tasks.returns_text.enqueue(nested(MAX_DEPTH))  # the deepest accepted
    with pytest.raises(ArgumentNotSerializable, match=(
        r"^tests\.tasks\.returns_text: argument 'text' \(position 0\)\[0\]\[0\]\[0\]\[0\]"
        r"\[\.\.\.\]\[0\]\[0\] is nested more than 100 levels deep \(or contains itself\): "
        r"pass a flatter structure\. Nothing was enqueued\.$"
    )):
        tasks.returns_text.enqueue(nested(MAX_DEPTH + 1))
    with pytest.raises(ArgumentNotSerializable, match="nested more than 100 levels"):
        tasks.returns_text.enqueue(nested(1000))  # a RecursionError before
    loop = {}
    loop["self"] = loop
    with pytest.raises(ArgumentNotSerializable, match="or contains itself"):
        tasks.returns_text.enqueue(text=loop)
    assert Job.objects.count() == 1


@db
@pytest.mark.parametrize(("value", "where", "what"), [
    ("a\x00b", "argument 'text' (position 0)",
     "contains a NUL character (\\x00) at position 1, which PostgreSQL cannot store"),
    (["ok", {"k": "\ud800x"}], "argument 'text' (position 0)[1]['k']",
     "contains a lone surrogate ('\\ud800') at position 0, which is not text"),
    ({"bad\x00key": 1}, "argument 'text' (position 0)",
     "has a key 'bad\\x00key' that contains a NUL character"),
    ({"\udcff": 1}, "argument 'text' (position 0)",
     "has a key '\\udcff' that contains a lone surrogate"),
])
def test_text_no_database_can_store_is_refused_at_enqueue(value, where, what):
    with pytest.raises(ArgumentNotSerializable) as e:
        tasks.returns_text.enqueue(value)
    assert str(e.value).startswith(f"tests.tasks.returns_text: {where} {what}")
    assert str(e.value).endswith("Nothing was enqueued.")
    assert not Job.objects.exists()
    tasks.returns_text.enqueue("ünïcode ✓ and \t tabs")  # real text passes


@db
@pytest.mark.parametrize("kind", ["deep", "nul", "surrogate"])
def test_a_return_value_no_database_can_store_fails_the_job_without_retry(kind):
    result = tasks.returns_bad.enqueue(kind)
    ok = tasks.add.enqueue(1, 1)
    drain()
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.attempts, job.max_attempts) == ("FAILED", 1, 3)
    error = job.errors[0]
    assert error["exception_class_path"] == (
        "django_tasks.exceptions.ReturnValueNotSerializable")
    assert error["message"].startswith(
        "tests.tasks.returns_bad returned a value that cannot be stored: return value")
    assert Job.objects.get(pk=ok.id).status == "SUCCESSFUL"


@db
def test_an_error_message_no_database_can_store_is_kept_escaped():
    result = tasks.raises_bad_text.enqueue()
    drain()
    job = Job.objects.get(pk=result.id)
    assert (job.status, job.attempts) == ("FAILED", 2)
    assert [e["message"] for e in job.errors] == ["NUL \\x00 and \\udcff"] * 2
    assert "ValueError: NUL \\x00 and \\udcff" in job.errors[0]["traceback"]


@db
def test_a_huge_payload_is_refused_at_enqueue_naming_the_limit_and_the_largest_argument():
    with pytest.raises(PayloadTooLarge) as e:
        tasks.add.enqueue("x" * (20 * 1024 * 1024), "small")
    assert str(e.value) == (
        "tests.tasks.add: the arguments take 20.0 MiB of JSON, more than "
        "TASKS['default']['OPTIONS']['MAX_PAYLOAD'] (2.0 MiB); the largest is argument 'x' "
        "(position 0) (20.0 MiB). Store large data elsewhere (a file, object storage, a "
        "model) and pass its key. Nothing was enqueued."
    )
    assert not Job.objects.exists()
    tasks.add.enqueue("x" * (1024 * 1024), "y")  # 1 MiB: under the default


@db
def test_max_payload_counts_the_utf8_json_of_args_and_kwargs(settings):
    settings.TASKS = {"default": {**settings.TASKS["default"], "OPTIONS": {
        **settings.TASKS["default"]["OPTIONS"], "MAX_PAYLOAD": 100}}}
    overhead = len('[[],{"x":"","y":""}]')  # 20 bytes around the two strings
    tasks.add.enqueue(x="", y="é" * ((100 - overhead) // 2))  # 2 bytes each: exactly 100
    with pytest.raises(PayloadTooLarge, match=r"take 101 bytes of JSON, more than .* \(100 "
                                              r"bytes\); the largest is argument 'y'"):
        tasks.add.enqueue(x="", y="é" * ((100 - overhead) // 2) + "x")
    settings.TASKS = {"default": {**settings.TASKS["default"], "OPTIONS": {
        **settings.TASKS["default"]["OPTIONS"], "MAX_PAYLOAD": None}}}
    tasks.add.enqueue("x" * (3 * 1024 * 1024), "")  # None: no limit
    assert Job.objects.count() == 2


def test_max_payload_must_be_a_positive_number_of_bytes():
    from django_tasks.conf import BackendOptions

    assert BackendOptions.parse({}).max_payload == 2 * 1024 * 1024
    assert BackendOptions.parse({"MAX_PAYLOAD": None}).max_payload is None
    for bad in (0, -1, 1.5, "2M", True):
        assert "MAX_PAYLOAD" in BackendOptions.parse({"MAX_PAYLOAD": bad}).problems[0]


# -- operators get one line that says what is wrong ------------------------------------------


def manage(capsys, *argv):
    """Run ``manage.py *argv`` as from a terminal; (exit code, stderr)."""
    from django.core.management import ManagementUtility

    with pytest.raises(SystemExit) as e:
        ManagementUtility(["manage.py", *argv]).execute()
    return e.value.code, capsys.readouterr().err


AGE_HELP = ("an age is a number with one of the units s, m, h, d, w (lowercase; no months or "
            "years: 365d), e.g. 90s, 15m, 12h, 7d, 2w.")


@pytest.mark.parametrize(("argv", "code", "error"), [
    (["tasks", "prune", "--older-than", "7y"], 1, f"CommandError: --older-than '7y': {AGE_HELP}"),
    (["tasks", "prune", "--older-than", "7D"], 1, f"CommandError: --older-than '7D': {AGE_HELP}"),
    (["tasks", "prune", "--older-than", "bogus"], 1,
     f"CommandError: --older-than 'bogus': {AGE_HELP}"),
    (["tasks", "prune", "--older-than", "99999999999999d"], 1,
     "CommandError: --older-than '99999999999999d' is longer than the calendar goes back (at "
     "most 999,999,999d)."),
    (["tasks", "prune", "--older-than", "999999d"], 1,
     "CommandError: --older-than '999999d' reaches back before year 1."),
    (["tasks", "status", "--recent", "bogus"], 1, f"CommandError: --recent 'bogus': {AGE_HELP}"),
    (["tasks", "prune", "--older-than", "7d", "--batch-size", "0"], 2,
     "manage.py tasks prune: error: argument --batch-size: must be a whole number >= 1; got "
     "'0' (see manage.py tasks prune --help)"),
    (["tasks"], 2, "manage.py tasks: error: the following arguments are required: ACTION "
                   "(see manage.py tasks --help)"),
    (["worker", "-c", "0"], 2, "manage.py worker: error: argument -c/--concurrency: must be a "
                               "whole number >= 1; got '0' (see manage.py worker --help)"),
    (["worker", "--grace", "soon"], 2, "manage.py worker: error: argument --grace: must be a "
                                       "number of seconds >= 0; got 'soon' (see manage.py "
                                       "worker --help)"),
    (["worker", "--max-memory-per-child", "lots"], 2,
     "manage.py worker: error: argument --max-memory-per-child: must be a size of at least 1 "
     "KiB: KiB, or with a K, M or G suffix (512M); got 'lots' (see manage.py worker --help)"),
])
@pytest.mark.django_db
def test_command_line_mistakes_get_one_line(capsys, argv, code, error):
    assert manage(capsys, *argv) == (code, error + "\n")


@pytest.mark.parametrize("command", [["worker", "--burst"], ["tasks", "status"]])
@pytest.mark.django_db
def test_an_unknown_backend_is_named_with_the_configured_ones(capsys, settings, command):
    code, err = manage(capsys, *command, "--backend", "nosuch")
    assert (code, err) == (1, "CommandError: TASKS has no backend 'nosuch' (configured: "
                              f"{', '.join(sorted(settings.TASKS))}).\n")


@pytest.mark.django_db
def test_loglevel_is_case_insensitive(capsys):
    from django_tasks.management.commands.worker import Command

    parser = Command().create_parser("manage.py", "worker")
    assert parser.parse_args(["--loglevel", "debug"]).loglevel == "DEBUG"
    assert parser.parse_args([]).loglevel == "INFO"
    code, err = manage(capsys, "worker", "--loglevel", "verbose")
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("manage.py worker: error: argument -l/--loglevel: invalid choice: "
                          "'VERBOSE' (choose from ")  # argparse quotes them or not by version


@db
def test_a_worker_id_taken_at_the_same_moment_is_refused_clearly(monkeypatch):
    from django_tasks.exceptions import WorkerIdInUse
    from django_tasks.models import Worker as WorkerRow
    from django_tasks.worker import TaskWorker

    TaskWorker(pool="inline", worker_id="twin").register()
    # The second worker looks before the first has inserted, then inserts too.
    monkeypatch.setattr(type(WorkerRow.objects.all()), "first", lambda qs: None)
    with pytest.raises(WorkerIdInUse, match=r"^Another worker registered as 'twin' at the same "
                                            r"moment; give this one another --worker-id"):
        TaskWorker(pool="inline", worker_id="twin").register()


# -- django_tasks missing from INSTALLED_APPS --------------------------------------------------


def test_check_reports_e004_when_the_app_is_missing(tmp_path):
    """Through Django's own TASKS check, which runs once django.tasks is imported at start-up
    (here by the app's ready(), as a project that autodiscovers its tasks does)."""
    import subprocess

    from tests.helpers import ROOT

    write_package(tmp_path, "shop", {
        "apps": """
            from django.apps import AppConfig

            class ShopConfig(AppConfig):
                name = "shop"

                def ready(self):
                    from . import tasks  # noqa: F401
        """,
        "tasks": """
            from django.tasks import task

            @task()
            def ship(order_id):
                return order_id
        """,
    })
    (tmp_path / "shop_settings.py").write_text(textwrap.dedent("""
        SECRET_KEY = "x"
        USE_TZ = True
        INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "shop"]
        DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
        TASKS = {"default": {"BACKEND": "django_tasks.backends.database.DatabaseBackend"}}
    """))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tmp_path}:{ROOT}",
           "DJANGO_SETTINGS_MODULE": "shop_settings"}
    check = subprocess.run([sys.executable, "-m", "django", "check"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 1, check.stdout + check.stderr
    assert ("?: (django_tasks.E004) TASKS['default'] uses DatabaseBackend, which stores jobs in "
            "the django_tasks app's models, but 'django_tasks' is not in INSTALLED_APPS.\n"
            "\tHINT: Add 'django_tasks' to INSTALLED_APPS.") in check.stderr


@db
def test_enqueue_without_the_app_says_what_to_do(settings):
    from django.tasks import default_task_backend
    from django.tasks.exceptions import InvalidTaskBackend

    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django_tasks"]
    assert "django_tasks.E004" in [e.id for e in default_task_backend.check()]
    with pytest.raises(InvalidTaskBackend, match=(
        r"^TASKS\['default'\] uses DatabaseBackend, which stores jobs in the django_tasks app's "
        r"models, but 'django_tasks' is not in INSTALLED_APPS: add it \(and migrate\)\. "
        r"Nothing was enqueued\.$"
    )):
        tasks.add.enqueue(1, 2)


# -- logs ------------------------------------------------------------------------------------


@db
@pytest.mark.parametrize("pool_name", ["inline", "threads"])
def test_a_failed_job_is_logged_once(caplog, pool_name):
    import logging

    from django_tasks.worker import TaskWorker

    caplog.set_level(logging.DEBUG)
    result = tasks.fails_with_type_error.enqueue()
    TaskWorker(pool=pool_name, burst=True).run()
    lines = [r for r in caplog.records if result.id in r.getMessage()]
    assert [(r.name, r.levelname) for r in lines] == [
        ("django_tasks.worker", "INFO"),  # started
        ("django_tasks.worker", "ERROR"),  # FAILED, with task, queue, attempt, duration
    ]
    assert not any(r.exc_info for r in caplog.records)  # the traceback is in the job row


def test_other_backends_keep_djangos_lines(caplog, settings):
    import logging

    caplog.set_level(logging.DEBUG)
    settings.TASKS = {"default": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"}}
    result = tasks.fails_with_type_error.enqueue()
    assert [r.levelname for r in caplog.records
            if r.name == "django.tasks" and result.id in r.getMessage()] == [
        "INFO", "ERROR"]  # started, FAILED


# -- worker rows do not pile up ----------------------------------------------------------------


def worker_rows(days_gone):
    """Rows of workers: stopped ``days_gone`` days ago, or silent that long (not declared)."""
    from datetime import timedelta

    from django_tasks.models import Worker as WorkerRow

    now = timezone.now()
    for name, days in days_gone.items():
        at = now - timedelta(days=days)
        WorkerRow.objects.create(
            id=name, hostname="h", pid=1, concurrency=1, pool="prefork", started_at=at,
            last_heartbeat_at=at, stopped_at=None if name.startswith("silent") else at,
        )


def remaining():
    from django_tasks.models import Worker as WorkerRow

    return sorted(WorkerRow.objects.values_list("id", flat=True))


@db
def test_tasks_prune_deletes_gone_workers_but_not_those_still_holding_jobs():
    from io import StringIO

    from django.core.management import call_command

    worker_rows({"stopped-old": 8, "stopped-new": 1, "silent-old": 8, "silent-holding": 8,
                 "silent-new": 0})
    held = tasks.add.enqueue(1, 1)
    Job.objects.filter(pk=held.id).update(status="RUNNING", worker_id="silent-holding",
                                          lease="x")
    out = StringIO()
    call_command("tasks", "prune", "--older-than", "7d", stdout=out)
    assert ", 2 worker(s) gone since then" in out.getvalue()
    assert remaining() == ["silent-holding", "silent-new", "stopped-new"]


@db
def test_tasks_prune_never_deletes_a_live_worker_and_dry_run_deletes_nothing():
    """--older-than 0 used to delete the row of a live worker (which then took itself for
    declared dead): a running worker that heart-beat within WORKER_TIMEOUT keeps its row."""
    from io import StringIO

    from django.core.management import call_command
    from django.tasks import default_task_backend

    worker_rows({"stopped-old": 8, "silent-old": 8})
    store = default_task_backend.store
    store.register_worker(id="live", hostname="h", pid=1, backend="default",
                          queues=["default"], concurrency=1, pool="prefork")
    out = StringIO()
    call_command("tasks", "prune", "--older-than", "0s", "--dry-run", stdout=out)
    assert "Would delete 0 finished job(s)" in out.getvalue()
    assert ", 2 worker(s) gone since then" in out.getvalue()
    assert remaining() == ["live", "silent-old", "stopped-old"]  # nothing deleted
    call_command("tasks", "prune", "--older-than", "0s", stdout=out)
    assert remaining() == ["live"]
    assert store.heartbeat("live")  # still registered, not declared dead


@db
def test_workers_prune_gone_workers_rows_after_worker_retention(settings):
    from django_tasks.worker import TaskWorker

    settings.TASKS = {"default": {**settings.TASKS["default"], "OPTIONS": {
        **settings.TASKS["default"]["OPTIONS"], "WORKER_RETENTION": 2 * 86400}}}
    worker_rows({"stopped-3d": 3, "stopped-1d": 1, "silent-3d": 3})
    worker = TaskWorker(pool="inline", burst=True, worker_id="pruner")
    assert "prune workers" in [d.name for d in worker.duties]  # and hourly after start
    worker.run()
    assert remaining() == ["pruner", "stopped-1d"]  # silent-3d: last heard of 3 days ago


def test_worker_retention_must_exceed_the_worker_timeout():
    from django_tasks.conf import BackendOptions

    assert BackendOptions.parse({}).worker_retention == 7 * 86400
    options = BackendOptions.parse({"WORKER_RETENTION": 10})
    assert options.problems == ("OPTIONS['WORKER_RETENTION'] (10 s) must exceed WORKER_TIMEOUT "
                                "(30 s), or the rows of live workers are deleted",)
    assert options.worker_retention == 7 * 86400
    assert "WORKER_RETENTION" in BackendOptions.parse({"WORKER_RETENTION": "1d"}).problems[0]


# -- a running job deleted -------------------------------------------------------------------


@db
def test_deleting_a_running_job_is_logged_by_the_worker(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="django_tasks")
    result = tasks.deletes_own_row.enqueue()
    other = tasks.add.enqueue(1, 1)
    drain()
    assert not Job.objects.filter(pk=result.id).exists()
    assert Job.objects.get(pk=other.id).status == "SUCCESSFUL"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"Job {result.id} was deleted while it ran: its outcome SUCCESSFUL went "
                        "nowhere: task=tests.tasks.deletes_own_row"]


@pytest.mark.slow
@db
def test_deleting_a_running_job_under_a_real_worker(tmp_path):
    from tests.helpers import start_worker, wait_for

    running = tasks.sleep_then_return.enqueue(1.0)
    proc = start_worker("--burst", "-c", "1")
    try:
        assert wait_for(lambda: Job.objects.filter(pk=running.id, status="RUNNING").exists())
        Job.objects.filter(pk=running.id).delete()  # the admin's delete
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert (f"Job {running.id} was deleted while it ran: its outcome SUCCESSFUL went nowhere: "
            "task=tests.tasks.sleep_then_return") in out


# -- packaging -------------------------------------------------------------------------------


def test_install_requires_is_what_the_library_imports():
    """Only Django is required: with psycopg, redis and django-environ unimportable, every
    module but the Redis broker's (backends/redis/) imports, the checks pass and a job
    runs (SQLite)."""
    import configparser
    import subprocess

    from tests.helpers import ROOT

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    requires = setup["options"]["install_requires"].split()
    extras = {name: value.split() for name, value in setup["options.extras_require"].items()}
    assert requires == ["Django>=6.1"]
    assert extras["postgres"] == ["psycopg[binary]>=3.2"]
    assert extras["redis"] == ["redis>=5.3"]
    assert extras["sample"] == ["django-environ>=0.11"]
    # make demo and make test install .[test]: it must bring everything the others do.
    assert {*extras["postgres"], *extras["redis"], *extras["sample"]} <= set(extras["test"])

    script = textwrap.dedent("""
        import importlib, pkgutil, sys

        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in {"psycopg", "psycopg2", "redis", "environ"}:
                    raise ImportError(f"{name} is not installed")

        sys.meta_path.insert(0, Block())
        import django
        from django.conf import settings

        settings.configure(
            INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth",
                            "django.contrib.admin", "django.contrib.sessions",
                            "django.contrib.messages", "django_tasks"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
            TASKS={"default": {"BACKEND": "django_tasks.backends.database.DatabaseBackend",
                               "QUEUES": ["default", "emails", "heavy_compute"],
                               "OPTIONS": {"TASK_MODULES": ["tests.tasks"]}}},
            USE_TZ=True, SECRET_KEY="x",
            SILENCED_SYSTEM_CHECKS=["admin.E403", "admin.E408", "admin.E409", "admin.E410"],
        )
        django.setup()
        import django_tasks

        def walk(package):  # walk_packages would import backends.redis to look inside
            for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
                if module.name == "django_tasks.backends.redis":  # its extra
                    continue
                imported = importlib.import_module(module.name)
                if module.ispkg:
                    walk(imported)

        walk(django_tasks)
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        call_command("check")
        from django_tasks.worker import Worker
        from tests.tasks import add

        result = add.enqueue(2, 3)
        Worker(pool="inline").drain()
        result.refresh()
        assert result.return_value == 5
        assert not {"psycopg", "redis", "environ"} & set(sys.modules)
        print("ok")
    """)
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert run.stdout.splitlines()[-1:] == ["ok"], run.stdout + run.stderr


# -- make demo on a used database ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.own_database
def test_demo_runs_only_its_own_jobs_on_a_used_database(tmp_path):
    """`make demo` is migrate + demo: with a backlog and a job that never ends already in
    the database, the demo runs its jobs (eight, a chain, a chord and a schedule's),
    touches no other and returns."""
    import subprocess

    from tests.helpers import ROOT

    env = {"PATH": "/usr/bin:/bin", "DJANGO_SETTINGS_MODULE": "sampleproject.settings",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}", "TASKS_BACKEND": "database"}

    def manage(*args, timeout=60):
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    manage("migrate", "--noinput")
    manage("shell", "-c", textwrap.dedent("""
        from sampleproject.demo.tasks import add, encode_video
        for i in range(200):
            add.enqueue(i, i)
        encode_video.enqueue(1, steps=10**6)  # 14 hours of work
    """))
    out = manage("demo", "--timeout", "60", timeout=120)
    table = [row.split() for row in out[out.index("task  "):].splitlines()[1:12]]
    assert [row[0] for row in table] == [
        "send_welcome_email", "encode_video", "add", "mul", "add", "import_feed",
        "build_report", "mul", "tsum", "credit_account", "add"]
    assert [row[1] for row in table] == ["SUCCESSFUL"] * 5 + ["FAILED"] + ["SUCCESSFUL"] * 5
    assert table[1][2] == "2"  # encode_video: retried once
    assert table[7][1:] == ["SUCCESSFUL", "1", "16"]  # chain(add.s(2, 2), mul.s(4))
    assert table[8][1:] == ["SUCCESSFUL", "1", "90"]  # the chord's callback
    # Atomic: failed once after writing; the job made one ledger entry, not two.
    assert table[9][1:] == ["SUCCESSFUL", "2", "1"]
    assert table[10][1:] == ["SUCCESSFUL", "1", "2"]  # fired from the demo's schedule
    assert "Gave up" not in out
    assert "Task id=" not in out  # Django's logger does not repeat the worker's lines
    counts = manage("shell", "-c", textwrap.dedent("""
        from django_tasks.models import Job
        print(sorted(Job.objects.filter(backend="default").values_list("status", flat=True)
                     .distinct()), Job.objects.filter(backend="default").count())
    """))
    assert counts.strip().endswith("['READY'] 201")


# -- docs ------------------------------------------------------------------------------------


def doc_block(doc, marker):
    """The fenced python block of ``docs/<doc>`` that contains ``marker``."""
    import re

    from tests.helpers import ROOT

    text = (ROOT / "docs" / doc).read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if marker in b]
    return block


@db
def test_worker_md_test_example_works_as_written(tmp_path, monkeypatch, settings):
    """The example of docs/worker.md "In your tests", run against the task of
    docs/getting-started.md, both as printed."""
    write_package(tmp_path, "myapp", {"tasks": doc_block("getting-started.md",
                                                         "# myapp/tasks.py")})
    monkeypatch.syspath_prepend(str(tmp_path))
    with_task_modules(settings, "myapp")
    example = doc_block("worker.md", "# myapp/tests.py")
    namespace = {}
    try:
        exec(compile(example, "docs/worker.md", "exec"), namespace)
        namespace["test_welcome_email"]()
    finally:
        for name in ("myapp", "myapp.tasks"):
            sys.modules.pop(name, None)
    assert Job.objects.get().task_path == "myapp.tasks.send_welcome_email"


@db
def test_admin_changelist_counts_the_matching_jobs_and_no_total(client):
    import re

    from django.contrib.auth.models import User
    from django.urls import reverse

    for i in range(3):
        tasks.add.enqueue(i, i)
    tasks.send_email.enqueue("a@example.com")
    client.force_login(User.objects.create_superuser("admin", "a@example.com", "pw"))
    url = reverse("admin:django_tasks_job_changelist")

    def counts(**query):
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", client.get(url, query).text))
        return re.findall(r"\b(\d+) (jobs?|results?|total)\b", text)

    assert counts() == [("4", "results"), ("4", "jobs")]
    assert counts(queue_name="emails") == [("1", "result"), ("1", "job")]  # no "of 4 total"
    assert counts(q="add") == [("3", "results"), ("3", "jobs")]


@pytest.mark.django_db(transaction=True)
def test_django_options_after_a_tasks_action_are_accepted():
    """`manage.py tasks status --settings X` (Django's options after the action) runs."""
    from tests.helpers import start_command

    proc = start_command("tasks", "status", "--backend", "default", "--settings",
                         "tests.settings", "--traceback", "-v", "2")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert out.split()[:2] == ["queue", "wait"]


@db
def test_a_tasks_checks_are_made_once_and_again_when_settings_change(settings, monkeypatch):
    # Single enqueues remember a task's passed checks (Enqueueing._plan_for); a change
    # of settings (here the app removed) must make the next enqueue check again.
    from django.tasks import default_task_backend
    from django.tasks.exceptions import InvalidTaskBackend

    from django_tasks.backends import enqueue

    checked = []
    check_task = default_task_backend.check_task
    monkeypatch.setattr(default_task_backend, "check_task",
                        lambda task: checked.append(task) or check_task(task))
    task = tasks.add.using(priority=3)  # a task object no test enqueued before
    for i in range(3):
        task.enqueue(i, i)
    assert checked == [task]
    tasks.add.using(priority=5).enqueue(1, 1)  # another task object: checked
    assert len(checked) == 2
    monkeypatch.setattr(enqueue, "PLANS_KEPT", 1)
    tasks.add.using(priority=6).enqueue(1, 1)  # past PLANS_KEPT: all forgotten
    task.enqueue(1, 1)
    assert len(checked) == 4

    settings.INSTALLED_APPS = [a for a in settings.INSTALLED_APPS if a != "django_tasks"]
    with pytest.raises(InvalidTaskBackend):
        tasks.add.enqueue(1, 2)
