"""
Interfaces of the backplane: what a stream subscriber must provide.
"""

from zope.interface import Interface


class ILineSink(Interface):
    """
    A subscriber that takes lines in bulk: the fast path of the fan-out.

    A network subscriber writes what it is handed straight to its transport, so a
    chunk of many lines costs one call and one write, not one per line.
    """

    def deliver(data: bytes, count: int) -> None:
        """
        Take C{count} complete messages, each followed by C{b"\\n"}.

        C{data} is never empty, always ends with C{b"\\n"} and holds exactly
        C{count} of them; a sink may forward it unchanged. It must not block and
        should not raise: an exception is logged and the sink stays subscribed.
        """



class IStatsSource(Interface):
    """
    A part of the service that reports its statistics: a port, a clock, a
    relay, a file sink, a bridge.

    The monitor (L{backplane.monitor.MonitorService}) reports every service
    under the L{backplane.service.BackplaneService} that provides this: as it
    is in C{/stats}, and as Prometheus metrics in C{/metrics}, where counter
    C{KEY} of a source of kind C{KIND} becomes
    C{backplane_KIND_KEY_total} (labelled C{name="NAME"}) and gauge C{KEY}
    becomes C{backplane_KIND_KEY} (labelled the same), unless
    L{backplane.metrics} declares another name (with a unit) and the help
    of that metric.  A source is not asked about the services below it: it
    speaks for them.
    """

    def report() -> dict[str, object]:
        """
        A snapshot of this part's statistics, cheap to take, safe to take at
        any time (stopped or running).

        The keys (names are lower-case words joined by C{_}):

          - C{"name"} (C{str}): unique in the service, e.g. C{"listen[1]"};
          - C{"kind"} (C{str}): what it is, e.g. C{"listen"}, C{"connect"},
            C{"file"}, C{"clock"};
          - C{"state"} (C{str}): what it is doing now, e.g. C{"listening"},
            C{"connected"}, C{"backoff"}, C{"stopped"};
          - C{"counters"} (C{dict[str, int | float]}): totals that only grow
            while the process runs, e.g. C{{"accepted": 12}};
          - C{"gauges"} (C{dict[str, int | float]}): values now, which go up
            and down, e.g. C{{"clients": 3}};
          - C{"info"} (C{dict[str, str | int | float | bool | None]},
            optional): what it was configured with, e.g.
            C{{"endpoint": "tcp:1500"}}.
        """
