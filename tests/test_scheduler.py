"""Periodic tasks: settings sync, exactly-once ticks, catch-up, DST, errors, commands.

Time is a parameter: every pass is given its ``now``, so nothing here sleeps.
"""

import signal
from datetime import UTC, datetime, timedelta
from io import StringIO
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from django.core.management import call_command

from django_tasks.beat.scheduler import CATCH_UP_LIMIT, GRACE, Scheduler
from django_tasks.conf import BackendOptions, parse_schedule_entry
from django_tasks.models import Job, Schedule, ScheduleTick
from django_tasks.schedules import crontab
from tests.helpers import start_command, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)


def entry(name="every-minute", **fields):
    fields.setdefault("task", "tests.tasks.add")
    fields.setdefault("schedule", 60)
    fields.setdefault("args", [1, 2])
    parsed, problems = parse_schedule_entry(name, fields)
    assert not problems, problems
    return parsed


def synced(*entries, now=T0):
    scheduler = Scheduler("default")
    scheduler.sync(entries, now=now)
    return scheduler


def step(scheduler, start, end, every=timedelta(seconds=30)):
    """Run a pass every ``every`` from ``start`` to ``end``; returns the ticks fired."""
    fired, now = [], start
    while now <= end:
        fired.extend(scheduler.run_due(now))
        now += every
    return fired


# -- settings --------------------------------------------------------------------------


def test_settings_entries_are_checked_with_clear_messages():
    options = BackendOptions.parse({"SCHEDULE": {
        "ok": {"task": "tests.tasks.add", "schedule": crontab(minute=0, hour=0),
               "args": [1, 2]},
        "no-schedule": {"task": "tests.tasks.add"},
        "bad-cron": {"task": "tests.tasks.add", "schedule": "61 * * * *"},
        "bad-zone": {"task": "tests.tasks.add", "schedule": 5, "timezone": "Mars/Base"},
        "bad-catch-up": {"task": "tests.tasks.add", "schedule": 5, "catch_up": "sometimes"},
        "typo": {"task": "tests.tasks.add", "schedule": 5, "kwarg": {}},
        "celery-options": {"task": "tests.tasks.add", "schedule": 5,
                           "options": {"queue": "emails", "expires": 10}},
        "two-zones": {"task": "tests.tasks.add", "schedule": crontab(minute=0, tz="Europe/Paris"),
                      "timezone": "Asia/Tokyo"},
        "own-zone": {"task": "tests.tasks.add", "schedule": crontab(minute=0, tz="Europe/Paris"),
                     "args": [1, 2]},
    }})
    assert [e.name for e in options.schedule] == ["ok", "own-zone"]
    assert options.schedule[1].timezone == "Europe/Paris"
    text = "\n".join(options.problems)
    assert "['no-schedule'] has no 'schedule'" in text
    assert "['bad-cron']['schedule']" in text and "61" in text
    assert "'Mars/Base' is not a time zone name" in text
    assert "['catch_up'] must be one of 'skip', 'latest', 'all'; got 'sometimes'" in text
    assert "unknown key(s) 'kwarg'" in text
    assert "['options'] may only set priority, queue" in text
    assert "the zone is given twice, 'timezone' 'Asia/Tokyo' and crontab(tz='Europe/Paris')" in text


def test_system_check_names_a_schedule_whose_task_cannot_run(settings):
    settings.TASKS = {**settings.TASKS, "default": {
        **settings.TASKS["default"],
        "OPTIONS": {**settings.TASKS["default"]["OPTIONS"], "SCHEDULE": {
            "nope": {"task": "tests.tasks.no_such_task", "schedule": 60},
            "bad-args": {"task": "tests.tasks.add", "schedule": 60, "args": [1]},
            "fine": {"task": "tests.tasks.add", "schedule": 60, "args": [1, 2]},
        }},
    }}
    from django.tasks import task_backends

    errors = task_backends["default"].check()
    messages = {e.id: [] for e in errors}
    for e in errors:
        messages[e.id].append(e.msg)
    assert len(messages["django_tasks.E007"]) == 2, errors
    text = "\n".join(messages["django_tasks.E007"])
    assert "['SCHEDULE']['nope']" in text and "no_such_task" in text
    assert "['SCHEDULE']['bad-args']" in text
    assert "Nothing was enqueued" not in text


def test_sync_creates_keeps_admin_edits_overwrites_changed_entries_and_retires_removed():
    scheduler = synced(entry("a", schedule=60), entry("b", schedule=crontab(minute=0)))
    a, b = Schedule.objects.get(name="a"), Schedule.objects.get(name="b")
    assert (a.interval, a.cron, a.origin, a.enabled) == (60.0, "", "settings", True)
    assert b.cron == "0 * * * *" and b.interval is None
    assert a.next_run_at == T0 + timedelta(minutes=1)  # ticks count from the sync

    # The admin switches a off and retimes b; a restart with the same settings keeps that.
    Schedule.objects.filter(name="a").update(enabled=False)
    Schedule.objects.filter(name="b").update(cron="30 * * * *")
    counts = scheduler.sync([entry("a", schedule=60), entry("b", schedule=crontab(minute=0))],
                            now=T0 + timedelta(hours=1))
    assert counts == {"created": 0, "updated": 0, "removed": 0}
    assert not Schedule.objects.get(name="a").enabled
    assert Schedule.objects.get(name="b").cron == "30 * * * *"

    # The settings change a's timing and drop b: a takes it (still off), b stops firing.
    later = T0 + timedelta(hours=2)
    counts = scheduler.sync([entry("a", schedule=120)], now=later)
    assert counts == {"created": 0, "updated": 1, "removed": 1}
    a, b = Schedule.objects.get(name="a"), Schedule.objects.get(name="b")
    assert a.interval == 120.0 and not a.enabled and a.checked_until == later
    assert b.state == "removed from settings" and b.next_run_at is None
    Schedule.objects.filter(name="a").update(enabled=True)
    assert {f.schedule for f in step(scheduler, later, later + timedelta(minutes=10))} == {"a"}

    # Back in the settings: it fires again, from then on.
    scheduler.sync([entry("a", schedule=120), entry("b", schedule=crontab(minute=0))],
                   now=later + timedelta(hours=1))
    assert Schedule.objects.get(name="b").state == "enabled"


def test_rows_made_in_the_admin_are_left_alone_by_sync():
    Schedule.objects.create(name="mine", task_path="tests.tasks.add", args=[1, 1],
                            interval=30, checked_until=T0, next_run_at=T0)
    synced(entry("a"))
    mine = Schedule.objects.get(name="mine")
    assert (mine.state, mine.origin, mine.interval) == ("enabled", "admin", 30.0)
    assert Schedule.objects.count() == 2


# -- exactly once ------------------------------------------------------------------------


def test_each_tick_is_enqueued_once_by_racing_schedulers_and_after_jobs_are_pruned():
    first = synced(entry(schedule=60))
    second = Scheduler("default")
    tick = T0 + timedelta(minutes=1)
    assert [f.tick_at for f in first.run_due(tick)] == [tick]
    # A second scheduler that read the row before the first moved it on: the tick
    # row's unique constraint stops it.
    Schedule.objects.update(checked_until=T0, next_run_at=tick)
    assert second.run_due(tick + timedelta(seconds=1)) == []
    Job.objects.all().delete()  # pruning jobs does not make the tick fire again
    Schedule.objects.update(checked_until=T0, next_run_at=tick)
    assert second.run_due(tick + timedelta(seconds=2)) == []
    assert ScheduleTick.objects.count() == 1 and Job.objects.count() == 0


def test_a_fired_tick_is_a_job_with_the_schedules_call_linked_from_the_tick():
    scheduler = synced(entry(schedule=60, args=[2, 3], queue="emails", priority=7))
    [fired] = scheduler.run_due(T0 + timedelta(minutes=1))
    job = Job.objects.get(pk=fired.job_id)
    assert (job.task_path, job.args, job.queue_name, job.priority) == (
        "tests.tasks.add", [2, 3], "emails", 7)
    tick = ScheduleTick.objects.get()
    assert str(tick.job_id) == fired.job_id and tick.tick_at == T0 + timedelta(minutes=1)
    schedule = Schedule.objects.get()
    assert schedule.last_run_at == tick.tick_at and str(schedule.last_job_id) == fired.job_id
    assert schedule.next_run_at == T0 + timedelta(minutes=2)


def test_ticks_fire_on_time_in_order_as_time_passes():
    scheduler = synced(entry(schedule=60))
    fired = step(scheduler, T0, T0 + timedelta(minutes=10, seconds=6), every=timedelta(seconds=7))
    assert [f.tick_at for f in fired] == [T0 + timedelta(minutes=m) for m in range(1, 11)]
    assert all(f.job_id and not f.error for f in fired)


# -- catch-up ------------------------------------------------------------------------------


@pytest.mark.parametrize("policy, expected", [
    ("skip", []),
    ("latest", [T0 + timedelta(hours=3)]),
    ("all", [T0 + timedelta(minutes=m) for m in range(5, 181, 5)]),
])
def test_catch_up_after_downtime(policy, expected):
    scheduler = synced(entry(schedule=300, catch_up=policy))
    # Nobody ran for three hours (36 ticks); now it is 90 s past the last one.
    now = T0 + timedelta(hours=3, seconds=90)
    assert GRACE < 90
    assert [f.tick_at for f in scheduler.run_due(now)] == expected
    assert Job.objects.count() == len(expected)
    # Whatever the policy, the missed ticks are decided once: the next pass fires none,
    # and the next tick fires on time.
    assert scheduler.run_due(now + timedelta(seconds=1)) == []
    assert [f.tick_at for f in scheduler.run_due(T0 + timedelta(hours=3, minutes=5))] == [
        T0 + timedelta(hours=3, minutes=5)]


def test_catch_up_all_is_bounded():
    scheduler = synced(entry(schedule=60, catch_up="all"))
    fired = scheduler.run_due(T0 + timedelta(hours=3, seconds=1))
    assert len(fired) == CATCH_UP_LIMIT
    assert fired[-1].tick_at == T0 + timedelta(hours=3)
    assert fired[0].tick_at == T0 + timedelta(hours=3) - timedelta(minutes=CATCH_UP_LIMIT - 1)


def test_skip_still_runs_a_tick_that_is_only_a_little_late():
    scheduler = synced(entry(schedule=3600))
    now = T0 + timedelta(hours=1, seconds=GRACE - 1)
    assert [f.tick_at for f in scheduler.run_due(now)] == [T0 + timedelta(hours=1)]


# -- time zones and DST ----------------------------------------------------------------------


def local(zone, *fields, fold=0):
    return datetime(*fields, tzinfo=ZoneInfo(zone), fold=fold).astimezone(UTC)


@pytest.mark.parametrize("zone, day, gap", [
    ("Europe/Paris", (2026, 3, 29), 2), ("America/New_York", (2026, 3, 8), 2),
])
def test_a_daily_run_inside_the_spring_forward_gap_fires_once_at_the_change(zone, day, gap):
    scheduler = synced(entry(schedule=crontab(minute=30, hour=gap), timezone=zone),
                       now=local(zone, *day, 0, 0))
    fired = step(scheduler, local(zone, *day, 0, 0), local(zone, *day, 5, 0))
    assert [f.tick_at for f in fired] == [local(zone, *day, 3, 0)]


@pytest.mark.parametrize("zone, day, hour", [
    ("Europe/Paris", (2026, 10, 25), 2), ("America/New_York", (2026, 11, 1), 1),
])
def test_a_daily_run_at_a_repeated_time_fires_once(zone, day, hour):
    scheduler = synced(entry(schedule=crontab(minute=30, hour=hour), timezone=zone),
                       now=local(zone, *day, 0, 0))
    fired = step(scheduler, local(zone, *day, 0, 0), local(zone, *day, 5, 0))
    assert [f.tick_at for f in fired] == [local(zone, *day, hour, 30)]


def test_hourly_follows_real_time_through_both_changes():
    zone = "America/New_York"
    scheduler = synced(entry(schedule="0 * * * *", timezone=zone),
                       now=local(zone, 2026, 11, 1, 0, 30))
    fired = step(scheduler, local(zone, 2026, 11, 1, 0, 30), local(zone, 2026, 11, 1, 3, 0))
    assert [f.tick_at for f in fired] == [
        local(zone, 2026, 11, 1, 1, 0), local(zone, 2026, 11, 1, 1, 0, fold=1),
        local(zone, 2026, 11, 1, 2, 0), local(zone, 2026, 11, 1, 3, 0),
    ]
    gaps = {b.tick_at - a.tick_at for a, b in pairwise(fired)}
    assert gaps == {timedelta(hours=1)}  # every hour of real time, none doubled or lost

    Schedule.objects.update(checked_until=local(zone, 2026, 3, 8, 0, 30),
                            next_run_at=local(zone, 2026, 3, 8, 1, 0))
    fired = step(scheduler, local(zone, 2026, 3, 8, 0, 30), local(zone, 2026, 3, 8, 4, 0))
    assert [f.tick_at for f in fired] == [
        local(zone, 2026, 3, 8, 1, 0), local(zone, 2026, 3, 8, 3, 0),
        local(zone, 2026, 3, 8, 4, 0),
    ]


def test_cron_is_read_in_settings_time_zone_unless_the_schedule_names_one(settings):
    settings.TIME_ZONE = "Asia/Tokyo"
    scheduler = synced(entry("tokyo", schedule=crontab(minute=0, hour=9), catch_up="latest"),
                       entry("paris", schedule=crontab(minute=0, hour=9), catch_up="latest",
                             timezone="Europe/Paris"))
    fired = step(scheduler, T0, T0 + timedelta(days=1), every=timedelta(minutes=10))
    assert {f.schedule: f.tick_at for f in fired} == {
        "tokyo": datetime(2026, 6, 2, 0, 0, tzinfo=UTC),  # 09:00 JST
        "paris": datetime(2026, 6, 2, 7, 0, tzinfo=UTC),  # 09:00 CEST
    }


# -- errors ------------------------------------------------------------------------------------


def test_a_call_the_task_refuses_is_recorded_and_not_retried():
    scheduler = synced(entry(schedule=60))
    Schedule.objects.update(args=[1])  # edited behind the admin's back: add() needs two
    [fired] = scheduler.run_due(T0 + timedelta(minutes=1))
    assert fired.job_id is None and "InvalidArguments" in fired.error
    tick = ScheduleTick.objects.get()
    assert tick.job_id is None and "InvalidArguments" in tick.error
    assert "InvalidArguments" in Schedule.objects.get().last_error
    assert scheduler.run_due(T0 + timedelta(minutes=1, seconds=1)) == []
    Schedule.objects.update(args=[1, 1])
    [fired] = scheduler.run_due(T0 + timedelta(minutes=2))
    assert fired.job_id and Schedule.objects.get().last_error == ""


def test_an_invalid_timing_stops_only_that_schedule():
    scheduler = synced(entry("broken"), entry("fine"))
    Schedule.objects.filter(name="broken").update(cron="99 * * * *", interval=None)
    fired = scheduler.run_due(T0 + timedelta(minutes=1))
    assert [f.schedule for f in fired] == ["fine"]
    broken = Schedule.objects.get(name="broken")
    assert broken.next_run_at is None and "Invalid timing" in broken.last_error


def test_run_now_enqueues_at_once_as_a_manual_tick():
    scheduler = synced(entry(schedule=crontab(minute=0, hour=0)))
    fired = scheduler.run_now(Schedule.objects.get())
    assert fired.job_id and ScheduleTick.objects.get().manual
    assert Job.objects.filter(pk=fired.job_id).exists()


# -- commands ---------------------------------------------------------------------------------


def test_beat_once_and_tasks_status(settings):
    settings.TASKS = {**settings.TASKS, "default": {
        **settings.TASKS["default"],
        "OPTIONS": {**settings.TASKS["default"]["OPTIONS"], "SCHEDULE": {
            "clear-cache-every-midnight": {"task": "tests.tasks.add",
                                           "schedule": crontab(minute=0, hour=0),
                                           "args": [1, 2]},
        }},
    }}
    out = StringIO()
    call_command("beat", "--once", stdout=out)
    assert "0 tick(s) enqueued" in out.getvalue()
    schedule = Schedule.objects.get()
    assert schedule.name == "clear-cache-every-midnight" and schedule.cron == "0 0 * * *"
    out = StringIO()
    call_command("tasks", "status", stdout=out)
    line = next(x for x in out.getvalue().splitlines() if "clear-cache" in x)
    assert "enabled" in line and "0 0 * * *" in line and "tests.tasks.add" in line


# -- real processes ---------------------------------------------------------------------------

SCHEDULE_ENV = {"DJANGO_TASKS_TEST_SCHEDULE": "1"}  # tests/settings.py: add(1, 2) every second


@pytest.mark.slow
def test_four_beat_processes_enqueue_each_tick_exactly_once():
    procs = [start_command("beat", env=SCHEDULE_ENV) for _ in range(4)]
    try:
        assert wait_for(lambda: ScheduleTick.objects.count() >= 6, timeout=30)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        outputs = [proc.communicate(timeout=30)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], outputs
    ticks = list(ScheduleTick.objects.order_by("tick_at"))
    jobs = Job.objects.filter(task_path="tests.tasks.add")
    # One job per tick and no job without a tick: a scheduler that lost a race
    # enqueued nothing, and no tick was enqueued twice.
    assert sorted(str(t.job_id) for t in ticks) == sorted(str(j) for j in
                                                          jobs.values_list("id", flat=True))
    # Every second, none missed: each scheduler passes at least once a second.
    assert {(b.tick_at - a.tick_at) for a, b in pairwise(ticks)} == {timedelta(seconds=1)}
    # Each process logged only the ticks it enqueued itself.
    claimed = sum(out.count("Schedule 'every-second' enqueued") for out in outputs)
    assert claimed == len(ticks), outputs
    assert Schedule.objects.count() == 1  # four syncs, one row


@pytest.mark.slow
def test_worker_with_beat_runs_the_schedule(broker):
    proc = start_command("worker", "--beat", "-c", "1", env=SCHEDULE_ENV)
    try:
        assert wait_for(lambda: Job.objects.filter(status="SUCCESSFUL").count() >= 2,
                        timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert "beat=on" in out
    done = Job.objects.filter(status="SUCCESSFUL")
    assert set(done.values_list("return_value", flat=True)) == {3}
    linked = set(ScheduleTick.objects.values_list("job_id", flat=True))
    assert set(done.values_list("id", flat=True)) <= linked


@pytest.mark.slow
@pytest.mark.postgres_only
def test_a_scheduler_pass_stuck_in_a_lock_wait_does_not_stop_the_workers_heartbeats():
    """worker --beat runs the scheduler in a thread of its own: with the schedule table
    locked, its pass waits, and the worker must still heart-beat (and not be declared
    dead by another worker's rescue), then carry on scheduling once the lock is gone."""
    from django.db import connection, transaction

    from django_tasks.models import Worker

    proc = start_command("worker", "--beat", "-c", "1", env=SCHEDULE_ENV)
    try:
        assert wait_for(lambda: ScheduleTick.objects.exists(), timeout=30)
        worker = Worker.objects.get(pid=proc.pid)
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(f"LOCK TABLE {Schedule._meta.db_table} IN ACCESS EXCLUSIVE MODE")
            locked_at = Worker.objects.get(pk=worker.pk).last_heartbeat_at
            ticks = ScheduleTick.objects.count()
            # WORKER_TIMEOUT in the test settings is 2 s: three seconds of heartbeats.
            deadline = locked_at + timedelta(seconds=3)
            assert wait_for(lambda: Worker.objects.get(pk=worker.pk).last_heartbeat_at
                            > deadline, timeout=10)
            assert ScheduleTick.objects.count() == ticks  # the pass was waiting
        assert wait_for(lambda: ScheduleTick.objects.count() > ticks + 1, timeout=10)
        assert Worker.objects.get(pk=worker.pk).stopped_at is None
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out


def test_prune_deletes_only_ticks_no_scheduler_can_need():
    scheduler = synced(entry(schedule=60))
    step(scheduler, T0 + timedelta(seconds=7), T0 + timedelta(minutes=5, seconds=10),
         every=timedelta(seconds=20))
    assert ScheduleTick.objects.count() == 5
    # A tick after checked_until (none here but the next one) is never deleted; the
    # ones before the cutoff and decided are.
    assert ScheduleTick.objects.prune(T0 + timedelta(minutes=3)) == 2
    assert ScheduleTick.objects.prune(T0 + timedelta(days=1)) == 3
    Schedule.objects.update(checked_until=T0)  # as if nothing was decided yet
    step(scheduler, T0 + timedelta(minutes=6), T0 + timedelta(minutes=6))
    assert ScheduleTick.objects.prune(T0 + timedelta(days=1)) == 0
    out = StringIO()
    call_command("tasks", "prune", "--older-than", "1s", stdout=out)
    assert "schedule tick(s)" in out.getvalue()
