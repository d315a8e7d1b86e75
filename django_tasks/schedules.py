"""Pure time maths of periodic tasks: cron expressions and fixed intervals.

A schedule is a value; ``ticks(since, until)`` lists the instants it fires at. No I/O, no
clock: time is always a parameter. This module imports nothing from Django, so
``from django_tasks.schedules import crontab`` is safe in ``settings.py``.

We parse cron ourselves rather than depend on croniter or cronsim: the parser is small, it
costs no dependency, and the daylight-saving rules below are ours, not a library's.

Intervals
    ``every(timedelta(minutes=5))`` ticks at the instants ``k * period`` after the Unix epoch
    (UTC, whole microseconds), whatever the zone: every scheduler computes the same grid, and
    ``every(timedelta(days=1))`` fires at 00:00 UTC, not at local midnight.

Cron fields
    A ``crontab`` reads its fields in the wall-clock time of a zone: its own ``tz``, else the
    zone passed to ``ticks``, else UTC. Day of month and day of week combine as in cron: when
    both are restricted a day matches if either matches; when one covers its whole range
    (``*``, ``1-31``, ``0-6``...) only the other restricts (croniter's reading; Vixie cron
    calls a field unrestricted only when it starts with ``*``).

Daylight-saving time (as Vixie cron)
    1. Fixed-hour expressions (the hour field does not start with ``*``, e.g. ``30 2 * * *``)
       fire exactly once per matching wall-clock date and time. A wall time skipped by
       spring-forward (02:30 when 02:00 jumps to 03:00) fires once, at the transition
       instant (03:00 local). A wall time repeated by fall-back (01:30 twice in New York in
       November) fires once, at its first occurrence (fold=0).
    2. Wildcard-hour expressions (the hour field starts with ``*``: ``*/15 * * * *``,
       ``0 * * * *``, ``0 */2 * * *``) follow real time: they fire at every instant whose
       local wall time, fold included, matches. On fall-back ``0 * * * *`` fires at 01:00
       and again one real hour later at the repeated 01:00; on spring-forward the skipped
       wall times do not exist and do not fire, so ``*/15`` goes from 01:45 to 03:00 in 15
       real minutes.

Guarantees of every ``ticks``: instants ``since < t <= until``, ascending, each once (several
wall times moved to one transition instant give one tick), as aware UTC datetimes, computed
lazily. Searches step by month, day and matching hour, never minute by minute over days that
cannot match.
"""

from __future__ import annotations

import heapq
import math
import numbers
import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = ["Interval", "crontab", "every", "parse_schedule"]

_UTC = UTC
_EPOCH = datetime(1970, 1, 1, tzinfo=_UTC)
_ONE_DAY = timedelta(days=1)
_ONE_MICROSECOND = timedelta(microseconds=1)

#: How far ``next_after`` looks ahead and ``latest`` looks back. Longer than the longest gap
#: between two ticks of any expression ``crontab`` accepts: 29 February skips 2100, so
#: ``0 0 29 2 *`` goes from 2096 to 2104.
HORIZON = timedelta(days=9 * 366)

# ``latest`` scans growing windows back from ``t``, so frequent schedules look at few ticks.
_LOOK_BACKS = (timedelta(hours=2), timedelta(days=2), timedelta(days=64), timedelta(days=800),
               HORIZON)

_CRON_FIELDS = "minute hour day-of-month month day-of-week"
_MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
_DAY_NAMES = ("sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday")
_MONTH_NAMES = ("january", "february", "march", "april", "may", "june", "july", "august",
                "september", "october", "november", "december")
# The most days each month can have (February: leap years).
_MONTH_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
_NUMBER = re.compile(r"[0-9]+")


def _names(full_names: tuple[str, ...], first: int) -> dict[str, int]:
    names = {}
    for number, name in enumerate(full_names, start=first):
        names[name] = names[name[:3]] = number
    return names


@dataclass(frozen=True)
class _Spec:
    """What one crontab field accepts."""

    name: str  # the crontab argument
    low: int
    high: int  # highest value accepted (7 for day_of_week: Sunday again)
    star_high: int  # highest value '*' covers (6 for day_of_week)
    unit: str
    names: dict[str, int]
    name_hint: str = ""


_MINUTE = _Spec("minute", 0, 59, 59, "minute", {})
_HOUR = _Spec("hour", 0, 23, 23, "hour", {})
_DAY_OF_MONTH = _Spec("day_of_month", 1, 31, 31, "day of the month", {})
_MONTH = _Spec("month_of_year", 1, 12, 12, "month", _names(_MONTH_NAMES, 1),
               " or a month name (jan-dec)")
_DAY_OF_WEEK = _Spec("day_of_week", 0, 7, 6, "day of the week", _names(_DAY_NAMES, 0),
                     " or a day name (sun-sat)")


class _FieldError(ValueError):
    pass


def _parse_field(spec: _Spec, value: Any) -> tuple[str, frozenset[int]]:
    """(canonical text, values) of one field; ValueError naming the field and the fix."""
    shown = value
    values: set[int]
    try:
        if isinstance(value, str):
            text, values = _parse_text(spec, value)
        elif isinstance(value, bool | bytes | bytearray) or not isinstance(value, int | Iterable):
            raise _FieldError(f"expected a cron string such as '*/5' or '1-5', an int, or an "
                              f"iterable of ints; got {type(value).__name__}")
        else:
            numbers_ = [value] if isinstance(value, int) else list(value)
            shown = value if isinstance(value, int) else numbers_
            if not numbers_:
                raise _FieldError(f"no values; use '*' for every {spec.unit}")
            for number in numbers_:
                if isinstance(number, bool) or not isinstance(number, int):
                    raise _FieldError(f"{number!r} is not an int")
                _check_range(spec, number)
            values = set(numbers_)
            text = _compress(sorted(values))
    except _FieldError as exc:
        raise ValueError(f"crontab {spec.name}={shown!r}: {exc}") from None
    if spec is _DAY_OF_WEEK:
        values = {v % 7 for v in values}
    return text, frozenset(values)


def _parse_text(spec: _Spec, value: str) -> tuple[str, set[int]]:
    field = value.strip().lower()
    if not field:
        raise _FieldError(f"empty field; use '*' for every {spec.unit}")
    texts, values = [], set()
    for raw_item in field.split(","):
        item = raw_item.strip()
        if not item:
            raise _FieldError("empty item in the list; remove the extra comma")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text):
                raise _FieldError(f"step {step_text!r} in {item!r} is not a whole number")
            step = int(step_text)
            if step < 1:
                raise _FieldError(f"step {step} in {item!r} must be at least 1")
        if base == "*":
            low, high, text = spec.low, spec.star_high, "*"
        elif "-" in base:
            low_text, _, high_text = base.partition("-")
            low, high = _number(spec, low_text, item), _number(spec, high_text, item)
            if low > high:
                raise _FieldError(
                    f"range {item!r} goes backwards; ranges do not wrap around, so list both "
                    f"parts instead, e.g. '{low}-{spec.star_high},{spec.low}-{high}'")
            text = f"{low}-{high}"
        else:
            low = _number(spec, base, item)
            # 'N/step' is cron shorthand for 'N-<end>/step'.
            high = max(low, spec.star_high) if slash else low
            text = f"{low}-{high}" if slash else str(low)
        if slash and step > high - low:
            raise _FieldError(
                f"step {step} in {item!r} is larger than the range {low}-{high}, so it would "
                f"only match {low}; {_step_hint(spec, step, high - low)}")
        texts.append(text if step == 1 else f"{text}/{step}")
        values.update(range(low, high + 1, step))
    return ",".join(texts), values


def _step_hint(spec: _Spec, step: int, span: int) -> str:
    if spec in (_MINUTE, _HOUR):
        return f"for every {step} {spec.unit}s use every(timedelta({spec.unit}s={step}))"
    return f"use a step between 1 and {span}" if span else "remove the step"


def _number(spec: _Spec, text: str, item: str) -> int:
    if _NUMBER.fullmatch(text):
        number = int(text)
    elif text in spec.names:
        number = spec.names[text]
    elif not text:
        raise _FieldError(f"{item!r} is missing a number")
    else:
        raise _FieldError(f"{text!r} is not a number{spec.name_hint}")
    _check_range(spec, number)
    return number


def _check_range(spec: _Spec, number: int) -> None:
    if not spec.low <= number <= spec.high:
        sunday = " (0 and 7 are Sunday)" if spec is _DAY_OF_WEEK else ""
        raise _FieldError(f"{number} is out of range {spec.low}-{spec.high}{sunday}")


def _compress(values: list[int]) -> str:
    """'0,1,2,3,7,9' -> '0-3,7,9': runs of three or more become ranges."""
    parts, start = [], 0
    while start < len(values):
        end = start
        while end + 1 < len(values) and values[end + 1] == values[end] + 1:
            end += 1
        if end - start >= 2:
            parts.append(f"{values[start]}-{values[end]}")
        else:
            parts.extend(str(v) for v in values[start:end + 1])
        start = end + 1
    return ",".join(parts)


def _resolve_tz(tz: tzinfo | str | None, what: str) -> tzinfo | None:
    if tz is None or isinstance(tz, tzinfo):
        return tz
    if isinstance(tz, str):
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{what}={tz!r}: unknown time zone; use an IANA name such as "
                             f"'Europe/Paris' or 'UTC', or a tzinfo") from None
    raise ValueError(f"{what}={tz!r}: expected a time zone name such as 'Europe/Paris' or a "
                     f"tzinfo; got {type(tz).__name__}")


def _zone_name(zone: tzinfo) -> str:
    return getattr(zone, "key", None) or str(zone)


def _to_utc(value: Any, what: str) -> datetime:
    """``value`` as a naive UTC datetime; ValueError unless it is an aware datetime."""
    if not isinstance(value, datetime):
        raise ValueError(f"{what}={value!r} is not a datetime; pass an aware datetime, e.g. "
                         f"datetime(2025, 1, 1, tzinfo=timezone.utc)")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what}={value!r} is naive; pass an aware datetime (with a tzinfo), "
                         f"e.g. datetime(2025, 1, 1, tzinfo=timezone.utc)")
    return value.astimezone(_UTC).replace(tzinfo=None)


def _transition(wall: datetime, zone: tzinfo, before: timedelta, after: timedelta) -> datetime:
    """The instant (naive UTC) a spring-forward gap containing ``wall`` ends.

    The gap holds the wall times ``[T + before, T + after)``, so ``T`` lies in
    ``(wall - after, wall - before]``: bisect on the zone's offset, to the microsecond.
    """
    low, high = wall - after, wall - before
    while high - low > _ONE_MICROSECOND:
        middle = low + (high - low) // 2
        if middle.replace(tzinfo=_UTC).astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high


class crontab:  # Celery's lower-case spelling, which users know
    """A cron schedule: fields are read in the wall-clock time of a zone (see the module doc).

    Each field is a cron string (``'*'``, ``'5'``, ``'1-5'``, ``'*/15'``, ``'1-30/5'``,
    ``'1,15,30'``; day and month names), an int or an iterable of ints. ``day_of_week`` 0 and
    7 are Sunday. ``tz`` is a zone name or a tzinfo; None reads the fields in the zone the
    caller passes to ``ticks`` (UTC by default). Invalid input raises ValueError here, never
    later. Values are immutable; two crontabs are equal when they tick at the same instants
    in every zone (so ``'*/15'`` equals ``'0,15,30,45'`` as a minute field).
    """

    def __init__(self, minute: Any = "*", hour: Any = "*", day_of_week: Any = "*",
                 day_of_month: Any = "*", month_of_year: Any = "*",
                 tz: tzinfo | str | None = None) -> None:
        self._minute, minutes = _parse_field(_MINUTE, minute)
        self._hour, hours = _parse_field(_HOUR, hour)
        self._day_of_month, self._days_of_month = _parse_field(_DAY_OF_MONTH, day_of_month)
        self._month_of_year, self._months = _parse_field(_MONTH, month_of_year)
        self._day_of_week, self._days_of_week = _parse_field(_DAY_OF_WEEK, day_of_week)
        self._tz = _resolve_tz(tz, "crontab tz")
        self._real_time = self._hour.startswith("*")
        self._dom_restricted = self._days_of_month != frozenset(range(1, 32))
        self._dow_restricted = self._days_of_week != frozenset(range(7))
        if self._dom_restricted and not self._dow_restricted:
            longest = max(_MONTH_DAYS[m] for m in self._months)
            if min(self._days_of_month) > longest:
                which = (f"{_MONTH_NAMES[min(self._months) - 1].title()} has"
                         if len(self._months) == 1 else "those months have")
                raise ValueError(
                    f"crontab day_of_month={day_of_month!r} with month_of_year="
                    f"{month_of_year!r} can never occur: {which} at most {longest} days; "
                    f"pick days that exist in those months")
        # Wall-clock times of day that match, ascending: only matching hours are ever visited.
        self._times = tuple(timedelta(hours=h, minutes=m)
                            for h in sorted(hours) for m in sorted(minutes))
        tz_key = ("zoneinfo", self._tz.key) if isinstance(self._tz, ZoneInfo) else self._tz
        self._key = (minutes, hours, self._days_of_month, self._months, self._days_of_week,
                     self._real_time, tz_key)

    @classmethod
    def from_string(cls, expr: str, tz: tzinfo | str | None = None) -> crontab:
        """Parse ``"minute hour day-of-month month day-of-week"`` or a macro (``@daily``...)."""
        if not isinstance(expr, str):
            raise ValueError(f"cron string {expr!r}: expected a str such as '0 0 * * *'; got "
                             f"{type(expr).__name__}")
        text = expr.strip()
        if not text:
            raise ValueError(f"cron string {expr!r} is empty; expected 5 fields: "
                             f"{_CRON_FIELDS}, e.g. '0 0 * * *', or a macro such as '@daily'")
        if text.startswith("@"):
            if text.lower() not in _MACROS:
                raise ValueError(f"cron string {expr!r}: unknown macro; use one of "
                                 f"{', '.join(_MACROS)}, or 5 fields: {_CRON_FIELDS}")
            text = _MACROS[text.lower()]
        fields = text.split()
        if len(fields) != 5:
            raise ValueError(f"cron string {expr!r} has {len(fields)} "
                             f"field{'s' if len(fields) != 1 else ''}; expected 5: "
                             f"{_CRON_FIELDS}")
        minute, hour, day_of_month, month_of_year, day_of_week = fields
        try:
            return cls(minute=minute, hour=hour, day_of_week=day_of_week,
                       day_of_month=day_of_month, month_of_year=month_of_year, tz=tz)
        except ValueError as exc:
            raise ValueError(f"cron string {expr!r}: {exc}") from None

    # Canonical field texts: names become numbers, '*/1' becomes '*'.
    @property
    def minute(self) -> str:
        return self._minute

    @property
    def hour(self) -> str:
        return self._hour

    @property
    def day_of_week(self) -> str:
        return self._day_of_week

    @property
    def day_of_month(self) -> str:
        return self._day_of_month

    @property
    def month_of_year(self) -> str:
        return self._month_of_year

    @property
    def tz(self) -> tzinfo | None:
        """The crontab's own zone, or None to use the caller's."""
        return self._tz

    @property
    def expression(self) -> str:
        """The canonical 5-field cron string; ``from_string(c.expression, c.tz) == c``."""
        return " ".join((self._minute, self._hour, self._day_of_month, self._month_of_year,
                         self._day_of_week))

    def describe(self) -> str:
        """For people: ``cron 0 0 * * * (Europe/Paris)``."""
        zone = f" ({_zone_name(self._tz)})" if self._tz is not None else ""
        return f"cron {self.expression}{zone}"

    def with_tz(self, tz: tzinfo | str | None) -> crontab:
        """The same fields read in another zone."""
        return type(self)(minute=self._minute, hour=self._hour, day_of_week=self._day_of_week,
                          day_of_month=self._day_of_month, month_of_year=self._month_of_year,
                          tz=tz)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, crontab):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __repr__(self) -> str:
        parts = [f"{name}={text!r}" for name, text in (
            ("minute", self._minute), ("hour", self._hour), ("day_of_week", self._day_of_week),
            ("day_of_month", self._day_of_month), ("month_of_year", self._month_of_year),
        ) if text != "*"]
        if self._tz is not None:
            zone = self._tz.key if isinstance(self._tz, ZoneInfo) else self._tz
            parts.append(f"tz={zone!r}")
        return f"crontab({', '.join(parts)})"

    # -- ticks ---------------------------------------------------------------------------

    def ticks(self, since: datetime, until: datetime,
              tz: tzinfo | str | None = None) -> Iterator[datetime]:
        """Tick instants ``t`` with ``since < t <= until``: ascending, each once, aware UTC.

        A lazy iterator. ``since`` and ``until`` must be aware (ValueError otherwise, raised
        by this call). The fields are read in ``self.tz``, else ``tz``, else UTC.
        """
        since_utc, until_utc = _to_utc(since, "since"), _to_utc(until, "until")
        zone = self._zone(tz)
        if until_utc <= since_utc:
            return iter(())
        first_day = since.astimezone(zone).date() - _ONE_DAY
        last_day = until.astimezone(zone).date() + _ONE_DAY
        return self._ticks(since_utc, until_utc, first_day, last_day, zone)

    def next_after(self, t: datetime, tz: tzinfo | str | None = None) -> datetime:
        """The first tick after ``t`` (aware UTC). Always exists for an accepted expression."""
        _to_utc(t, "t")
        for tick in self.ticks(t, t + HORIZON, tz):
            return tick
        raise ValueError(f"{self.describe()} has no tick within {HORIZON.days} days after "
                         f"{t.isoformat()}")

    def latest(self, t: datetime, tz: tzinfo | str | None = None) -> datetime | None:
        """The last tick at or before ``t`` (aware UTC), or None if none in ``HORIZON``."""
        _to_utc(t, "t")
        for back in _LOOK_BACKS:
            found = None
            for found in self.ticks(t - back, t, tz):  # noqa: B007 - keep the last one
                pass
            if found is not None:
                return found
        return None

    def _zone(self, tz: tzinfo | str | None) -> tzinfo:
        if self._tz is not None:
            return self._tz
        return _resolve_tz(tz, "ticks tz") or _UTC

    def _ticks(self, since: datetime, until: datetime, first_day: date, last_day: date,
               zone: tzinfo) -> Iterator[datetime]:
        last = since
        for instant in self._instants(first_day, last_day, zone, since):
            if instant <= last:  # at or before since, or a repeat
                continue
            if instant > until:
                return
            last = instant
            yield instant.replace(tzinfo=_UTC)

    def _instants(self, first_day: date, last_day: date, zone: tzinfo,
                  since: datetime) -> Iterator[datetime]:
        """Naive-UTC instants of the ticks whose wall date is in [first_day, last_day].

        Non-decreasing. The first occurrence of each wall time (or the transition instant, for
        fixed-hour times in a gap) is non-decreasing in wall-clock order; the second
        occurrences of repeated times (wildcard-hour only) wait in a heap until reached.
        """
        repeats: list[datetime] = []
        day = self._next_day(first_day, last_day)
        while day is not None:
            for instant, repeat in self._day_instants(day, zone, since):
                while repeats and repeats[0] <= instant:
                    yield heapq.heappop(repeats)
                yield instant
                if repeat is not None:
                    heapq.heappush(repeats, repeat)
            day = self._next_day(day + _ONE_DAY, last_day)
        while repeats:
            yield heapq.heappop(repeats)

    def _next_day(self, day: date, last_day: date) -> date | None:
        """The first matching date in [day, last_day]: by month, then by day."""
        while day <= last_day:
            if day.month not in self._months:
                if day.month == 12:
                    if day.year == date.max.year:
                        return None
                    day = date(day.year + 1, 1, 1)
                else:
                    day = date(day.year, day.month + 1, 1)
                continue
            if self._day_matches(day):
                return day
            day += _ONE_DAY
        return None

    def _day_matches(self, day: date) -> bool:
        dom = day.day in self._days_of_month
        dow = day.isoweekday() % 7 in self._days_of_week
        if self._dom_restricted and self._dow_restricted:
            return dom or dow
        return dom and dow

    def _day_instants(self, day: date, zone: tzinfo,
                      since: datetime) -> Iterator[tuple[datetime, datetime | None]]:
        """(first instant, second instant or None) of each matching wall time of ``day``."""
        midnight = datetime(day.year, day.month, day.day)
        start = midnight.replace(tzinfo=zone)
        end = (midnight + _ONE_DAY).replace(tzinfo=zone)
        offset = start.utcoffset()
        assert offset is not None
        if offset == start.replace(fold=1).utcoffset() == end.utcoffset() \
                == end.replace(fold=1).utcoffset():
            # Same unambiguous offset at both midnights: no transition today (zones do not
            # undo a transition within a day), so every wall time is one instant.
            first = midnight - offset
            for time in self._times[bisect_right(self._times, since - first):]:
                yield first + time, None
            return
        for time in self._times:
            wall = midnight + time
            earlier = wall.replace(tzinfo=zone)
            before, after = earlier.utcoffset(), earlier.replace(fold=1).utcoffset()
            assert before is not None and after is not None
            if before == after:
                yield wall - before, None
            elif before > after:  # repeated by fall-back
                yield wall - before, (wall - after if self._real_time else None)
            elif not self._real_time:  # skipped by spring-forward: fire as the gap ends
                yield _transition(wall, zone, before, after), None


class Interval:
    """Every ``seconds`` of real time, on the grid ``k * seconds`` after the Unix epoch (UTC).

    ``seconds`` must be a positive number; the grid is kept in whole microseconds. Two
    intervals are equal when their periods are.
    """

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, numbers.Real):
            raise ValueError(f"Interval(seconds={seconds!r}): expected a number of seconds; "
                             f"got {type(seconds).__name__}; for a timedelta use every(...)")
        if not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"Interval(seconds={seconds!r}): the period must be a positive "
                             f"number of seconds, e.g. every(timedelta(minutes=5))")
        self._micro = round(seconds * 1_000_000)
        if self._micro < 1:
            raise ValueError(f"Interval(seconds={seconds!r}): the shortest period is one "
                             f"microsecond")
        self._seconds = float(seconds)

    @property
    def seconds(self) -> float:
        return self._seconds

    def describe(self) -> str:
        """For people: ``every 5 minutes``, ``every hour``, ``every 1.5 seconds``."""
        for unit, name in ((86_400, "day"), (3600, "hour"), (60, "minute"), (1, "second")):
            count, rest = divmod(self._micro, unit * 1_000_000)
            if not rest:
                return f"every {name}" if count == 1 else f"every {count} {name}s"
        return f"every {self._seconds:g} seconds"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Interval):
            return NotImplemented
        return self._micro == other._micro

    def __hash__(self) -> int:
        return hash(("Interval", self._micro))

    def __repr__(self) -> str:
        seconds = self._seconds
        return f"Interval(seconds={int(seconds) if seconds.is_integer() else seconds!r})"

    def ticks(self, since: datetime, until: datetime,
              tz: tzinfo | str | None = None) -> Iterator[datetime]:
        """Grid instants ``t`` with ``since < t <= until``, ascending, aware UTC; lazy.

        ``since`` and ``until`` must be aware (ValueError otherwise). ``tz`` is ignored.
        """
        first = _to_utc(since, "since") - _EPOCH.replace(tzinfo=None)
        last = _to_utc(until, "until") - _EPOCH.replace(tzinfo=None)
        return self._ticks(first // _ONE_MICROSECOND // self._micro + 1,
                           last // _ONE_MICROSECOND // self._micro)

    def _ticks(self, first: int, last: int) -> Iterator[datetime]:
        for k in range(first, last + 1):
            yield _EPOCH + timedelta(microseconds=k * self._micro)

    def next_after(self, t: datetime, tz: tzinfo | str | None = None) -> datetime:
        """The first grid instant after ``t`` (aware UTC)."""
        since = _to_utc(t, "t") - _EPOCH.replace(tzinfo=None)
        k = since // _ONE_MICROSECOND // self._micro + 1
        return _EPOCH + timedelta(microseconds=k * self._micro)

    def latest(self, t: datetime, tz: tzinfo | str | None = None) -> datetime:
        """The last grid instant at or before ``t`` (aware UTC); always exists."""
        until = _to_utc(t, "t") - _EPOCH.replace(tzinfo=None)
        k = until // _ONE_MICROSECOND // self._micro
        return _EPOCH + timedelta(microseconds=k * self._micro)


def every(value: timedelta | float) -> Interval:
    """``every(timedelta(minutes=5))`` or ``every(300)``: an ``Interval``."""
    if isinstance(value, timedelta):
        if value <= timedelta(0):
            raise ValueError(f"every({value!r}): the period must be positive, e.g. "
                             f"every(timedelta(minutes=5))")
        return Interval(value / timedelta(seconds=1))
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"every({value!r}): expected a timedelta or a number of seconds; got "
                         f"{type(value).__name__}")
    return Interval(value)


def parse_schedule(value: Any, tz: tzinfo | str | None = None) -> crontab | Interval:
    """A schedule from what users write in settings or the admin.

    A crontab is returned as is (read in ``tz`` when it has no zone of its own and ``tz`` is
    given); an Interval as is; a str goes to ``crontab.from_string``; a timedelta or a number
    of seconds (not a bool) becomes an Interval. Anything else raises ValueError.
    """
    if isinstance(value, crontab):
        return value.with_tz(tz) if value.tz is None and tz is not None else value
    if isinstance(value, Interval):
        return value
    if isinstance(value, str):
        return crontab.from_string(value, tz=tz)
    if isinstance(value, timedelta) or (
            isinstance(value, numbers.Real) and not isinstance(value, bool)):
        return every(value)
    raise ValueError(f"schedule {value!r}: expected a crontab(...), a cron string such as "
                     f"'0 0 * * *' or '@daily', every(...), a timedelta, or a number of "
                     f"seconds; got {type(value).__name__}")
