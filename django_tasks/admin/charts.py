"""Server-rendered SVG for the dashboard: bar charts drawn as plain shapes, no script
and no library (admins run on closed networks; a CDN is not an option)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.utils import timezone

__all__ = ["Bar", "BarChart", "bar_chart", "duration"]

WIDTH, HEIGHT = 720, 160
LEFT, BOTTOM, TOP = 44, 18, 8


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    ok_y: float
    ok_height: float
    failed_y: float
    failed_height: float
    title: str


@dataclass(frozen=True)
class BarChart:
    width: int
    height: int
    left: int
    base: float
    bars: list[Bar]
    ticks: list[tuple[float, str]]  #: (y, label) of the value axis
    labels: list[tuple[float, str]]  #: (x, label) of the time axis
    total: int
    failed: int


def _nice(top: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten at or above ``top``."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= top:
                return m * step
        step *= 10


def bar_chart(points: Sequence[tuple[datetime, int, int]], bucket: timedelta) -> BarChart:
    """Stacked bars (finished, of which failed in red) per ``bucket``, as coordinates."""
    top = _nice(max([ok + failed for _, ok, failed in points] + [1]))
    plot_w, plot_h = WIDTH - LEFT - 4, HEIGHT - BOTTOM - TOP
    step = plot_w / max(1, len(points))
    base = TOP + plot_h
    bars, labels = [], []
    every = max(1, len(points) // 6)
    zone = timezone.get_current_timezone()
    fmt = "%a %H:%M" if bucket >= timedelta(hours=1) else "%H:%M"
    for i, (at, ok, failed) in enumerate(points):
        x = LEFT + i * step
        ok_h, failed_h = plot_h * ok / top, plot_h * failed / top
        local = timezone.localtime(at, zone)
        bars.append(Bar(
            x=round(x + step * 0.1, 2), width=round(max(step * 0.8, 0.5), 2),
            ok_y=round(base - ok_h - failed_h, 2), ok_height=round(ok_h, 2),
            failed_y=round(base - failed_h, 2), failed_height=round(failed_h, 2),
            title=f"{local:%Y-%m-%d %H:%M}: {ok + failed} finished, {failed} failed",
        ))
        if i % every == 0:
            labels.append((round(x, 2), local.strftime(fmt)))
    ticks = [(round(base - plot_h * f, 2), f"{top * f:g}") for f in (0, 0.5, 1)]
    return BarChart(WIDTH, HEIGHT, LEFT, base, bars, ticks, labels,
                    total=sum(ok + failed for _, ok, failed in points),
                    failed=sum(failed for _, _, failed in points))


def duration(seconds: float | timedelta | None) -> str:
    """A short human duration: "850 ms", "12.5 s", "3 min 20 s", "2 h 5 min", "> 1 h"."""
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    if seconds is None:
        return "-"
    if seconds == float("inf"):
        return "> 1 h"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    if seconds < 86400:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"
    return f"{int(seconds // 86400)} d {int(seconds % 86400 // 3600)} h"
