"""
What the runs of a suite become: a summary (the median and range of the
repeats, ratios against Redis from the same repeat), tables on stdout, a
JSON file and a PNG plot.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.stats import aggregate, median, spread

# What identifies a group of repeated runs.
KEY = ("scenario", "server", "kind", "S", "P", "rate", "policy", "stalled")

Row = dict[str, Any]

# The most a publish may cost with idle pattern subscriptions that match
# nothing published, against none (backplane's server CPU per delivery,
# with / without; issue 18).
PATTERNS_TARGET = 1.1


def summarize(runs: Sequence[Row]) -> list[Row]:
    """
    One row per group of repeated runs (L{KEY}): every figure as its
    median, minimum and maximum.
    """
    return aggregate(runs, KEY)


def fanout_ratios(runs: Sequence[Row]) -> list[Row]:
    """
    backplane / Redis for delivered msgs/s and for server CPU per delivery,
    by subscriber count: one ratio for each repeat (both servers measured
    in the same repeat), summarized as median, minimum and maximum.
    """
    return _ratios(runs, "fanout", "S", "server", "backplane", "redis")


def resp_ratios(runs: Sequence[Row]) -> list[Row]:
    """
    backplane's Redis port over Redis, by S, over the Redis protocol.
    """
    return _ratios(runs, "resp", "S", "server", "backplane", "redis")


def patterns_ratios(runs: Sequence[Row]) -> list[Row]:
    """
    With / without the idle pattern subscriptions, for delivered msgs/s and
    server CPU per delivery, by server, from runs of the same repeat; for
    backplane, whether the median CPU ratio meets L{PATTERNS_TARGET}
    (C{target_met}).
    """
    ratios = _ratios(runs, "patterns", "server", "kind", "patterns", "no patterns")
    for ratio in ratios:
        cpu = ratio.get("server_cpu_us_per_delivery")
        if ratio["server"] == "backplane" and cpu:
            ratio.update(target=PATTERNS_TARGET, target_met=cpu["median"] <= PATTERNS_TARGET)
    return ratios


def auth_ratios(runs: Sequence[Row]) -> list[Row]:
    """
    With C{auth} over without, for delivered msgs/s and server CPU per
    delivery, by rate (0: full speed), from runs of the same repeat.
    """
    return _ratios(runs, "auth", "rate", "kind", "auth on", "auth off")


def stalled_ratios(runs: Sequence[Row]) -> list[Row]:
    """
    With / without the stalled subscriber, for delivered msgs/s and server
    CPU per delivery, by C{slow} policy, from runs of the same repeat.
    """
    return _ratios(runs, "stalled", "policy", "stalled", 1, 0)


def nodes_ratios(runs: Sequence[Row]) -> list[Row]:
    """
    Two nodes / one node, for delivered msgs/s and for server CPU per
    delivery (the two nodes' and Redis's together), by subscriber count,
    from runs of the same repeat.
    """
    return _ratios(runs, "nodes", "S", "kind", "2 nodes", "1 node")


def websocket_ratios(runs: Sequence[Row]) -> list[Row]:
    """
    WebSocket subscribers alone / line subscribers alone, for delivered
    msgs/s and server CPU per delivery, from runs of the same repeat.
    """
    return _ratios(runs, "websocket", "S", "kind", "websocket", "lines")


def history_ratios(runs: Sequence[Row]) -> list[Row]:
    """
    With a memory history / with no history, and with a store / with no
    history, for delivered msgs/s and server CPU per delivery, by
    subscriber count, from runs of the same repeat (and the same server).
    """
    return [{"kind": kind, **ratio} for kind in ("history", "store")
            for ratio in _ratios(runs, "history", "S", "kind", kind, "no history")]


def replay_deltas(runs: Sequence[Row]) -> list[Row]:
    """
    What a replay beside the live subscribers changed, paired by repeat:
    their p50 and p99 latency (of each chunk's last message, and estimated
    for every message) with the replay minus without (µs), and the
    server's CPU with the replay minus without (in percent of one CPU).
    """
    measured = {(r["repeat"], r.get("kind")): r for r in runs
                if r["scenario"] == "replay" and "lat_p99_us" in r}
    deltas: dict[str, list[float]] = {"lat_p50_us": [], "lat_p99_us": [],
                                      "msg_lat_p50_us": [], "msg_lat_p99_us": [],
                                      "server_cpu_pct": []}
    for (repeat, kind), row in measured.items():
        other = measured.get((repeat, "live"))
        if kind != "live + replay" or other is None:
            continue
        for field, values in deltas.items():
            if field in row and field in other:
                values.append(round(row[field] - other[field], 1))
    return [{f: spread(v) for f, v in deltas.items() if v}] if deltas["lat_p99_us"] else []


def _ratios(runs: Sequence[Row], scenario: str, by: str, versus: str, numerator: object,
            denominator: object) -> list[Row]:
    measured = {(r["repeat"], r.get(by), r.get(versus)): r for r in runs
                if r["scenario"] == scenario and "delivered_msgs_per_s" in r}
    groups: dict[object, dict[str, list[float]]] = {}
    for (repeat, group, side), row in measured.items():
        other = measured.get((repeat, group, denominator))
        if side != numerator or other is None:
            continue
        ratios = groups.setdefault(group, {"delivered_msgs_per_s": [],
                                           "server_cpu_us_per_delivery": []})
        for field, values in ratios.items():
            if other[field]:
                values.append(round(row[field] / other[field], 3))
    return [{by: group, **{f: spread(v) for f, v in ratios.items() if v}}
            for group, ratios in groups.items()]


def sweep_name(row: Row) -> str:
    """
    A sweep run's server as the tables and the plot name it: C{backplane},
    C{backplane linger=0.001}, C{redis}, C{nats}.
    """
    return f"{row['server']} {row['kind']}" if row.get("kind") else str(row["server"])


def sweep_ratios(runs: Sequence[Row]) -> list[Row]:
    """
    Each server's CPU per delivery and p99 latency (every message's) over
    Redis's at the same rate, paired by repeat, summarized as median,
    minimum and maximum.
    """
    measured = {(r["repeat"], r["rate"], sweep_name(r)): r for r in runs
                if r["scenario"] == "sweep" and "server_cpu_us_per_delivery" in r}
    groups: dict[tuple[object, str], dict[str, list[float]]] = {}
    for (repeat, rate, name), row in measured.items():
        redis = measured.get((repeat, rate, "redis"))
        if name == "redis" or redis is None:
            continue
        ratios = groups.setdefault((rate, name), {"server_cpu_us_per_delivery": [],
                                                  "msg_lat_p99_us": []})
        for field, values in ratios.items():
            if row.get(field) is not None and redis.get(field):
                values.append(round(row[field] / redis[field], 3))
    return [{"rate": rate, "name": name, **{f: spread(v) for f, v in ratios.items() if v}}
            for (rate, name), ratios in groups.items()]


def document(meta: Row, runs: Sequence[Row], skipped: dict[str, dict[str, str]]) -> Row:
    """
    Everything a suite produced, as written to the JSON file.
    """
    summary = summarize(runs)
    result: Row = {"meta": meta, "runs": list(runs), "summary": summary, "skipped": skipped}
    if any(r["scenario"] == "fanout" for r in runs):
        result["ratios"] = fanout_ratios(runs)
    if any(r["scenario"] == "resp" for r in runs):
        result["resp_ratios"] = resp_ratios(runs)
    if any(r["scenario"] == "patterns" for r in runs):
        result["patterns_ratios"] = patterns_ratios(runs)
    if any(r["scenario"] == "auth" for r in runs):
        result["auth_ratios"] = auth_ratios(runs)
    if any(r["scenario"] == "stalled" for r in runs):
        result["stalled_ratios"] = stalled_ratios(runs)
    if any(r["scenario"] == "nodes" for r in runs):
        result["nodes_ratios"] = nodes_ratios(runs)
    if any(r["scenario"] == "websocket" for r in runs):
        result["websocket_ratios"] = websocket_ratios(runs)
    if any(r["scenario"] == "history" for r in runs):
        result["history_ratios"] = history_ratios(runs)
    if any(r["scenario"] == "replay" for r in runs):
        result["replay_deltas"] = replay_deltas(runs)
    if any(r["scenario"] == "sweep" for r in runs):
        result["sweep_ratios"] = sweep_ratios(runs)
    return result


def write_json(path: Path, data: Row) -> None:
    """
    Write C{data} to C{path} as indented JSON.
    """
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")


# Formatting.

def significant(value: float) -> str:
    """
    A number with three significant digits, never in exponent form:
    C{0.0779}, C{1.22}, C{586}, C{9730386}.
    """
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    text = f"{value:.3g}"
    if "e" in text:
        return f"{value:.6f}".rstrip("0").rstrip(".")
    return text


def si(value: float) -> str:
    """
    A rate with three significant digits and a k or M suffix.
    """
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{suffix}"
    return significant(value)


def cell(row: Row, field: str, style: Callable[[float], str] = significant,
         scale: float = 1.0, ranged: bool = True) -> str:
    """
    A figure of a summary row: its median, and (if C{ranged}) its range
    when repeats differ, e.g. C{9.73M (9.1M..10.2M)}; C{-} where the row
    has none.
    """
    value = row.get(field)
    if isinstance(value, dict):
        text = style(value["median"] * scale)
        if ranged and value["min"] != value["max"]:
            text += f" ({style(value['min'] * scale)}..{style(value['max'] * scale)})"
        return text
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return style(value * scale)
    return "-" if value is None else str(value)


def each(row: Row, fields: Sequence[str], style: Callable[[float], str] = significant,
         scale: float = 1.0, worst_of: bool = False) -> str:
    """
    The medians (or, if C{worst_of}, the largest values) of several figures
    of a row in one cell, C{"a/b/c"}; C{-} for each one the row lacks, and
    C{-} alone if it has none.
    """
    texts = [worst(row, f) if worst_of else cell(row, f, style, scale, ranged=False)
             for f in fields]
    return "-" if all(t == "-" for t in texts) else "/".join(texts)


def worst(row: Row, field: str) -> str:
    """
    The largest value of a count over the repeats (for counts that must be
    0, such as C{lost}).
    """
    value = row.get(field)
    if isinstance(value, dict):
        value = value["max"]
    return "-" if value is None else significant(value)


def render(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """
    A plain-text table: the first and last columns left-aligned, the
    others right-aligned.
    """
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for r in [headers, ["-" * w for w in widths], *rows]:
        cells = []
        for i, (text, width) in enumerate(zip(r, widths, strict=True)):
            left = i == 0 or i == len(headers) - 1
            cells.append(str(text).ljust(width) if left else str(text).rjust(width))
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _scenario(summary: Sequence[Row], name: str) -> list[Row]:
    return [r for r in summary if r["scenario"] == name]


def fanout_table(summary: Sequence[Row], ratios: Sequence[Row],
                 scenario: str = "fanout") -> str:
    """
    The fan-out runs (of C{scenario}: C{"fanout"}, or C{"resp"} over the
    Redis protocol): throughput, CPU, latency (queueing at full speed) and
    loss, with backplane/Redis ratios.
    """
    versus = {r["S"]: r for r in ratios}
    rows = []
    for r in _scenario(summary, scenario):
        ratio = versus.get(r["S"], {}) if r["server"] == "backplane" else {}
        rows.append([
            r["server"], cell(r, "S"), cell(r, "delivered_msgs_per_s", si),
            cell(ratio, "delivered_msgs_per_s") if ratio else "",
            cell(r, "server_cpu_us_per_delivery"),
            cell(ratio, "server_cpu_us_per_delivery") if ratio else "",
            *(cell(r, field, ranged=False)
              for field in ("server_cpu_pct", "gen_cpu_pct", "host_other_pct")),
            cell(r, "lat_p50_us", scale=1e-3, ranged=False),
            cell(r, "lat_p99_us", scale=1e-3, ranged=False), worst(r, "lost"),
            r.get("status", "-"),
        ])
    return render(["server", "S", "delivered msgs/s", "x Redis", "CPU µs/delivery", "x Redis",
                   "srv CPU%", "gen CPU%", "other%", "p50 ms", "p99 ms", "lost", "status"], rows)


def auth_table(summary: Sequence[Row], ratios: Sequence[Row]) -> str:
    """
    Fan-out through ports without and with C{auth}, at full speed and at a
    fixed rate, with the ratios on / off.
    """
    versus = {r["rate"]: r for r in ratios}
    rows = []
    for r in sorted(_scenario(summary, "auth"), key=lambda r: (r["rate"], r["kind"])):
        ratio = versus.get(r["rate"], {}) if r["kind"] == "auth on" else {}
        rows.append([
            r["kind"], cell(r, "S"), si(r["rate"]) if r["rate"] else "full",
            cell(r, "delivered_msgs_per_s", si),
            cell(ratio, "delivered_msgs_per_s") if ratio else "",
            cell(r, "server_cpu_us_per_delivery"),
            cell(ratio, "server_cpu_us_per_delivery") if ratio else "",
            cell(r, "lat_p99_us", ranged=False),
            *(cell(r, field, ranged=False)
              for field in ("server_cpu_pct", "gen_cpu_pct", "host_other_pct")),
            worst(r, "lost"), r.get("status", "-"),
        ])
    return render(["backplane", "S", "msgs/s", "delivered msgs/s", "x off", "CPU µs/delivery",
                   "x off", "p99 µs", "srv CPU%", "gen CPU%", "other%", "lost", "status"], rows)


def patterns_table(summary: Sequence[Row], ratios: Sequence[Row]) -> str:
    """
    The fan-out over the Redis protocol without and with idle pattern
    subscriptions, on each server, with the ratios with / without and, for
    backplane, the target (L{PATTERNS_TARGET}) met or missed.
    """
    versus = {r["server"]: r for r in ratios}
    rows = []
    for r in _scenario(summary, "patterns"):
        ratio = versus.get(r["server"], {}) if r["kind"] == "patterns" else {}
        rows.append([
            r["server"], cell(r, "patterns", ranged=False), cell(r, "S"),
            cell(r, "delivered_msgs_per_s", si),
            cell(ratio, "delivered_msgs_per_s") if ratio else "",
            cell(r, "server_cpu_us_per_delivery"),
            cell(ratio, "server_cpu_us_per_delivery") if ratio else "",
            *(cell(r, field, ranged=False)
              for field in ("server_cpu_pct", "gen_cpu_pct", "host_other_pct")),
            worst(r, "lost"), r.get("status", "-"),
        ])
    lines = [render(["server", "patterns", "S", "delivered msgs/s", "x none",
                     "CPU µs/delivery", "x none", "srv CPU%", "gen CPU%", "other%", "lost",
                     "status"], rows), ""]
    for r in ratios:
        line = (f"{r['server']}: with / without the patterns: "
                f"{cell(r, 'server_cpu_us_per_delivery')} x the CPU per delivery, "
                f"{cell(r, 'delivered_msgs_per_s')} x the msgs/s")
        if "target_met" in r:
            median = r["server_cpu_us_per_delivery"]["median"]
            line += (f"; target at most {r['target']}x the CPU per delivery: "
                     f"{'met' if r['target_met'] else 'MISSED'} (median {median:.3f})")
        lines.append(line)
    return "\n".join(lines).rstrip()


def latency_table(summary: Sequence[Row]) -> str:
    """
    The fixed-rate runs: latency from send to receive.
    """
    rows = [[
        r["server"], cell(r, "S"), cell(r, "rate", si), cell(r, "lat_p50_us"),
        cell(r, "lat_p99_us"), worst(r, "lat_max_us"),
        cell(r, "lat_samples", si, ranged=False), cell(r, "server_cpu_us_per_delivery"),
        cell(r, "server_cpu_pct", ranged=False), cell(r, "sched_lag_max_us", ranged=False),
        worst(r, "lost"), r.get("status", "-"),
    ] for r in _scenario(summary, "latency")]
    return render(["server", "S", "msgs/s", "p50 µs", "p99 µs", "max µs", "samples",
                   "CPU µs/delivery", "srv CPU%", "send lag max µs", "lost", "status"], rows)


def sweep_table(summary: Sequence[Row], ratios: Sequence[Row]) -> str:
    """
    The rate sweep: for each rate and server, whether it kept up (delivered
    msgs/s over the rate times S), its CPU per delivery (and over Redis's),
    every message's latency (p50, p99, max; from the time each was due) and
    the per-chunk p99, the messages the publisher wrote a write and the
    server sent a C{send} (a TCP segment its subscribers received), and
    loss.
    """
    versus = {(r["rate"], r["name"]): r for r in ratios}
    rows = []
    for r in sorted(_scenario(summary, "sweep"), key=lambda r: (r["rate"], sweep_name(r))):
        ratio = versus.get((r["rate"], sweep_name(r)), {})
        offered = r["rate"] * r["S"]
        kept = median(r, "delivered_msgs_per_s")
        rows.append([
            sweep_name(r), cell(r, "S"), si(r["rate"]), cell(r, "delivered_msgs_per_s", si),
            significant(kept / offered) if kept and offered else "-",
            cell(r, "server_cpu_us_per_delivery"),
            cell(ratio, "server_cpu_us_per_delivery") if ratio else "",
            cell(r, "server_cpu_pct", ranged=False),
            cell(r, "msg_lat_p50_us"), cell(r, "msg_lat_p99_us"),
            cell(ratio, "msg_lat_p99_us") if ratio else "", worst(r, "msg_lat_max_us"),
            cell(r, "lat_p99_us", ranged=False), cell(r, "msgs_per_write", ranged=False),
            cell(r, "msgs_per_segment", ranged=False), cell(r, "gen_cpu_pct", ranged=False),
            cell(r, "host_other_pct", ranged=False), worst(r, "lost"), r.get("status", "-"),
        ])
    return render(["server", "S", "msgs/s", "delivered msgs/s", "x offered", "CPU µs/delivery",
                   "x Redis", "srv CPU%", "p50 µs", "p99 µs", "x Redis", "max µs",
                   "chunk p99 µs", "msgs/write", "msgs/send", "gen CPU%", "other%", "lost",
                   "status"], rows)


def fanin_table(summary: Sequence[Row], skipped: dict[str, dict[str, str]]) -> str:
    """
    The fan-in runs: lines written a second, checked against the file.
    """
    if "fanin" in skipped:
        return f"fan-in: skipped, {skipped['fanin']['reason']}"
    rows = [[
        r["server"], cell(r, "P"), cell(r, "lines_per_s", si),
        cell(r, "file_lines", si, ranged=False), worst(r, "lost"), worst(r, "sequence_errors"),
        cell(r, "server_cpu_us_per_delivery"), cell(r, "server_cpu_pct", ranged=False),
        cell(r, "gen_cpu_pct", ranged=False), r.get("status", "-"),
    ] for r in _scenario(summary, "fanin")]
    return render(["server", "P", "lines/s written", "file lines", "lost", "out of order",
                   "CPU µs/line", "srv CPU%", "gen CPU%", "status"], rows)


def idle_table(summary: Sequence[Row]) -> str:
    """
    The idle-scale runs: memory a subscriber, and how long a tick takes to
    reach them all.
    """
    rows = [[
        r["server"], cell(r, "S"), cell(r, "rss_per_subscriber_bytes"),
        *(cell(r, field, scale=1e-3, ranged=False) for field in (
            "tick_lat_p50_us", "tick_lat_p99_us", "clock_spread_p50_us",
            "clock_spread_p99_us", "clock_spread_max_us")),
        cell(r, "server_cpu_ms_per_tick", ranged=False),
        cell(r, "gen_cpu_ms_per_tick", ranged=False),
        cell(r, "server_cpu_pct", ranged=False), worst(r, "lost"), r.get("status", "-"),
    ] for r in _scenario(summary, "idle")]
    return render(["server", "S", "RSS B/subscriber", "tick p50 ms", "tick p99 ms",
                   "clock spread p50 ms", "p99 ms", "max ms", "srv CPU ms/tick",
                   "gen CPU ms/tick", "srv CPU%", "lost", "status"], rows)


def stalled_table(summary: Sequence[Row], ratios: Sequence[Row]) -> str:
    """
    The stalled-subscriber runs, and the cost of the stalled one to the
    others (with / without).
    """
    rows = [[
        r["policy"], cell(r, "stalled"), cell(r, "S"), cell(r, "delivered_msgs_per_s", si),
        cell(r, "server_cpu_us_per_delivery"), cell(r, "server_cpu_pct", ranged=False),
        cell(r, "host_other_pct"), cell(r, "server_rss_growth_kib", scale=1 / 1024),
        cell(r, "stalled_disconnected"), worst(r, "lost"), r.get("status", "-"),
    ] for r in _scenario(summary, "stalled")]
    table = render(["slow", "stalled", "S", "delivered msgs/s", "CPU µs/delivery", "srv CPU%",
                    "other%", "srv RSS growth MiB", "stalled one disconnected", "lost", "status"],
                   rows)
    lines = [table, ""]
    for r in ratios:
        lines.append(f"slow = {r['policy']!r}: with / without the stalled subscriber: "
                     f"{cell(r, 'delivered_msgs_per_s')} x the msgs/s, "
                     f"{cell(r, 'server_cpu_us_per_delivery')} x the CPU per delivery")
    return "\n".join(lines).rstrip()


def nodes_table(summary: Sequence[Row], ratios: Sequence[Row]) -> str:
    """
    Two nodes sharing the backplane through Redis beside one node: the
    subscribers' msgs/s on each node, each process's CPU per delivery,
    latency and loss on each node, with two nodes / one node ratios.
    """
    versus = {r["S"]: r for r in ratios}
    rows = []
    for r in _scenario(summary, "nodes"):
        two = r["kind"] == "2 nodes"
        ratio = versus.get(r["S"], {}) if two else {}
        rows.append([
            r["kind"], cell(r, "S"), cell(r, "delivered_msgs_per_s", si),
            cell(r, "A_msgs_per_s", si, ranged=False), cell(r, "B_msgs_per_s", si, ranged=False),
            cell(ratio, "delivered_msgs_per_s") if ratio else "",
            cell(r, "server_cpu_us_per_delivery"),
            cell(ratio, "server_cpu_us_per_delivery") if ratio else "",
            *(cell(r, f"{p}_cpu_us_per_delivery", ranged=False) for p in ("A", "B", "redis")),
            each(r, ["A_cpu_pct", "B_cpu_pct", "redis_cpu_pct"]) if two
            else cell(r, "server_cpu_pct", ranged=False),
            cell(r, "gen_cpu_pct", ranged=False), cell(r, "host_other_pct", ranged=False),
            *(each(r, [f"A_lat_{q}_us", f"B_lat_{q}_us"] if two else [f"lat_{q}_us"],
                   scale=1e-3) for q in ("p50", "p99")),
            each(r, ["A_lost", "B_lost"] if two else ["lost"], worst_of=True),
            r.get("status", "-"),
        ])
    return render(["nodes", "S", "delivered msgs/s", "on A", "on B", "x 1 node",
                   "CPU µs/delivery", "x 1 node", "A µs/del", "B µs/del", "Redis µs/del",
                   "CPU% (A/B/Redis)", "gen CPU%", "other%", "p50 ms (A/B)", "p99 ms (A/B)",
                   "lost (A/B)", "status"], rows)


def websocket_table(summary: Sequence[Row], ratios: Sequence[Row]) -> str:
    """
    WebSocket subscribers beside line subscribers of one backplane, and each
    kind alone: msgs/s, latency and loss of each kind, the server's CPU per
    delivery (of both kinds together), and WebSocket / lines alone.
    """
    rows = [[
        r["kind"], cell(r, "S"), cell(r, "delivered_msgs_per_s", si),
        cell(r, "lines_msgs_per_s", si), cell(r, "ws_msgs_per_s", si),
        cell(r, "server_cpu_us_per_delivery"),
        *(cell(r, field, ranged=False)
          for field in ("server_cpu_pct", "gen_cpu_pct", "host_other_pct")),
        *(each(r, [f"lines_lat_{q}_us", f"ws_lat_{q}_us"], scale=1e-3) for q in ("p50", "p99")),
        each(r, ["lines_lost", "ws_lost"], worst_of=True), r.get("status", "-"),
    ] for r in _scenario(summary, "websocket")]
    lines = [render(["subscribers", "S", "delivered msgs/s", "lines msgs/s", "WebSocket msgs/s",
                     "CPU µs/delivery", "srv CPU%", "gen CPU%", "other%",
                     "p50 ms (lines/ws)", "p99 ms (lines/ws)", "lost (lines/ws)", "status"],
                    rows), ""]
    for r in ratios:
        lines.append(f"WebSocket alone / lines alone, S = {r['S']}: "
                     f"{cell(r, 'delivered_msgs_per_s')} x the msgs/s, "
                     f"{cell(r, 'server_cpu_us_per_delivery')} x the CPU per delivery")
    return "\n".join(lines).rstrip()


def history_table(summary: Sequence[Row], ratios: Sequence[Row]) -> str:
    """
    Fan-out to plain subscribers of a backplane without a history, with a
    memory history and with a store: throughput, CPU, latency (queueing at
    full speed) and loss, with ratios to no history.
    """
    versus = {(r["kind"], r["S"]): r for r in ratios}
    rows = []
    for r in _scenario(summary, "history"):
        ratio = versus.get((r["kind"], r["S"]), {})
        rows.append([
            r["kind"], cell(r, "S"), cell(r, "delivered_msgs_per_s", si),
            cell(ratio, "delivered_msgs_per_s") if ratio else "",
            cell(r, "server_cpu_us_per_delivery"),
            cell(ratio, "server_cpu_us_per_delivery") if ratio else "",
            *(cell(r, field, ranged=False)
              for field in ("server_cpu_pct", "gen_cpu_pct", "host_other_pct")),
            cell(r, "lat_p50_us", scale=1e-3, ranged=False),
            cell(r, "lat_p99_us", scale=1e-3, ranged=False), worst(r, "lost"),
            r.get("status", "-"),
        ])
    return render(["backplane", "S", "delivered msgs/s", "x no history", "CPU µs/delivery",
                   "x no history", "srv CPU%", "gen CPU%", "other%", "p50 ms", "p99 ms", "lost",
                   "status"], rows)


def replay_table(summary: Sequence[Row], deltas: Sequence[Row]) -> str:
    """
    The live subscribers' latency at a fixed rate without and with a client
    that replays the history, the replay's rate, and (above) the fill of
    the history.
    """
    lines = []
    for r in _scenario(summary, "replay"):
        if r["kind"] == "fill":
            lines.append(f"Filled with {cell(r, 'published', si, ranged=False)} lines "
                         f"(S = 1, full speed): {cell(r, 'delivered_msgs_per_s', si)} msgs/s, "
                         f"{cell(r, 'server_cpu_us_per_delivery')} CPU µs/delivery; "
                         f"{r.get('status', '-')}")
    rows = [[
        r["kind"], cell(r, "S"), cell(r, "rate", si), cell(r, "lat_p50_us"),
        cell(r, "lat_p99_us"), worst(r, "lat_max_us"), cell(r, "lat_samples", si, ranged=False),
        cell(r, "msg_lat_p50_us"), cell(r, "msg_lat_p99_us"),
        *(cell(r, field, ranged=False)
          for field in ("server_cpu_pct", "gen_cpu_pct", "host_other_pct")),
        cell(r, "replay_lines", si, ranged=False), cell(r, "replay_seconds", ranged=False),
        cell(r, "replay_lines_per_s", si), worst(r, "lost"), r.get("status", "-"),
    ] for r in _scenario(summary, "replay") if r["kind"] != "fill"]
    lines.append(render(["subscribers", "S", "msgs/s", "p50 µs", "p99 µs", "max µs", "samples",
                         "msg p50 µs", "msg p99 µs", "srv CPU%", "gen CPU%", "other%",
                         "replayed lines", "replay s", "replay lines/s", "lost", "status"],
                        rows))
    for d in deltas:
        lines.append(f"\nWith the replay - without, paired by repeat: p99 "
                     f"{cell(d, 'lat_p99_us')} µs, p50 {cell(d, 'lat_p50_us')} µs; "
                     f"every message: p99 {cell(d, 'msg_lat_p99_us')} µs, "
                     f"p50 {cell(d, 'msg_lat_p50_us')} µs; "
                     f"server CPU {cell(d, 'server_cpu_pct')} points of one CPU")
    return "\n".join(lines)


def memory_table(summary: Sequence[Row]) -> str:
    """
    The server's memory as each backplane is filled: its VmRSS, its growth
    over the step's baseline, per line the history keeps.
    """
    rows = [[
        r["kind"], cell(r, "published", si, ranged=False),
        cell(r, "history_messages", si, ranged=False),
        cell(r, "rss_kib", scale=1 / 1024, ranged=False),
        cell(r, "rss_growth_kib", scale=1 / 1024), cell(r, "rss_bytes_per_line"),
        cell(r, "history_bytes_per_line", ranged=False),
        cell(r, "delivered_msgs_per_s", si, ranged=False), r.get("status", "-"),
    ] for r in _scenario(summary, "memory")]
    return render(["backplane", "lines published", "lines kept", "RSS MiB", "growth MiB",
                   "RSS B/kept line", "history's B/line", "fill msgs/s", "status"], rows)


def heading(meta: Row) -> str:
    """
    Where and how the figures were measured.
    """
    placement = meta["placement"]
    servers = f"servers ({placement['servers']})" if placement.get("servers") else "servers"
    pinned = (f"{servers} on CPU {placement['server']}, "
              f"generator on CPU {placement['generator']}"
              if placement["server"] else "nothing pinned (fewer than 2 CPUs or no taskset)")
    return "\n".join([
        f"{meta['date']}  {meta['host']}: {meta['cpu']}, {meta['cpus']} CPUs; {pinned}",
        f"python {meta['python']}, Twisted {meta['twisted']}, backplane {meta['backplane']}, "
        f"reactor {meta['reactor']}, redis {meta['redis'] or '(none)'}, "
        f"nats {meta.get('nats') or '(none)'}",
        f"command: {meta['command']}",
    ])


def tables(data: Row) -> str:
    """
    Every table of a suite's document, with a heading.
    """
    summary, skipped = data["summary"], data["skipped"]
    scenarios = {r["scenario"] for r in data["runs"]} | set(skipped)
    parts = [heading(data["meta"])]
    if "fanout" in scenarios:
        parts.append("Fan-out, full speed, one publisher, B = 64\n"
                     + fanout_table(summary, data.get("ratios", [])))
    if "resp" in scenarios:
        parts.append("Fan-out over the Redis protocol (backplane's Redis port and Redis, the same "
                     "RESP client), B = 64\n"
                     + fanout_table(summary, data.get("resp_ratios", []), "resp"))
    if "patterns" in scenarios:
        parts.append("Fan-out over the Redis protocol beside idle pattern subscriptions that "
                     "match nothing published (PSUBSCRIBE, 10 distinct patterns an idle "
                     "client), full speed, B = 64\n"
                     + patterns_table(summary, data.get("patterns_ratios", [])))
    if "auth" in scenarios:
        parts.append("Ports without and with auth (every client sends AUTH first), one backplane "
                     "server, B = 64\n" + auth_table(summary, data.get("auth_ratios", [])))
    if "latency" in scenarios:
        parts.append("Latency at a fixed rate\n" + latency_table(summary))
    if "sweep" in scenarios:
        parts.append("Rate sweep: one publisher at fixed rates to 100 subscribers, B = 64; "
                     "latency of every message from the time it was due (µs)\n"
                     + sweep_table(summary, data.get("sweep_ratios", [])))
    if "fanin" in scenarios:
        parts.append("Fan-in into one [[file]] sink\n" + fanin_table(summary, skipped))
    if "idle" in scenarios:
        parts.append("Idle subscribers\n" + idle_table(summary))
    if "stalled" in scenarios:
        parts.append("One stalled subscriber among 99 readers\n"
                     + stalled_table(summary, data.get("stalled_ratios", [])))
    if "nodes" in scenarios:
        parts.append(
            "Two nodes sharing the backplane through Redis (publisher on A, subscribers "
            "split evenly over A and B) beside one node, full speed, B = 64\n"
            + (f"nodes: skipped, {skipped['nodes']['reason']}" if "nodes" in skipped
               else nodes_table(summary, data.get("nodes_ratios", []))))
    if "websocket" in scenarios:
        parts.append("WebSocket and line subscribers of one backplane, one publisher on a "
                     "line port, full speed, B = 64\n"
                     + websocket_table(summary, data.get("websocket_ratios", [])))
    if "history" in scenarios:
        parts.append("Fan-out to plain subscribers of a backplane without a history, with "
                     "history = 1000000 (memory) and with a store, one server, full speed, "
                     "B = 64\n" + history_table(summary, data.get("history_ratios", [])))
    if "replay" in scenarios:
        parts.append("A store's history replayed (RESUME 0 on an ids port) beside 100 live "
                     "subscribers at a fixed rate\n"
                     + replay_table(summary, data.get("replay_deltas", [])))
    if "memory" in scenarios:
        parts.append("Server memory (VmRSS) as each backplane is filled, one server; growth "
                     "over: the fresh server (no history), the server with the memory history "
                     "empty (history), the step before (store)\n" + memory_table(summary))
    generator = [r["gen_cpu_pct"]["max"] for r in summary if isinstance(r.get("gen_cpu_pct"), dict)]
    if generator:
        parts.append(f"Load generator: at most {max(generator):.0f}% of one CPU "
                     f"(it has {len(data['meta']['placement']['generator']) or 'all the'} CPU(s)); "
                     "other% is CPU used by other processes during the window.")
    return "\n\n".join(parts)


def plot(path: Path, data: Row) -> bool:
    """
    Plot delivered msgs/s and server CPU per delivery against subscribers,
    backplane beside Redis, with the range of the repeats.

    @return: whether it was written (matplotlib is the C{bench} extra).
    """
    rows = _scenario(data["summary"], "fanout")
    series = [(server, style, [r for r in rows if r["server"] == server])
              for server, style in (("backplane", "o-"), ("redis", "s--"), ("nats", "^:"))]
    meta = data["meta"]
    return _logLogPlot(
        path, series, "S", [(r["S"], str(r["S"])) for r in rows], "subscribers (S)",
        (("delivered_msgs_per_s", "delivered messages / s"),
         ("server_cpu_us_per_delivery", "server CPU µs / delivery")),
        f"Fan-out, one publisher, 64-byte messages: {meta['date'][:10]}, "
        f"{meta['cpus']} CPUs, reactor {meta['reactor']}")


def sweep_plot(path: Path, data: Row) -> bool:
    """
    Plot the rate sweep: every message's p99 latency against the rate, and
    the server's CPU per delivery against the rate, log-log, one line a
    server, with the range of the repeats.

    @return: whether it was written (matplotlib is the C{bench} extra).
    """
    rows = _scenario(data["summary"], "sweep")
    names = sorted({sweep_name(r) for r in rows})
    series = [(name, style, [r for r in rows if sweep_name(r) == name])
              for name, style in zip(names, ["o-", "D-", "s--", "^:", "v-."], strict=False)]
    meta = data["meta"]
    return _logLogPlot(
        path, series, "rate", [(rate, si(rate)) for rate in sorted({r["rate"] for r in rows})],
        "published msgs / s (to 100 subscribers)",
        (("msg_lat_p99_us", "p99 latency, every message (µs)"),
         ("server_cpu_us_per_delivery", "server CPU µs / delivery")),
        f"Fixed rates to 100 subscribers, 64-byte messages: {meta['date'][:10]}, "
        f"{meta['cpus']} CPUs, reactor {meta['reactor']}", legendSize=8)


def _logLogPlot(path: Path, series: Sequence[tuple[str, str, Sequence[Row]]], x: str,
                ticks: Sequence[tuple[Any, str]], xlabel: str,
                panels: Sequence[tuple[str, str]], title: str,
                legendSize: int | None = None) -> bool:
    """
    Two log-log panels side by side, one for each of C{panels} (a field of
    the summary and its axis label): for each of C{series} (a label, a
    matplotlib format and its summary rows), the median of the field
    against C{x}, with the range of the repeats as error bars.

    @return: whether it was written (matplotlib is the C{bench} extra).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, (field, label) in zip(axes, panels, strict=True):
        for name, style, rows in series:
            points = sorted((r for r in rows if median(r, field)), key=lambda r: r[x])
            if not points:
                continue
            xs = [r[x] for r in points]
            ys = [median(r, field) for r in points]
            low = [y - r[field]["min"] for y, r in zip(ys, points, strict=True)]
            high = [r[field]["max"] - y for y, r in zip(ys, points, strict=True)]
            ax.errorbar(xs, ys, yerr=[low, high], fmt=style, capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks([value for value, _ in ticks], [text for _, text in ticks])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=legendSize)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
