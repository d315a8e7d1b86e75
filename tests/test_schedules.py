"""The pure time maths of periodic tasks: parsing, ticks, and the daylight-saving rules.

Every expected instant is written out. Transitions used (2024):
  Europe/Paris      spring 31 Mar 02:00 CET -> 03:00 CEST (01:00 UTC)
                    autumn 27 Oct 03:00 CEST -> 02:00 CET (01:00 UTC): 02:00-02:59 twice
  America/New_York  spring 10 Mar 02:00 EST -> 03:00 EDT (07:00 UTC)
                    autumn  3 Nov 02:00 EDT -> 01:00 EST (06:00 UTC): 01:00-01:59 twice
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from django_tasks.schedules import Interval, crontab, every, parse_schedule

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")
ROOT = Path(__file__).resolve().parent.parent


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def ticks(schedule, since: datetime, until: datetime, tz=None) -> list[datetime]:
    return list(schedule.ticks(since, until, tz))


def local(instants: list[datetime], zone: ZoneInfo) -> list[tuple[str, int]]:
    """Wall-clock labels with fold, e.g. ('2024-11-03 01:00', 1)."""
    return [(t.astimezone(zone).strftime("%Y-%m-%d %H:%M"), t.astimezone(zone).fold)
            for t in instants]


def minutes_of(c: crontab) -> list[int]:
    """The minutes of one hour at which ``c`` fires (read in UTC)."""
    return [t.minute for t in ticks(c, utc(2024, 1, 1) - timedelta(seconds=1),
                                    utc(2024, 1, 1, 0, 59))]


# -- field parsing --------------------------------------------------------------------------

@pytest.mark.parametrize(("minute", "expected"), [
    ("*/15", [0, 15, 30, 45]),
    ("5", [5]),
    ("1-5", [1, 2, 3, 4, 5]),
    ("1-30/10", [1, 11, 21]),
    ("1,15,30", [1, 15, 30]),
    ("50/3", [50, 53, 56, 59]),
    ("0-2,10-11,58", [0, 1, 2, 10, 11, 58]),
    (" 7 ", [7]),
    (42, [42]),
    ([30, 0, 30], [0, 30]),
    (range(0, 60, 20), [0, 20, 40]),
])
def test_minute_field_forms(minute, expected):
    assert minutes_of(crontab(minute=minute, hour=0)) == expected


def test_names_numbers_and_sunday_as_0_or_7():
    # June 2024: Sat 1, Sun 2, Mon 3 ... Sun 9.
    def days(c: crontab) -> list[int]:
        return [t.day for t in ticks(c, utc(2024, 6, 1) - timedelta(seconds=1), utc(2024, 6, 9))]

    assert days(crontab(0, 0, day_of_week="mon-fri")) == [3, 4, 5, 6, 7]
    assert days(crontab(0, 0, day_of_week="Monday,WED")) == [3, 5]
    assert days(crontab(0, 0, day_of_week=0)) == [2, 9]
    assert days(crontab(0, 0, day_of_week=7)) == [2, 9]
    assert days(crontab(0, 0, day_of_week="sun")) == [2, 9]
    assert days(crontab(0, 0, day_of_week="5-7")) == [1, 2, 7, 8, 9]
    assert crontab(0, 0, day_of_week=0) == crontab(0, 0, day_of_week="7")
    assert crontab(0, 0, day_of_week="sat,sunday").day_of_week == "6,0"


def test_month_names():
    c = crontab(0, 0, day_of_month=1, month_of_year="jan,Jul-sep,december")
    assert c.month_of_year == "1,7-9,12"
    assert [t.month for t in ticks(c, utc(2024, 1, 1), utc(2025, 1, 1))] == [7, 8, 9, 12, 1]


def test_macros():
    assert crontab.from_string("@daily") == crontab.from_string("0 0 * * *")
    assert crontab.from_string("@midnight").expression == "0 0 * * *"
    assert crontab.from_string("@hourly").expression == "0 * * * *"
    assert crontab.from_string("@weekly").expression == "0 0 * * 0"
    assert crontab.from_string("@monthly").expression == "0 0 1 * *"
    assert crontab.from_string("@yearly").expression == "0 0 1 1 *"
    assert crontab.from_string("@ANNUALLY").expression == "0 0 1 1 *"


def test_from_string_field_order_and_expression():
    c = crontab.from_string("  */5  9-17 1,15 jan-jun mon-fri ")
    assert c == crontab(minute="*/5", hour="9-17", day_of_week="1-5", day_of_month="1,15",
                        month_of_year="1-6")
    assert c.expression == "*/5 9-17 1,15 1-6 1-5"
    assert crontab().expression == "* * * * *"
    assert crontab(minute=0, hour=0).expression == "0 0 * * *"


@pytest.mark.parametrize("expr", [
    "0 0 * * *", "*/15 * * * *", "1-30/5 */2 1,15 2-11 0,6", "0 9 * * mon-fri",
    "50/3 0 * * *", "0 0 29 2 *", "*/1 * * * *", "@weekly",
])
def test_expression_round_trips(expr):
    c = crontab.from_string(expr, tz="Europe/Paris")
    again = crontab.from_string(c.expression, tz=c.tz)
    assert again == c
    assert again.expression == c.expression
    assert eval(repr(c), {"crontab": crontab}) == c


def test_canonical_forms_repr_and_describe():
    c = crontab(minute=[0, 1, 2, 3, 7, 9], hour="*/1")
    assert c.expression == "0-3,7,9 * * * *"
    assert repr(crontab(minute="0", hour="0")) == "crontab(minute='0', hour='0')"
    assert repr(crontab(0, 9, day_of_week="mon", tz="Europe/Paris")) == (
        "crontab(minute='0', hour='9', day_of_week='1', tz='Europe/Paris')")
    assert crontab.from_string("0 0 * * *", tz=PARIS).describe() == "cron 0 0 * * * (Europe/Paris)"
    assert crontab.from_string("0 0 * * *").describe() == "cron 0 0 * * *"


def test_equality_is_by_ticks_and_zone():
    assert crontab(minute="*/15") == crontab(minute="0,15,30,45")
    assert hash(crontab(minute="*/15")) == hash(crontab(minute=[0, 15, 30, 45]))
    assert crontab(0, 0) != crontab(0, 0, tz="UTC")
    assert crontab(0, 0, tz="Europe/Paris") == crontab(0, 0, tz=PARIS)
    # '*/2' follows real time across DST, '0-22/2' fires once per wall time: not equal.
    assert crontab(0, "*/2") != crontab(0, "0-22/2")
    assert crontab(0, 0) != "0 0 * * *"


# -- errors ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"minute": "61"}, "crontab minute='61': 61 is out of range 0-59"),
    ({"minute": 61}, "crontab minute=61: 61 is out of range 0-59"),
    ({"hour": "0-24"}, "crontab hour='0-24': 24 is out of range 0-23"),
    ({"day_of_month": 0}, "crontab day_of_month=0: 0 is out of range 1-31"),
    ({"month_of_year": "13"}, "crontab month_of_year='13': 13 is out of range 1-12"),
    ({"day_of_week": "8"}, "crontab day_of_week='8': 8 is out of range 0-7 (0 and 7 are Sunday)"),
    ({"minute": [0, 60]}, "crontab minute=[0, 60]: 60 is out of range 0-59"),
    ({"minute": "*/0"}, "crontab minute='*/0': step 0 in '*/0' must be at least 1"),
    ({"minute": "*/x"}, "crontab minute='*/x': step 'x' in '*/x' is not a whole number"),
    ({"minute": "*/"}, "crontab minute='*/': step '' in '*/' is not a whole number"),
    ({"minute": "*/90"}, "crontab minute='*/90': step 90 in '*/90' is larger than the range "
                         "0-59, so it would only match 0; for every 90 minutes use "
                         "every(timedelta(minutes=90))"),
    ({"hour": "*/24"}, "crontab hour='*/24': step 24 in '*/24' is larger than the range 0-23, "
                       "so it would only match 0; for every 24 hours use "
                       "every(timedelta(hours=24))"),
    ({"day_of_month": "1-5/7"}, "step 7 in '1-5/7' is larger than the range 1-5, so it would "
                                "only match 1; use a step between 1 and 4"),
    ({"minute": "30-10"}, "crontab minute='30-10': range '30-10' goes backwards; ranges do not "
                          "wrap around, so list both parts instead, e.g. '30-59,0-10'"),
    ({"day_of_week": "fri-mon"}, "e.g. '5-6,0-1'"),
    ({"day_of_week": "funday"}, "crontab day_of_week='funday': 'funday' is not a number or a "
                                "day name (sun-sat)"),
    ({"month_of_year": "jan-foo"}, "'foo' is not a number or a month name (jan-dec)"),
    ({"minute": "5-"}, "crontab minute='5-': '5-' is missing a number"),
    ({"minute": ""}, "crontab minute='': empty field; use '*' for every minute"),
    ({"hour": "  "}, "crontab hour='  ': empty field; use '*' for every hour"),
    ({"minute": "1,,2"}, "crontab minute='1,,2': empty item in the list; remove the extra comma"),
    ({"minute": []}, "crontab minute=[]: no values; use '*' for every minute"),
    ({"minute": 1.5}, "crontab minute=1.5: expected a cron string such as '*/5' or '1-5', an "
                      "int, or an iterable of ints; got float"),
    ({"minute": None}, "got NoneType"),
    ({"minute": True}, "crontab minute=True: expected a cron string"),
    ({"minute": [1, "2"]}, "crontab minute=[1, '2']: '2' is not an int"),
    ({"tz": "Mars/Olympus"}, "crontab tz='Mars/Olympus': unknown time zone; use an IANA name "
                             "such as 'Europe/Paris' or 'UTC', or a tzinfo"),
    ({"tz": 2}, "crontab tz=2: expected a time zone name such as 'Europe/Paris' or a tzinfo"),
])
def test_bad_fields_say_what_and_how_to_fix(kwargs, message):
    with pytest.raises(ValueError) as excinfo:
        crontab(**kwargs)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(("expr", "message"), [
    ("*/5 * * *", "cron string '*/5 * * *' has 4 fields; expected 5: minute hour day-of-month "
                  "month day-of-week"),
    ("0 0 * * * *", "cron string '0 0 * * * *' has 6 fields; expected 5"),
    ("daily", "cron string 'daily' has 1 field; expected 5"),
    ("", "cron string '' is empty; expected 5 fields: minute hour day-of-month month "
         "day-of-week, e.g. '0 0 * * *', or a macro such as '@daily'"),
    ("   ", "cron string '   ' is empty"),
    ("@reboot", "cron string '@reboot': unknown macro; use one of @yearly, @annually, "
                "@monthly, @weekly, @daily, @midnight, @hourly"),
    ("61 * * * *", "cron string '61 * * * *': crontab minute='61': 61 is out of range 0-59"),
    ("0 0 30 2 *", "cron string '0 0 30 2 *': crontab day_of_month='30' with month_of_year="
                   "'2' can never occur: February has at most 29 days"),
])
def test_bad_cron_strings(expr, message):
    with pytest.raises(ValueError) as excinfo:
        crontab.from_string(expr)
    assert message in str(excinfo.value)


def test_from_string_wants_a_str():
    with pytest.raises(ValueError, match=r"cron string 5: expected a str such as '0 0 \* \* \*'"):
        crontab.from_string(5)  # type: ignore[arg-type]


# -- days: dom/dow OR rule, Feb 29, impossible dates ----------------------------------------

def days_in_october_2024(c: crontab) -> list[int]:
    return [t.day for t in ticks(c, utc(2024, 10, 1) - timedelta(seconds=1), utc(2024, 10, 31))]


def test_day_of_month_or_day_of_week_when_both_restricted():
    # October 2024: Fridays are 4, 11, 18, 25; the 13th is a Sunday.
    assert days_in_october_2024(crontab.from_string("0 0 13 * 5")) == [4, 11, 13, 18, 25]
    assert days_in_october_2024(crontab.from_string("0 0 13 * *")) == [13]
    assert days_in_october_2024(crontab.from_string("0 0 * * 5")) == [4, 11, 18, 25]
    assert days_in_october_2024(crontab.from_string("0 0 1,31 * 0")) == [1, 6, 13, 20, 27, 31]


def test_a_field_covering_its_whole_range_does_not_restrict():
    # '1-31' means every day, so only the day of week restricts (croniter's reading).
    assert days_in_october_2024(crontab.from_string("0 0 1-31 * 5")) == [4, 11, 18, 25]
    assert days_in_october_2024(crontab.from_string("0 0 13 * 0-6")) == [13]


def test_february_29_only_in_leap_years():
    leap_day = crontab.from_string("0 0 29 2 *")
    assert ticks(leap_day, utc(2023, 1, 1), utc(2029, 1, 1)) == [utc(2024, 2, 29),
                                                                utc(2028, 2, 29)]
    assert leap_day.next_after(utc(2024, 2, 29)) == utc(2028, 2, 29)
    # 2100 is not a leap year: eight years between two ticks.
    assert leap_day.next_after(utc(2096, 3, 1)) == utc(2104, 2, 29)
    assert leap_day.latest(utc(2103, 12, 31)) == utc(2096, 2, 29)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"day_of_month": 30, "month_of_year": 2},
     "crontab day_of_month=30 with month_of_year=2 can never occur: February has at most 29 "
     "days; pick days that exist in those months"),
    ({"day_of_month": "31", "month_of_year": "feb"}, "February has at most 29 days"),
    ({"day_of_month": "30,31", "month_of_year": "2"}, "can never occur"),
    ({"day_of_month": 31, "month_of_year": "4,6,9,11"},
     "can never occur: those months have at most 30 days"),
])
def test_impossible_dates_are_rejected(kwargs, message):
    with pytest.raises(ValueError) as excinfo:
        crontab(0, 0, **kwargs)
    assert message in str(excinfo.value)


def test_possible_rare_dates_are_accepted():
    crontab(0, 0, day_of_month="29-31", month_of_year=2)  # the 29th exists in leap years
    crontab(0, 0, day_of_month=31, month_of_year="2,3")
    # Both days restricted: Mondays of February fire even though the 30th never comes.
    c = crontab(0, 0, day_of_month=30, month_of_year=2, day_of_week="mon")
    assert c.next_after(utc(2024, 1, 1)) == utc(2024, 2, 5)


# -- ticks, next_after, latest --------------------------------------------------------------

def test_ticks_window_since_exclusive_until_inclusive():
    c = crontab.from_string("*/15 * * * *")
    assert ticks(c, utc(2024, 1, 1, 10), utc(2024, 1, 1, 11)) == [
        utc(2024, 1, 1, 10, 15), utc(2024, 1, 1, 10, 30), utc(2024, 1, 1, 10, 45),
        utc(2024, 1, 1, 11)]
    assert len(ticks(c, utc(2024, 1, 1), utc(2024, 1, 2))) == 96
    assert ticks(c, utc(2024, 1, 1, 10, 1), utc(2024, 1, 1, 10, 14, 59)) == []
    assert ticks(c, utc(2024, 1, 1, 11), utc(2024, 1, 1, 10)) == []
    assert ticks(c, utc(2024, 1, 1, 11), utc(2024, 1, 1, 11)) == []
    assert all(t.tzinfo is UTC for t in ticks(c, utc(2024, 1, 1), utc(2024, 1, 1, 1)))


def test_ticks_accept_any_aware_datetimes():
    c = crontab.from_string("0 * * * *")
    since = datetime(2024, 1, 1, 12, 30, tzinfo=PARIS)  # 11:30 UTC
    assert ticks(c, since, since + timedelta(hours=2)) == [utc(2024, 1, 1, 12),
                                                           utc(2024, 1, 1, 13)]


def test_ticks_over_a_year_of_every_minute_is_lazy():
    c = crontab()
    it = c.ticks(utc(2024, 1, 1), utc(2025, 1, 1), tz=PARIS)
    assert isinstance(it, Iterator)
    assert list(itertools.islice(it, 3)) == [utc(2024, 1, 1, 0, 1), utc(2024, 1, 1, 0, 2),
                                             utc(2024, 1, 1, 0, 3)]
    # 2024 has 366 days; every-minute ticks follow real time, DST or not.
    assert sum(1 for _ in c.ticks(utc(2024, 1, 1), utc(2025, 1, 1), tz=PARIS)) == 366 * 1440


def test_next_after_and_latest():
    c = crontab.from_string("30 9 * * mon-fri")
    friday = utc(2024, 6, 7, 9, 30)
    assert c.next_after(friday) == utc(2024, 6, 10, 9, 30)
    assert c.next_after(friday - timedelta(microseconds=1)) == friday
    assert c.latest(friday) == friday
    assert c.latest(utc(2024, 6, 9, 23)) == friday
    assert c.latest(friday - timedelta(microseconds=1)) == utc(2024, 6, 6, 9, 30)
    assert crontab().latest(utc(2024, 6, 7, 9, 30, 59)) == utc(2024, 6, 7, 9, 30)
    assert crontab().next_after(utc(2024, 6, 7, 9, 30, 59)) == utc(2024, 6, 7, 9, 31)


def test_rare_expressions_are_found_without_walking_minutes():
    leap_day_noon = crontab.from_string("0 12 29 2 *", tz=NEW_YORK)
    started = time.perf_counter()
    for _ in range(20):
        assert leap_day_noon.next_after(utc(2096, 3, 1)) == utc(2104, 2, 29, 17)
        assert leap_day_noon.latest(utc(2104, 2, 28)) == utc(2096, 2, 29, 17)
    # Walking minute by minute over 8 years would take seconds per call.
    assert time.perf_counter() - started < 2


def test_naive_datetimes_are_rejected():
    naive = datetime(2024, 1, 1)
    for schedule in (crontab(), every(60)):
        with pytest.raises(ValueError, match=r"since=datetime.datetime\(2024, 1, 1, 0, 0\) is "
                                             r"naive; pass an aware datetime"):
            schedule.ticks(naive, utc(2024, 1, 2))
        with pytest.raises(ValueError, match=r"until=.* is naive"):
            schedule.ticks(utc(2024, 1, 1), naive)
        with pytest.raises(ValueError, match=r"t=.* is naive"):
            schedule.next_after(naive)
        with pytest.raises(ValueError, match=r"t=.* is naive"):
            schedule.latest(naive)
    with pytest.raises(ValueError, match="since='2024-01-01' is not a datetime"):
        crontab().ticks("2024-01-01", utc(2024, 1, 2))  # type: ignore[arg-type]


# -- zones ----------------------------------------------------------------------------------

def test_own_zone_wins_over_the_callers_which_wins_over_utc():
    since, until = utc(2024, 1, 15), utc(2024, 1, 16)
    nine = crontab.from_string("0 9 * * *")
    assert ticks(nine, since, until) == [utc(2024, 1, 15, 9)]
    assert ticks(nine, since, until, tz=NEW_YORK) == [utc(2024, 1, 15, 14)]
    assert ticks(nine, since, until, tz="America/New_York") == [utc(2024, 1, 15, 14)]
    paris_nine = crontab.from_string("0 9 * * *", tz="Europe/Paris")
    assert ticks(paris_nine, since, until, tz=NEW_YORK) == [utc(2024, 1, 15, 8)]
    assert paris_nine.next_after(since, tz=NEW_YORK) == utc(2024, 1, 15, 8)
    assert ticks(crontab(0, 9, tz=timezone(timedelta(hours=5))), since, until) == [
        utc(2024, 1, 15, 4)]
    with pytest.raises(ValueError, match="ticks tz='Nowhere': unknown time zone"):
        nine.ticks(since, until, tz="Nowhere")


# -- DST: fixed-hour expressions fire once per wall time --------------------------------------

@pytest.mark.parametrize(("zone", "expected"), [
    (PARIS, [utc(2024, 3, 30, 1, 30), utc(2024, 3, 31, 1), utc(2024, 4, 1, 0, 30)]),
    (NEW_YORK, [utc(2024, 3, 9, 7, 30), utc(2024, 3, 10, 7), utc(2024, 3, 11, 6, 30)]),
])
def test_daily_job_in_the_spring_gap_fires_once_at_the_transition(zone, expected):
    c = crontab.from_string("30 2 * * *", tz=zone)
    found = ticks(c, expected[0] - timedelta(hours=12), expected[-1] + timedelta(hours=12))
    assert found == expected
    assert [label[-5:] for label, _ in local(found, zone)] == ["02:30", "03:00", "02:30"]


@pytest.mark.parametrize("zone", [PARIS, NEW_YORK])
def test_every_gap_time_moved_to_the_transition_fires_once(zone):
    # 02:00, 02:15, 02:30, 02:45 and 03:00 are all the transition instant.
    c = crontab("*/15", "2-3", tz=zone)
    transition = utc(2024, 3, 31, 1) if zone is PARIS else utc(2024, 3, 10, 7)
    found = ticks(c, transition - timedelta(hours=3), transition + timedelta(hours=2))
    assert found == [transition + timedelta(minutes=m) for m in (0, 15, 30, 45)]


@pytest.mark.parametrize(("zone", "expr", "expected"), [
    (PARIS, "30 2 * * *", utc(2024, 10, 27, 0, 30)),  # 02:30 CEST, not 02:30 CET an hour later
    (NEW_YORK, "30 1 * * *", utc(2024, 11, 3, 5, 30)),  # 01:30 EDT, not 01:30 EST
])
def test_daily_job_at_an_ambiguous_time_fires_once_at_the_first(zone, expr, expected):
    c = crontab.from_string(expr, tz=zone)
    found = ticks(c, expected - timedelta(hours=12), expected + timedelta(hours=12))
    assert found == [expected]
    assert local(found, zone)[0][1] == 0
    assert c.next_after(expected - timedelta(seconds=1)) == expected
    assert c.next_after(expected) == expected + timedelta(days=1, hours=1)


# -- DST: wildcard-hour expressions follow real time ----------------------------------------

def test_hourly_through_fall_back_new_york():
    found = ticks(crontab.from_string("0 * * * *"), utc(2024, 11, 3, 4, 30), utc(2024, 11, 3, 8),
                  tz=NEW_YORK)
    assert found == [utc(2024, 11, 3, 5), utc(2024, 11, 3, 6), utc(2024, 11, 3, 7),
                     utc(2024, 11, 3, 8)]
    assert local(found, NEW_YORK) == [("2024-11-03 01:00", 0), ("2024-11-03 01:00", 1),
                                      ("2024-11-03 02:00", 0), ("2024-11-03 03:00", 0)]


def test_hourly_through_fall_back_paris():
    found = ticks(crontab.from_string("0 * * * *", tz=PARIS), utc(2024, 10, 26, 23, 30),
                  utc(2024, 10, 27, 2))
    assert found == [utc(2024, 10, 27, 0), utc(2024, 10, 27, 1), utc(2024, 10, 27, 2)]
    assert local(found, PARIS) == [("2024-10-27 02:00", 0), ("2024-10-27 02:00", 1),
                                   ("2024-10-27 03:00", 0)]


@pytest.mark.parametrize(("zone", "since", "expected_utc", "expected_local"), [
    (NEW_YORK, utc(2024, 3, 10, 5, 30), [utc(2024, 3, 10, 6), utc(2024, 3, 10, 7)],
     ["2024-03-10 01:00", "2024-03-10 03:00"]),
    (PARIS, utc(2024, 3, 30, 23, 30), [utc(2024, 3, 31, 0), utc(2024, 3, 31, 1)],
     ["2024-03-31 01:00", "2024-03-31 03:00"]),
])
def test_hourly_through_spring_forward(zone, since, expected_utc, expected_local):
    found = ticks(crontab.from_string("0 * * * *"), since, since + timedelta(hours=2), tz=zone)
    assert found == expected_utc
    assert [label for label, _ in local(found, zone)] == expected_local
    assert found[1] - found[0] == timedelta(hours=1)


@pytest.mark.parametrize(("zone", "day", "hours"), [
    (PARIS, datetime(2024, 3, 31), 23), (PARIS, datetime(2024, 10, 27), 25),
    (NEW_YORK, datetime(2024, 3, 10), 23), (NEW_YORK, datetime(2024, 11, 3), 25),
])
def test_every_15_minutes_is_every_15_real_minutes_across_transitions(zone, day, hours):
    since = day.replace(tzinfo=zone)
    until = (day + timedelta(days=1)).replace(tzinfo=zone)
    found = ticks(crontab.from_string("*/15 * * * *", tz=zone), since, until)
    real_span = until.astimezone(UTC) - since.astimezone(UTC)
    assert real_span == timedelta(hours=hours)
    assert len(found) == hours * 4
    start = since.astimezone(UTC)
    assert found == [start + timedelta(minutes=15 * k) for k in range(1, hours * 4 + 1)]


def test_every_15_minutes_labels_across_new_york_transitions():
    c = crontab.from_string("*/15 * * * *")
    spring = ticks(c, utc(2024, 3, 10, 6, 30), utc(2024, 3, 10, 7, 15), tz=NEW_YORK)
    assert local(spring, NEW_YORK) == [("2024-03-10 01:45", 0), ("2024-03-10 03:00", 0),
                                       ("2024-03-10 03:15", 0)]
    assert spring[1] - spring[0] == timedelta(minutes=15)
    fall = ticks(c, utc(2024, 11, 3, 5, 40), utc(2024, 11, 3, 6, 20), tz=NEW_YORK)
    assert local(fall, NEW_YORK) == [("2024-11-03 01:45", 0), ("2024-11-03 01:00", 1),
                                     ("2024-11-03 01:15", 1)]


def test_every_two_hours_skips_the_missing_wall_hour():
    found = ticks(crontab.from_string("0 */2 * * *", tz=PARIS), utc(2024, 3, 30, 22),
                  utc(2024, 3, 31, 3))
    assert local(found, PARIS) == [("2024-03-31 00:00", 0), ("2024-03-31 04:00", 0)]


def test_next_after_and_latest_inside_the_repeated_hour():
    c = crontab.from_string("30 * * * *", tz=NEW_YORK)
    first, second = utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 6, 30)  # 01:30 EDT, 01:30 EST
    assert c.next_after(first) == second
    assert c.latest(second - timedelta(minutes=1)) == first
    assert c.latest(second) == second


# Brute force: walk every real minute and apply the rules as written in the module docstring.
# (expression, minutes, hours, days of month or None for '*', days of week or None)
_REFERENCE_CASES = [
    ("*/15 * * * *", {0, 15, 30, 45}, set(range(24)), None, None),
    ("0 * * * *", {0}, set(range(24)), None, None),
    ("45 */2 * * *", {45}, set(range(0, 24, 2)), None, None),
    ("*/20 23,0,1 * * *", {0, 20, 40}, {23, 0, 1}, None, None),
    ("30 2 * * *", {30}, {2}, None, None),
    ("0,30 0-3 * * *", {0, 30}, {0, 1, 2, 3}, None, None),
    ("0 0 * * *", {0}, {0}, None, None),
    ("30 23 * * *", {30}, {23}, None, None),
    ("15 1 6-8 * 0", {15}, {1}, {6, 7, 8}, {0}),
]


def _reference(expr, minutes, hours, doms, dows, zone, since, until):
    def matches(wall: datetime) -> bool:
        dom_ok = doms is None or wall.day in doms
        dow_ok = dows is None or wall.isoweekday() % 7 in dows
        day_ok = (dom_ok or dow_ok) if doms is not None and dows is not None else dom_ok and dow_ok
        return wall.minute in minutes and wall.hour in hours and day_ok

    real_time = expr.split()[1].startswith("*")
    found, minute = [], timedelta(minutes=1)
    t = since + minute
    while t <= until:
        wall = t.astimezone(zone).replace(tzinfo=None)
        before = (t - minute).astimezone(zone).replace(tzinfo=None) + minute
        if real_time:
            fires = matches(wall)
        else:  # first occurrence of a wall time, or the end of a gap holding matching times
            first = t.astimezone(zone).fold == 0
            skipped = []
            while before < wall:
                skipped.append(before)
                before += minute
            fires = (first and matches(wall)) or any(matches(w) for w in skipped)
        if fires:
            found.append(t)
        t += minute
    return found


@pytest.mark.parametrize(("zone_name", "transition"), [
    ("Europe/Paris", utc(2024, 3, 31, 1)), ("Europe/Paris", utc(2024, 10, 27, 1)),
    ("America/New_York", utc(2024, 3, 10, 7)), ("America/New_York", utc(2024, 11, 3, 6)),
    # Transitions at midnight: 00:00 -> 23:00 the day before, and 00:00 -> 01:00.
    ("America/Santiago", utc(2024, 4, 7, 3)), ("America/Santiago", utc(2024, 9, 8, 4)),
    # Half-hour shifts.
    ("Australia/Lord_Howe", utc(2024, 4, 6, 15)), ("Australia/Lord_Howe", utc(2024, 10, 5, 15, 30)),
])
def test_ticks_agree_with_a_minute_by_minute_reference(zone_name, transition):
    zone = ZoneInfo(zone_name)
    since, until = transition - timedelta(days=2), transition + timedelta(days=2)
    for expr, *sets in _REFERENCE_CASES:
        expected = _reference(expr, *sets, zone, since, until)
        assert ticks(crontab.from_string(expr, tz=zone), since, until) == expected, expr


# -- Interval -------------------------------------------------------------------------------

def test_interval_ticks_on_the_epoch_grid():
    five = every(timedelta(minutes=5))
    assert ticks(five, utc(2024, 1, 1, 10, 2), utc(2024, 1, 1, 10, 15)) == [
        utc(2024, 1, 1, 10, 5), utc(2024, 1, 1, 10, 10), utc(2024, 1, 1, 10, 15)]
    # Two schedulers starting at different times compute the same grid.
    a = ticks(Interval(7), utc(2024, 1, 1, 0, 0, 1), utc(2024, 1, 1, 1))
    b = ticks(Interval(7), utc(2024, 1, 1, 0, 0, 30), utc(2024, 1, 1, 1))
    assert set(b) <= set(a) and a[-len(b):] == b
    assert all((t - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() % 7 == 0 for t in a)
    assert ticks(five, utc(2024, 1, 1, 10, 5), utc(2024, 1, 1, 10, 5)) == []


def test_interval_ignores_zones_and_dst():
    daily = every(timedelta(days=1))
    assert ticks(daily, utc(2024, 3, 30, 12), utc(2024, 4, 1, 12), tz=PARIS) == [
        utc(2024, 3, 31), utc(2024, 4, 1)]


def test_interval_next_after_latest_and_laziness():
    half = every(1.5)
    assert half.next_after(utc(2024, 1, 1)) == utc(2024, 1, 1, 0, 0, 1, 500000)
    assert half.latest(utc(2024, 1, 1, 0, 0, 1, 499999)) == utc(2024, 1, 1)
    assert half.latest(utc(2024, 1, 1)) == utc(2024, 1, 1)
    assert Interval(60).next_after(datetime(1969, 12, 31, 23, 59, 30, tzinfo=UTC)) == \
        datetime(1970, 1, 1, tzinfo=UTC)
    it = every(1).ticks(utc(2000, 1, 1), utc(2100, 1, 1))
    assert isinstance(it, Iterator) and next(it) == utc(2000, 1, 1, 0, 0, 1)


def test_every_and_interval_values():
    assert every(timedelta(minutes=5)) == every(300) == Interval(300.0)
    assert every(timedelta(minutes=5)).seconds == 300.0
    assert hash(every(300)) == hash(Interval(300))
    assert repr(every(300)) == "Interval(seconds=300)"
    assert repr(every(1.5)) == "Interval(seconds=1.5)"
    assert every(timedelta(minutes=5)).describe() == "every 5 minutes"
    assert every(60).describe() == "every minute"
    assert every(timedelta(hours=2)).describe() == "every 2 hours"
    assert every(timedelta(days=1)).describe() == "every day"
    assert every(90).describe() == "every 90 seconds"
    assert every(1.5).describe() == "every 1.5 seconds"


@pytest.mark.parametrize(("call", "message"), [
    (lambda: Interval(0), "Interval(seconds=0): the period must be a positive number of seconds"),
    (lambda: Interval(-5), "Interval(seconds=-5): the period must be a positive"),
    (lambda: Interval(float("nan")), "Interval(seconds=nan): the period must be a positive"),
    (lambda: Interval(1e-9), "the shortest period is one microsecond"),
    (lambda: Interval(True), "Interval(seconds=True): expected a number of seconds; got bool"),
    (lambda: Interval("5"), "expected a number of seconds; got str"),
    (lambda: every(timedelta(0)), "every(datetime.timedelta(0)): the period must be positive"),
    (lambda: every("5m"), "every('5m'): expected a timedelta or a number of seconds; got str"),
    (lambda: every(False), "got bool"),
])
def test_interval_errors(call, message):
    with pytest.raises(ValueError) as excinfo:
        call()
    assert message in str(excinfo.value)


# -- parse_schedule -------------------------------------------------------------------------

def test_parse_schedule_accepted_kinds():
    daily = crontab(0, 0)
    assert parse_schedule(daily) is daily
    assert parse_schedule(daily, tz="Europe/Paris") == crontab(0, 0, tz=PARIS)
    own = crontab(0, 0, tz=NEW_YORK)
    assert parse_schedule(own, tz="Europe/Paris") is own
    assert parse_schedule("0 0 * * *") == daily
    assert parse_schedule("@daily", tz=PARIS) == crontab(0, 0, tz=PARIS)
    assert parse_schedule(timedelta(minutes=5)) == Interval(300)
    assert parse_schedule(300) == Interval(300)
    assert parse_schedule(2.5) == Interval(2.5)
    five = every(300)
    assert parse_schedule(five, tz=PARIS) is five


@pytest.mark.parametrize("value", [True, None, [0, 0], {"minute": 0}, b"0 0 * * *"])
def test_parse_schedule_refuses_other_kinds(value):
    with pytest.raises(ValueError) as excinfo:
        parse_schedule(value)
    assert str(excinfo.value) == (
        f"schedule {value!r}: expected a crontab(...), a cron string such as '0 0 * * *' or "
        f"'@daily', every(...), a timedelta, or a number of seconds; got {type(value).__name__}")


def test_parse_schedule_passes_on_cron_errors():
    with pytest.raises(ValueError, match="cron string '\\*/5 \\* \\* \\*' has 4 fields"):
        parse_schedule("*/5 * * *")
    with pytest.raises(ValueError, match="Interval\\(seconds=0\\)"):
        parse_schedule(0)


# -- importable from settings.py ------------------------------------------------------------

def _python(code: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_the_module_itself_imports_nothing_from_django():
    # Loaded on its own, so what the django_tasks package __init__ imports does not count.
    result = _python(
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('schedules', 'django_tasks/schedules.py')\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules['schedules'] = module\n"
        "spec.loader.exec_module(module)\n"
        "module.crontab.from_string('@daily', tz='Europe/Paris')\n"
        "print(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.')))\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_importing_from_settings_does_not_touch_settings():
    result = _python(
        "from django_tasks.schedules import crontab, every\n"
        "crontab.from_string('0 0 * * *')\n"
        "from django.conf import settings\n"
        "print(settings.configured)\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
