"""
The monitor's C{/metrics}: every statistic as a Prometheus metric, named
by Prometheus' conventions.

Every metric is declared here, with its type and help, so that what is
served is what C{docs/operations.md} lists (a test holds them together):

  - units are in names (C{_seconds}, C{_bytes}), counters end in C{_total};
  - static facts are C{_info} metrics (1, with the facts as labels), with
    no empty label: a setting that is not set is left out, and booleans
    are C{true} and C{false};
  - a state is a gauge with one series per state the part can be in, 1 for
    the one it is in and 0 for the others, so no series ever vanishes;
  - every metric of a port is labelled with its C{protocol} as well as its
    C{name}.

A statistics source (L{backplane.interfaces.IStatsSource}) of a kind or
with a key not declared here still gets a metric,
C{backplane_KIND_KEY_total} or C{backplane_KIND_KEY}, with a help that
says it is undocumented.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from twisted.copyright import version as twistedVersion

from backplane._version import __version__


class MonitoredService(Protocol):
    """
    What L{StatsCollector} reads of a monitor (L{backplane.monitor.MonitorService}).
    """

    started: float | None

    def uptime(self) -> float:
        """
        Seconds since the service started.
        """

    def backplanes(self) -> Sequence[Any]:
        """
        The backplanes of the service.
        """

    def sourceStats(self) -> list[dict[str, Any]]:
        """
        What every statistics source reports now.
        """

    def pendingStats(self) -> Mapping[str, int | None]:
        """
        The service's bound on what waits for subscribers, as
        L{PendingBudget.report<backplane.budget.PendingBudget.report>} gives it.
        """

    def unfinishedStats(self) -> Mapping[str, int | None]:
        """
        The service's bound on the unfinished lines clients hold, as
        L{UnfinishedBudget.report<backplane.budget.UnfinishedBudget.report>}
        gives it.
        """


@dataclass(frozen=True)
class Stat:
    """
    How one statistic of a report becomes a metric.

    @ivar suffix: the metric's name after C{backplane_KIND_} (a counter's
        without its C{_total}).
    @ivar help: what it counts or measures, for people.
    """

    suffix: str
    help: str


# The counters of a backplane (BackplaneStats), by attribute.
BACKPLANE_COUNTERS = {
    "messages_in": Stat("messages_in", "Messages published to the backplane."),
    "bytes_in": Stat("published_bytes",
                     "Bytes of the messages published to the backplane, newlines included."),
    "deliveries": Stat("deliveries",
                       "Messages handed to subscribers (one message to N subscribers: N)."),
    "dropped": Stat("dropped",
                    "Messages subscribers missed past max_pending with slow = \"drop\"."),
    "slow_disconnects": Stat("slow_disconnects", "Subscribers disconnected past max_pending."),
    "errors": Stat("errors", "Subscriber callbacks that raised or failed."),
    "resumes": Stat("resumes", "Subscribers that resumed from the backplane's history."),
    "replayed": Stat("replayed", "Messages handed to resuming subscribers from the history."),
    "gaps": Stat("gaps", "Times a resuming subscriber was told that messages it asked for are "
                         "missing."),
}

# The figures of the service's bound on what waits for subscribers
# (PendingBudget.report()), by key: the gauges, then the counters.
PENDING_GAUGES = {
    "pending_bytes": Stat("pending_bytes", "Bytes waiting for all subscribers together."),
    "pending_limit_bytes": Stat("pending_limit_bytes",
                                "The bound on them ([limits] max_pending_total)."),
    "pending_subscribers": Stat("pending_subscribers", "Subscribers with bytes waiting."),
}
PENDING_COUNTERS = {
    "pending_cuts": Stat("pending_cuts", "Times the subscriber furthest behind was cut to keep "
                                         "within max_pending_total."),
    "pending_dropped": Stat("pending_dropped", "Messages subscribers with slow = \"drop\" missed "
                                               "past max_pending_total."),
    "pending_disconnects": Stat("pending_disconnects", "Subscribers with slow = \"disconnect\" "
                                                       "disconnected past max_pending_total."),
}

# The figures of the service's bound on the unfinished lines clients hold
# (UnfinishedBudget.report()), by key: the gauges, then the counters.
UNFINISHED_GAUGES = {
    "unfinished_bytes": Stat("unfinished_bytes",
                             "Bytes of unfinished lines, WebSocket messages and Redis requests "
                             "all clients (and relays' connections upstream) hold together."),
    "unfinished_limit_bytes": Stat("unfinished_limit_bytes",
                                   "The bound on them ([limits] max_unfinished_total)."),
    "unfinished_connections": Stat("unfinished_connections",
                                   "Connections holding an unfinished line."),
}
UNFINISHED_COUNTERS = {
    "unfinished_cuts": Stat("unfinished_cuts", "Connections holding the longest unfinished line "
                                               "disconnected to keep within "
                                               "max_unfinished_total."),
    "unfinished_discarded_bytes": Stat("unfinished_discarded_bytes",
                                       "Bytes of the unfinished lines of those connections, "
                                       "never published."),
}

# The gauges of a backplane's history (History.report()), by key.
HISTORY_GAUGES = {
    "first": Stat("history_first", "The oldest SEQ the backplane's history keeps."),
    "last": Stat("history_last", "The latest SEQ the backplane's history gave a message."),
    "messages": Stat("history_messages", "Messages the backplane's history keeps."),
    "bytes": Stat("history_bytes", "Bytes of the messages the backplane's history keeps."),
}

_RELAY_COUNTERS = {
    "attempts": Stat("attempts", "Connection attempts made upstream, successful or not."),
    "connects": Stat("connects", "Connections made upstream."),
    "reconnects": Stat("reconnects", "Connections made upstream after the first one."),
    "lines_in": Stat("lines_in", "Lines received from upstream and published here."),
    "lines_out": Stat("lines_out", "Lines sent upstream."),
    "dropped": Stat("dropped", "Lines for upstream dropped past the relay's buffer (or "
                               "spool_bytes)."),
    "idle_timeouts": Stat("idle_timeouts",
                          "Connections dropped because upstream was silent for idle_timeout."),
    "resumes": Stat("resumes", "Connections on which the relay asked upstream to resume "
                               "(resume = true)."),
    "gaps": Stat("gaps", "Times upstream said messages the relay asked for are missing."),
    "refused": Stat("refused", "Lines from upstream that were not what the relay expects, and ERR "
                               "lines of an acks = true upstream."),
    "acknowledged": Stat("acknowledged", "Lines upstream acknowledged (acks = true)."),
    "resent": Stat("resent", "Lines sent upstream again, not having been acknowledged "
                             "(acks = true)."),
    "discarded_bytes": Stat("discarded_bytes", "Bytes of half lines from upstream never "
                                               "published (a reset, an abort, a line too long, "
                                               "max_unfinished_total)."),
}
_RELAY_GAUGES = {
    "buffered": Stat("buffered", "Lines waiting in the relay's buffer for upstream now."),
    "spooled": Stat("spooled", "Lines kept that upstream has not acknowledged yet (acks = true)."),
    "connected": Stat("connected", "1 while the relay is connected upstream, else 0."),
}

# The counters of each kind of statistics source, by kind and key.
COUNTERS: dict[str, dict[str, Stat]] = {
    "listen": {
        "accepted": Stat("accepted", "Connections the port accepted."),
        "refused": Stat("refused", "Connections closed at once: max_clients were connected."),
        "disallowed": Stat("disallowed", "Connections closed at once: the address is not in "
                                         "allow."),
        "tls_failures": Stat("tls_failures",
                             "TLS connections closed before their handshake completed."),
        "overlong": Stat("overlong", "Clients disconnected for a line longer than "
                                     "max_line_length."),
        "slow_disconnects": Stat("slow_disconnects", "Subscribers disconnected past max_pending."),
        "dropped": Stat("dropped", "Messages subscribers missed past max_pending "
                                   "(slow = \"drop\")."),
        "messages_in": Stat("messages_in", "Lines the port's clients published."),
        "bytes_in": Stat("published_bytes", "Bytes of the lines the port's clients published, "
                                            "newlines included."),
        "resumes": Stat("resumes", "Subscribers that resumed from the history (ids = true)."),
        "gaps": Stat("gaps", "Subscribers told that messages they asked for are missing."),
        "bad_requests": Stat("bad_requests", "Clients refused for a malformed request."),
        "acknowledged": Stat("acknowledged", "Lines acknowledged to publishers (acks = true)."),
        "deduplicated": Stat("deduplicated", "Lines publishers resent that were already "
                                             "published, skipped (acks = true)."),
        "store_failures": Stat("store_failures", "Connections closed because the store did not "
                                                 "keep their lines (acks = true)."),
        "handshake_timeouts": Stat("handshake_timeouts", "Connections closed: their handshake did "
                                                         "not finish within handshake_timeout."),
        "handshakes_evicted": Stat("handshakes_evicted",
                                   "Connections closed in their handshake to make room, "
                                   "max_handshakes being in theirs."),
        "bad_heads": Stat("bad_heads", "WebSocket and HTTP requests refused for their head (431 or "
                                       "400)."),
        "idle_timeouts": Stat("idle_timeouts", "Publishers closed for holding an unfinished line "
                                               "for idle_timeout."),
        "idle_discarded": Stat("idle_discarded_bytes", "Bytes of unfinished lines discarded at "
                                                       "idle_timeout."),
        "discarded_bytes": Stat("discarded_bytes", "Bytes of half lines (unfinished WebSocket "
                                                   "messages, Redis requests) never published (a "
                                                   "reset, an abort, a close by the server, a "
                                                   "line too long, max_unfinished_total)."),
        "http_requests": Stat("http_requests", "Clients answered 400: their first line was an "
                                               "HTTP request."),
        "datagrams": Stat("datagrams", "Datagrams a udp: port received from allowed addresses."),
        "commands": Stat("commands", "Commands the clients of a Redis port sent."),
        "unknown_commands": Stat("unknown_commands", "Commands a Redis port answered -ERR unknown "
                                                     "command."),
        "errors": Stat("errors", "Commands a Redis port answered with another error."),
        "created": Stat("created", "Backplanes the port created on demand, all told."),
        "outside": Stat("outside", "Names refused for being outside the port's backplanes."),
        "over_max_backplanes": Stat("over_max_backplanes", "Backplanes not created: "
                                                           "max_backplanes existed."),
        "protocol_errors": Stat("protocol_errors", "Redis clients disconnected for a malformed "
                                                   "request."),
    },
    "monitor": {
        "requests": Stat("requests", "HTTP requests the monitor served."),
        "disallowed": Stat("disallowed", "Connections closed at once: the address is not in "
                                         "allow."),
        "refused": Stat("refused", "Connections refused at once, with a 503 (or, in a flood, "
                                   "none): max_clients were connected."),
        "bad_heads": Stat("bad_heads", "Requests refused for their head: too big, too many "
                                       "headers, malformed."),
        "misdirected": Stat("misdirected", "Requests refused with 421: their Host names neither "
                                           "this monitor nor its hosts."),
        "tails_opened": Stat("tails_opened", "Live tails (tail/NAME) opened."),
        "tails_refused": Stat("tails_refused", "Live tails refused: max_tails were open."),
        "tail_dropped": Stat("tail_dropped", "Lines live tails missed, being more than "
                                             "max_pending behind."),
        "tails_cut_off": Stat("tails_cut_off", "Live tails cut off: their connection stayed "
                                               "full."),
    },
    "clock": {
        "published": Stat("published", "Messages the clock published."),
    },
    "file": {
        "lines_written": Stat("lines_written", "Lines written to the file (or its rotated files)."),
        "bytes_written": Stat("written_bytes", "Bytes written to the file."),
        "flushes": Stat("flushes", "Flushes that wrote something."),
        "rotations": Stat("rotations", "Times the file was rotated."),
        "errors": Stat("errors", "Failed attempts to open, write, rotate or fsync the file."),
        "dropped": Stat("dropped", "Lines never written: too much waited while the file could "
                                   "not be written."),
    },
    "redis": {
        "chunks_out": Stat("chunks_out", "Payloads published to Redis and acknowledged by it."),
        "messages_out": Stat("messages_out", "Messages in the payloads published to Redis."),
        "bytes_out": Stat("sent_bytes", "Bytes of the payloads published to Redis, tag lines "
                                        "included."),
        "chunks_in": Stat("chunks_in", "Payloads received from Redis."),
        "messages_in": Stat("messages_in", "Messages received from Redis and published here."),
        "bytes_in": Stat("received_bytes", "Bytes of the payloads received from Redis, tag "
                                           "lines included."),
        "echoes": Stat("echoes", "This node's own payloads that came back, skipped."),
        "rejected": Stat("rejected", "Payloads from Redis of an unknown wire format version."),
        "dropped": Stat("dropped", "Messages published here that another node missed: Redis "
                                   "unreachable, the queue full, or the other nodes not yet "
                                   "subscribed again after an outage."),
        "unconfirmed": Stat("unconfirmed", "Messages in flight to Redis when a connection broke: "
                                           "they may or may not have crossed."),
        "outages": Stat("outages", "Times Redis became unreachable."),
    },
    "connect": _RELAY_COUNTERS,
    "publisher": _RELAY_COUNTERS,
}

# The gauges of each kind of statistics source, by kind and key.
GAUGES: dict[str, dict[str, Stat]] = {
    "listen": {
        "clients": Stat("clients", "Clients connected to the port now, their handshake done."),
        "handshakes": Stat("handshakes", "Connections to the port in their handshake now."),
        "subscriptions": Stat("subscriptions", "Channels the clients of a Redis port subscribe "
                                               "to now."),
        "pattern_subscriptions": Stat("pattern_subscriptions", "Patterns the clients of a Redis "
                                                               "port subscribe to now."),
        "backplanes_on_demand": Stat("backplanes_on_demand", "Backplanes the port created on "
                                                             "demand that exist now."),
    },
    "monitor": {
        "clients": Stat("clients", "Connections to the monitor now (at most max_clients)."),
        "tails": Stat("tails", "Live tails open now."),
    },
    "file": {
        "pending": Stat("pending_bytes", "Bytes received and not yet written to the file."),
    },
    "redis": {
        "connected": Stat("connected", "1 while both connections to Redis are up, else 0."),
        "queued": Stat("queued_bytes", "Bytes waiting to be published to Redis."),
        "last_outage": Stat("last_outage_seconds",
                            "How long the last finished outage of Redis lasted (0: none yet)."),
        "last_outage_dropped": Stat("last_outage_dropped", "Messages other nodes missed in "
                                                           "the last finished outage."),
        "last_outage_unconfirmed": Stat("last_outage_unconfirmed", "Messages in flight when the "
                                                                   "last finished outage began."),
    },
    "connect": _RELAY_GAUGES,
    "publisher": _RELAY_GAUGES,
}

_ENDPOINT_STATES = ("listening", "starting", "failed", "stopped")
_RELAY_STATES = ("connecting", "connected", "waiting", "stopped")

#: The states each kind of statistics source can be in: its state metric
#: has a series for each, whichever it is in.
STATES: dict[str, tuple[str, ...]] = {
    "listen": _ENDPOINT_STATES,
    "monitor": _ENDPOINT_STATES,
    "clock": ("running", "stopped"),
    "file": ("writing", "failing", "stopped"),
    "redis": ("connected", "unreachable", "stopped"),
    "connect": _RELAY_STATES,
    "publisher": _RELAY_STATES,
}

#: What each kind of statistics source is, for the help of its metrics.
KINDS = {
    "listen": "port",
    "monitor": "monitor",
    "clock": "clock",
    "file": "file sink",
    "redis": "Redis bridge",
    "connect": "relay",
    "publisher": "publisher",
}

#: The keys of a source's C{info} that also label every metric of it.
LABELLING_INFO = ("protocol",)

# The counters of a port's (or the monitor's) access checks, and their help.
ACCESS_HELP = {
    "accepted": "Tokens and client certificates accepted.",
    "refused": "Clients refused (no token, a token not accepted, not allowed, another "
               "site's page), by reason.",
}


def _metricName(*parts: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", "_".join(parts))


def _numbers(values: object) -> dict[str, float]:
    if not isinstance(values, dict):
        return {}
    return {str(key): value for key, value in values.items()
            if isinstance(value, (int, float))}


def labelValue(value: object) -> str | None:
    """
    A value as a label's value: booleans as C{true} and C{false}; L{None}
    and the empty string as L{None} (the label is left out).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text or None


class _Families:
    """
    The metric families of one scrape, made on first use.
    """

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}

    def get(self, kind: Callable[..., Metric], name: str, doc: str,
            labels: Sequence[str]) -> Any:
        if name not in self.families:
            self.families[name] = kind(name, doc, labels=list(labels))
        return self.families[name]


class StatsCollector:
    """
    A Prometheus collector of a monitor's statistics, made fresh at each
    scrape: the service (C{backplane_info}, C{backplane_start_time_seconds},
    C{backplane_uptime_seconds}), each backplane (label C{backplane}), and
    each statistics source of kind C{KIND} (label C{name}, and C{protocol}
    on ports): its counters, gauges, C{backplane_KIND_state} and
    C{backplane_KIND_info}, as C{docs/operations.md} lists them.
    """

    def __init__(self, monitor: MonitoredService) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Metric]:
        """
        Every metric, as it is now.
        """
        monitor = self.monitor
        info = InfoMetricFamily("backplane", "The versions of backplane, Twisted and Python.")
        info.add_metric([], {"version": __version__, "twisted": twistedVersion,
                             "python": sys.version.split()[0]})
        yield info
        if monitor.started is not None:
            yield GaugeMetricFamily("backplane_start_time_seconds",
                                    "When the service started, in seconds since the epoch.",
                                    value=monitor.started)
        yield GaugeMetricFamily("backplane_uptime_seconds",
                                "Seconds since the service started.", value=monitor.uptime())
        yield from self.pending(monitor.pendingStats())
        yield from self.unfinished(monitor.unfinishedStats())
        yield from self.backplanes(monitor.backplanes())
        yield from self.sources(monitor.sourceStats())

    @staticmethod
    def pending(report: Mapping[str, int | None]) -> Iterator[Metric]:
        """
        The service's bound on what waits for subscribers: its gauges
        (C{backplane_pending_limit_bytes} only with a bound) and counters.
        """
        return _bound(report, PENDING_GAUGES, PENDING_COUNTERS)

    @staticmethod
    def unfinished(report: Mapping[str, int | None]) -> Iterator[Metric]:
        """
        The service's bound on the unfinished lines clients hold: its
        gauges (C{backplane_unfinished_limit_bytes} only with a bound) and
        counters.
        """
        return _bound(report, UNFINISHED_GAUGES, UNFINISHED_COUNTERS)

    def backplanes(self, backplanes: Sequence[Any]) -> Iterator[Metric]:
        """
        The metrics of each backplane, labelled C{backplane}.
        """
        labels = ["backplane"]
        subscribers = GaugeMetricFamily("backplane_subscribers",
                                        "Subscribers of the backplane now.", labels=labels)
        publishers = GaugeMetricFamily("backplane_publishers",
                                       "Network publishers to the backplane connected now.",
                                       labels=labels)
        counters = {key: CounterMetricFamily(f"backplane_{stat.suffix}", stat.help, labels=labels)
                    for key, stat in BACKPLANE_COUNTERS.items()}
        history = {key: GaugeMetricFamily(f"backplane_{stat.suffix}", stat.help, labels=labels)
                   for key, stat in HISTORY_GAUGES.items()}
        epochs = InfoMetricFamily("backplane_history",
                                  "The epoch of the backplane's history (its ids' EPOCH).",
                                  labels=labels)
        for backplane in backplanes:
            subscribers.add_metric([backplane.name], len(backplane))
            publishers.add_metric([backplane.name], backplane.stats.publishers)
            for key, family in counters.items():
                family.add_metric([backplane.name], getattr(backplane.stats, key))
            if backplane.history is not None:
                report = backplane.history.report()
                for key, gauge in history.items():
                    gauge.add_metric([backplane.name], report[key])
                epochs.add_metric([backplane.name], {"epoch": str(report["epoch"])})
        yield subscribers
        yield publishers
        yield from counters.values()
        if any(backplane.history is not None for backplane in backplanes):
            yield from history.values()
            yield epochs

    def sources(self, reports: list[dict[str, Any]]) -> Iterator[Metric]:
        """
        The metrics of each statistics source's report.
        """
        families = _Families()
        for report in reports:
            self.source(families, report)
        yield from families.families.values()

    def source(self, families: _Families, report: Mapping[str, Any]) -> None:
        """
        Add the metrics of one statistics source's report to C{families}.
        """
        kind, name = str(report.get("kind", "service")), str(report.get("name", "?"))
        what = KINDS.get(kind, kind)
        details = report.get("info")
        details = details if isinstance(details, dict) else {}
        # A port's protocol labels each of its metrics.
        labels, values = ["name"], [name]
        for key in LABELLING_INFO:
            label = labelValue(details.get(key))
            if label is not None:
                labels.append(key)
                values.append(label)

        for key, value in _numbers(report.get("counters")).items():
            stat = COUNTERS.get(kind, {}).get(key) or Stat(
                key, f"Undocumented: the {key} counter of each {what}.")
            families.get(CounterMetricFamily, _metricName("backplane", kind, stat.suffix),
                         stat.help, labels).add_metric(values, value)
        for key, value in _numbers(report.get("gauges")).items():
            stat = GAUGES.get(kind, {}).get(key) or Stat(
                key, f"Undocumented: the {key} of each {what} now.")
            families.get(GaugeMetricFamily, _metricName("backplane", kind, stat.suffix),
                         stat.help, labels).add_metric(values, value)
        if "state" in report:
            state = str(report["state"])
            known = STATES.get(kind, ())
            gauge = families.get(
                GaugeMetricFamily, _metricName("backplane", kind, "state"),
                f"The state of each {what}: 1 for the state it is in, 0 for the others.",
                [*labels, "state"])
            for each in (*known, *(() if state in known else (state,))):
                gauge.add_metric([*values, each], 1 if each == state else 0)
        access = report.get("access")
        if isinstance(access, dict):
            self.access(families, kind, labels, values, access)
        facts = {_metricName(str(key)): labelValue(value) for key, value in details.items()}
        facts = {key: value for key, value in facts.items()
                 if value is not None and key not in labels}
        if facts:
            families.get(InfoMetricFamily, _metricName("backplane", kind),
                         f"How each {what} is configured.", labels).add_metric(values, facts)

    @staticmethod
    def access(families: _Families, kind: str, labels: list[str], values: list[str],
               access: dict[str, Any]) -> None:
        """
        The counters of a source's access checks: C{backplane_KIND_access_accepted_total}
        and C{backplane_KIND_access_refused_total}, by C{reason}.
        """
        accepted = access.get("accepted")
        if isinstance(accepted, (int, float)):
            families.get(CounterMetricFamily, _metricName("backplane", kind, "access_accepted"),
                         ACCESS_HELP["accepted"], labels).add_metric(values, accepted)
        refused = families.get(CounterMetricFamily,
                               _metricName("backplane", kind, "access_refused"),
                               ACCESS_HELP["refused"], [*labels, "reason"])
        for reason, count in _numbers(access.get("refused")).items():
            refused.add_metric([*values, reason], count)


def _bound(report: Mapping[str, int | None], gauges: Mapping[str, Stat],
           counters: Mapping[str, Stat]) -> Iterator[Metric]:
    """
    The metrics of one of the service's bounds: its C{gauges} (left out
    when the report says L{None}) and its C{counters}, from its C{report}.
    """
    for key, stat in gauges.items():
        value = report.get(key)
        if value is not None:
            yield GaugeMetricFamily(f"backplane_{stat.suffix}", stat.help, value=value)
    for key, stat in counters.items():
        yield CounterMetricFamily(f"backplane_{stat.suffix}", stat.help,
                                  value=report.get(key) or 0)
