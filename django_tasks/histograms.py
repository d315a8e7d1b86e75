"""The fixed duration buckets of the statistics table, and percentiles read from them.

Each statistics row (:class:`django_tasks.models.Statistic`) counts the observations of
run time and time in queue at or under each bound (``run_le_1s`` ...), as Prometheus'
cumulative ``le`` buckets do, so a metrics endpoint serves them as they are and
percentiles are estimated from sums of rows. The bounds are Prometheus' default buckets
(5 ms to 10 s) and a few longer ones for tasks and backlogs (30 s to 1 h); fixed, so rows
of every minute add up column by column.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["BOUNDS", "RUN_COLUMNS", "WAIT_COLUMNS", "percentile"]

#: (upper bound in seconds, column suffix), ascending.
BOUNDS: tuple[tuple[float, str], ...] = (
    (0.005, "5ms"), (0.01, "10ms"), (0.025, "25ms"), (0.05, "50ms"), (0.1, "100ms"),
    (0.25, "250ms"), (0.5, "500ms"), (1.0, "1s"), (2.5, "2s5"), (5.0, "5s"), (10.0, "10s"),
    (30.0, "30s"), (60.0, "1m"), (300.0, "5m"), (900.0, "15m"), (3600.0, "1h"),
)
#: The bucket columns of run time and of time in queue, in bound order.
RUN_COLUMNS = tuple(f"run_le_{suffix}" for _, suffix in BOUNDS)
WAIT_COLUMNS = tuple(f"wait_le_{suffix}" for _, suffix in BOUNDS)


def percentile(q: float, count: int, buckets: Sequence[int],
               bounds: Sequence[float] | None = None) -> float | None:
    """The ``q`` quantile (0 < q < 1) of ``count`` observations whose cumulative bucket
    counts are ``buckets`` (one per bound), interpolated linearly inside the bucket it
    falls in (as Prometheus' ``histogram_quantile``). None without observations;
    ``inf`` if it lies beyond the last bound."""
    if count <= 0:
        return None
    bounds = bounds or [b for b, _ in BOUNDS]
    rank = q * count
    below, lower = 0, 0.0
    for bound, cumulative in zip(bounds, buckets, strict=True):
        if cumulative >= rank:
            inside = cumulative - below
            if inside <= 0:
                return bound
            return lower + (bound - lower) * (rank - below) / inside
        below, lower = cumulative, bound
    return float("inf")


def bucket_values(row: Mapping[str, int], columns: Sequence[str]) -> list[int]:
    """The bucket counts of ``row`` (a dict of a statistics row or of sums) in bound order."""
    return [int(row.get(c) or 0) for c in columns]
