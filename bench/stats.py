"""
Small statistics: percentiles of latency samples, and the median and range
of repeated runs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence


def percentile(ordered: Sequence[float], q: float) -> float:
    """
    The C{q}-th percentile (0 < q <= 100) of sorted values, by nearest rank:
    the smallest value that at least C{q}% of the values are less than or
    equal to.

    @raise ValueError: there are no values.
    """
    if not ordered:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError(f"q must be in (0, 100], not {q}")
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_summary(samples_ns: Iterable[int], prefix: str = "lat") -> dict[str, float | int]:
    """
    The count, median, 99th percentile and maximum of latency samples given
    in ns, in µs: C{{prefix}_samples}, C{{prefix}_p50_us}, C{{prefix}_p99_us},
    C{{prefix}_max_us}.  Without samples, only the count (0).
    """
    ordered = sorted(samples_ns)
    summary: dict[str, float | int] = {f"{prefix}_samples": len(ordered)}
    if ordered:
        summary[f"{prefix}_p50_us"] = round(percentile(ordered, 50) / 1000, 1)
        summary[f"{prefix}_p99_us"] = round(percentile(ordered, 99) / 1000, 1)
        summary[f"{prefix}_max_us"] = round(ordered[-1] / 1000, 1)
    return summary


# The most points a chunk of many messages becomes in
# message_latency_summary.
SPAN_POINTS = 32


def message_latency_summary(spans: Sequence[int],
                            prefix: str = "msg_lat") -> dict[str, float | int]:
    """
    Every message's latency, estimated from chunks (see
    L{bench.wire.LineCounter}): C{spans} is, for each chunk, its lines and
    the latencies (ns) of its first and last lines.  The messages of a chunk
    were received together and sent in order, so their latencies are taken
    to run evenly from the first's to the last's (exact at a fixed rate).

    @return: in µs, C{{prefix}_p50_us}, C{{prefix}_p99_us} and
        C{{prefix}_max_us}, each message weighing the same, and
        C{{prefix}_messages}, the messages counted; only the latter (0)
        without chunks.
    """
    points: list[tuple[int, float]] = []
    total = 0
    for i in range(0, len(spans) - 2, 3):
        lines, first, last = spans[i], spans[i + 1], spans[i + 2]
        total += lines
        if lines == 1 or first == last:
            points.append((last, lines))
            continue
        n = min(lines, SPAN_POINTS)
        points += [(last + (first - last) * j // (n - 1), lines / n) for j in range(n)]
    summary: dict[str, float | int] = {f"{prefix}_messages": total}
    if not points:
        return summary
    points.sort()
    for q, name in ((50, "p50"), (99, "p99")):
        # By nearest rank, as percentile(): the smallest latency that at
        # least q% of the messages have or less.
        goal, reached, index = q / 100 * total - 1e-9, 0.0, -1
        while reached < goal:
            index += 1
            reached += points[index][1]
        summary[f"{prefix}_{name}_us"] = round(points[max(0, index)][0] / 1000, 1)
    summary[f"{prefix}_max_us"] = round(points[-1][0] / 1000, 1)
    return summary


def spread(values: Sequence[float]) -> dict[str, float]:
    """
    The median, minimum and maximum of repeated measurements.
    """
    if not values:
        raise ValueError("no values")
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def aggregate(runs: Sequence[dict[str, object]], key: Sequence[str]) -> list[dict[str, object]]:
    """
    Group runs that agree on the fields C{key}, and summarize each group:
    every numeric field becomes its L{spread} over the group, a string
    field the distinct values joined by C{" / "} (so one failed repeat
    shows in C{status}), and C{repeats} counts the runs.

    Groups keep the order of their first run.
    """
    groups: dict[tuple[object, ...], list[dict[str, object]]] = {}
    for run in runs:
        groups.setdefault(tuple(run.get(k) for k in key), []).append(run)
    summary = []
    for members in groups.values():
        row: dict[str, object] = {"repeats": len(members)}
        for field, value in members[0].items():
            numbers = [m[field] for m in members
                       if isinstance(m.get(field), (int, float)) and not isinstance(m[field], bool)]
            if field in key or isinstance(value, bool):
                row[field] = value
            elif isinstance(value, str):
                distinct = dict.fromkeys(str(m.get(field, "")) for m in members)
                row[field] = " / ".join(distinct)
            elif not numbers:
                row[field] = value
            else:
                row[field] = spread(numbers)  # type: ignore[arg-type]
        summary.append(row)
    return summary


def median(row: dict[str, object], field: str) -> float | None:
    """
    The median of an aggregated field, or its value if it was not a
    number in every run; L{None} if the row does not have it.
    """
    value = row.get(field)
    if isinstance(value, dict):
        return value["median"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None
