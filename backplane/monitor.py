"""
The monitor: the service's statistics over HTTP.

C{/stats} is a JSON document (the server, every backplane, every statistics
source), C{/metrics} the same in Prometheus' text format (L{backplane.metrics}
names each metric), C{/healthz} says
C{ok} while the service runs.  C{/} is a status page drawn from C{/stats}
(L{backplane.status}), with the live tail of a backplane from C{/tail/NAME}
(L{backplane.tail}).  Every port, clock, relay or sink reports
through one mechanism: a child service that provides
L{backplane.interfaces.IStatsSource}.

With C{[monitor] auth = true}, every request but those of the status page's
own static files (C{/} and C{/assets/}) must present a token
(C{Authorization: Bearer TOKEN} or C{?token=TOKEN}): any accepted token may
read C{/stats}, C{/metrics} and C{/healthz}; C{/tail/NAME} needs the right
to subscribe to C{NAME}.

It holds at most C{max_clients} connections at once (C{[monitor]
max_clients}): one more gets a short C{503} and is closed, its request never
read (L{MonitorSite}).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from datetime import datetime, timezone
from ipaddress import ip_address
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import CollectorRegistry
from twisted.application.service import IServiceCollection
from twisted.copyright import version as twistedVersion
from twisted.internet.abstract import FileDescriptor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site
from zope.interface import implementer

from backplane._version import __version__
from backplane.address import Network, describePeer, isAllowed
from backplane.auth.authority import Authority
from backplane.auth.gate import Gate
from backplane.auth.identity import AccessDenied
from backplane.auth.web import admitRequest, refusal
from backplane.heads import HTTP_ALPN, BoundedChannel, BoundedRequest
from backplane.interfaces import IStatsSource
from backplane.metrics import StatsCollector
from backplane.ports import EndpointService
from backplane.service import BackplaneService
from backplane.status import statusPage
from backplane.tail import DEFAULT_MAX_TAILS, TailResource, Tails

# The module's logger: Site.log is the access log's method.
_log = Logger()

#: The most connections the monitor holds at once by default (C{[monitor]
#: max_clients}): operators, a Prometheus or two, a few status pages (a
#: browser opens up to six connections, a live tail holding one).
DEFAULT_MAX_CLIENTS = 64
#: Seconds a connection refused past C{max_clients} has to take its C{503}
#: and close before it is aborted.
REFUSAL_GRACE = 5.0
#: The least seconds between two log lines about connections refused past
#: C{max_clients}: a flood is one line a minute, its count in C{/stats}.
REFUSAL_LOG_INTERVAL = 60.0


def _busyResponse() -> bytes:
    body = b"the monitor has too many connections (max_clients): try again later\n"
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nRetry-After: 10\r\nConnection: close\r\n\r\n%s"
            % (len(body), body))


#: What a connection past C{max_clients} gets, whatever it sends.
BUSY_RESPONSE = _busyResponse()
# The log lines of those refusals: the first, and the next after a minute.
_REFUSING = ("Refusing {peer}: the monitor holds max_clients ({limit}) connections; "
             "more refusals in the next {interval} s are counted, not logged")
_REFUSING_MORE = ("Refusing {peer}: the monitor holds max_clients ({limit}) connections; "
                  "{unlogged} more were refused since the last such line")


def version() -> str:
    """
    The version of backplane (L{backplane.__version__}).
    """
    return __version__


def residentMemory() -> int | None:
    """
    The resident memory of this process now, in bytes (L{None} where
    C{/proc} does not tell).
    """
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peakMemory() -> int | None:
    """
    The most resident memory this process has used, in bytes (L{None} where
    C{getrusage} does not tell).
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def statsSources(services: Iterable[Any]) -> list[IStatsSource]:
    """
    Every service among C{services} and the services under them that
    provides L{IStatsSource}, in order; a source speaks for the services
    under it, so they are not searched.
    """
    found: list[IStatsSource] = []
    for service in services:
        if IStatsSource.providedBy(service):
            found.append(service)
        elif IServiceCollection.providedBy(service):
            found.extend(statsSources(service))
    return found


def _isoTime(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(
        timespec="milliseconds").replace("+00:00", "Z")


class _Page(Resource):
    """
    A leaf page of the monitor: each request is counted, then answered by
    L{respond}.
    """

    isLeaf = True

    def __init__(self, monitor: MonitorService) -> None:
        super().__init__()
        self.monitor = monitor

    def render_GET(self, request: Request) -> bytes:
        self.monitor.counted()
        return self.respond(request)

    def respond(self, request: Request) -> bytes:
        raise NotImplementedError


class StatsPage(_Page):
    """
    C{/stats}: L{MonitorService.document} as JSON.
    """

    def respond(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return (json.dumps(self.monitor.document(), indent=2) + "\n").encode("utf-8")


class MetricsPage(_Page):
    """
    C{/metrics}: every metric in the Prometheus text format (or
    OpenMetrics, if the scraper asks for it).
    """

    def respond(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        encode, contentType = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", contentType.encode("ascii"))
        return encode(self.monitor.registry)


class HealthPage(_Page):
    """
    C{/healthz}: 200 and C{ok} while the service runs; 503 and C{stopping}
    once it has begun to stop.
    """

    def respond(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if self.monitor.running and self.monitor.service.running:
            return b"ok\n"
        request.setResponseCode(503)
        return b"stopping\n"


class MonitorResource(Resource):
    """
    The root of the monitor's pages: C{stats}, C{metrics}, C{healthz}, the
    status page (C{/} and C{assets/}) and the live tail (C{tail/NAME}).
    """

    def __init__(self, monitor: MonitorService) -> None:
        super().__init__()
        self.putChild(b"stats", StatsPage(monitor))
        self.putChild(b"metrics", MetricsPage(monitor))
        self.putChild(b"healthz", HealthPage(monitor))
        page, assets = statusPage(monitor.counted)
        self.putChild(b"", page)
        self.putChild(b"assets", assets)
        self.putChild(b"tail", TailResource(monitor.tails, monitor.counted))

    def getChild(self, path: bytes, request: Request) -> IResource:
        """
        Any other page: 404.
        """
        return notFound()


class _Refused(Resource):
    """
    What a request the monitor's gate refused gets: 401 or 403.
    """

    isLeaf = True

    def __init__(self, denied: AccessDenied) -> None:
        super().__init__()
        self.denied = denied

    def render(self, request: Request) -> bytes:
        return refusal(request, self.denied)


#: The names a monitor always answers to (besides its hosts and the address
#: a client connected to).
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain"})


class _Misdirected(Resource):
    """
    What a request for another site's name gets: 421 Misdirected Request.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(421)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return (b"this monitor answers to localhost, its address and its hosts "
                b"([monitor] hosts), not to the Host this request names\n")


#: The first path segments served without a token: the status page's own
#: static files, which hold no data (what the page shows, it reads from
#: C{/stats} and C{/tail/NAME} with the token it was given).
PUBLIC = (b"", b"assets")


class _MonitorChannel(BoundedChannel):
    """
    A connection to the monitor: its requests' heads are bounded, and it
    counts against C{max_clients} until it is closed (L{MonitorSite}).
    """

    site: MonitorSite

    def headRefused(self) -> None:
        self.site.badHeads += 1

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.channels.discard(self)
        super().connectionLost(reason)


class _Busy(Protocol):
    """
    A connection past the monitor's C{max_clients}: it gets
    L{BUSY_RESPONSE} and is closed, what it sends never parsed.

    A socket of the reactor's own (TCP, UNIX) is half-closed once the
    answer is written, and what the client sends is discarded until it
    closes its end: closing a socket with unread input resets it, and the
    client could lose the answer (RFC 9112, section 9.6).  A TLS connection
    is closed once its handshake is done and the answer sent (Twisted's TLS
    keeps what is written until then).  A client that has not closed within
    L{REFUSAL_GRACE} seconds (or a TLS client that never finishes its
    handshake, so never gets the answer) is aborted.
    """

    def __init__(self, site: MonitorSite) -> None:
        self.site = site
        self._grace: IDelayedCall | None = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(BUSY_RESPONSE)
        self._grace = self.site.reactor.callLater(REFUSAL_GRACE, transport.abortConnection)
        # Not an interface check: a TLS wrapper provides its socket's
        # interfaces, and would half-close the socket under its own records.
        if isinstance(transport, FileDescriptor):
            transport.loseWriteConnection()
        else:
            transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        """
        Discard what the client sends: its request is never served.
        """

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._grace is not None and self._grace.active():
            self._grace.cancel()
        self.site.refusalClosed()


class MonitorSite(Site):
    """
    The monitor's HTTP server: it closes the connection of a client not in
    C{allow} at once, answers a connection past C{max_clients} with C{503}
    and closes it, asks its gate (if it has C{auth}) whether a request may
    be served, shows no tracebacks, and keeps no access log.

    Every connection counts against C{max_clients} from the moment it is
    accepted until it is closed, whatever it does: a keep-alive connection
    between scrapes, a live tail.  A refused one is counted in L{refused}
    and logged, at most one line every L{REFUSAL_LOG_INTERVAL} seconds.
    Refused connections still being closed are bounded too: past
    C{max_clients} of them, one more is aborted without an answer.

    @ivar gate: the monitor's access checks.
    @ivar maxClients: the most connections it holds at once.
    @ivar channels: the connections it holds now.
    @ivar refused: connections refused past C{maxClients}.
    """

    noisy = False
    displayTracebacks = False
    protocol = _MonitorChannel  # type: ignore[assignment]
    #: What an C{ssl:} monitor chooses in ALPN: C{http/1.1}, never C{h2},
    #: which a L{Site} names where Twisted can speak it and the monitor's
    #: channels do not (L{backplane.tls.negotiateProtocols}).
    alpn = HTTP_ALPN
    requestFactory = BoundedRequest

    def __init__(self, resource: Resource, *, allow: Sequence[Network] | None = None,
                 reactor: Any = None, gate: Gate | None = None,
                 hosts: Sequence[str] = (), max_clients: int = DEFAULT_MAX_CLIENTS) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be 1 or more")
        super().__init__(resource, reactor=reactor)
        self.maxClients = max_clients
        self.channels: set[_MonitorChannel] = set()
        self.refused = 0
        self._closing = 0
        self._lastLogged: float | None = None
        self._unlogged = 0
        self.allow = allow
        self.disallowed = 0
        self.gate = gate if gate is not None else Gate()
        self.hosts = frozenset(host.lower().rstrip(".") for host in hosts) | LOCAL_NAMES
        #: Requests refused for their C{Host} (DNS rebinding).
        self.misdirected = 0
        #: Requests refused for their head (too big, too many headers).
        self.badHeads = 0

    def hostAllowed(self, request: Request) -> bool:
        """
        Whether the request names this server in its C{Host}: C{localhost},
        one of C{hosts}, or the IP address the client connected to.  A page
        of a site whose name now points at this machine (DNS rebinding)
        names that site, and is refused.
        """
        header = request.getHeader(b"host")
        if header is None:
            return True  # HTTP/1.0 without Host: no browser sends that
        host = header.decode("ascii", "replace").strip().lower()
        if host.startswith("["):
            host = host[1:host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        host = host.rstrip(".")
        if host in self.hosts:
            return True
        local = getattr(request.getHost(), "host", None)
        try:
            return local is not None and ip_address(host) == ip_address(local)
        except ValueError:
            return False

    def getResourceFor(self, request: Request) -> IResource:
        """
        The resource that serves C{request}, or a refusal: with C{auth},
        every path but the status page's static files needs a token, and
        C{tail/NAME} the right to subscribe to C{NAME}.
        """
        if not self.hostAllowed(request):
            self.misdirected += 1
            return _Misdirected()
        gate = self.gate
        path: list[bytes] = getattr(request, "postpath", None) or [b""]
        if gate.auth and not (path == [b""] or path[0] in PUBLIC[1:]):
            try:
                identity = admitRequest(gate, request)
                if path[0] == b"tail" and len(path) > 1:
                    gate.authorize(identity, subscribe=path[1],
                                   peer=describePeer(request.getClientAddress()))
            except AccessDenied as denied:
                return _Refused(denied)
        resource: IResource = super().getResourceFor(request)
        return resource

    def buildProtocol(self, addr: IAddress | None) -> Any:
        if not isAllowed(addr, self.allow):
            self.disallowed += 1
            _log.warn("Refusing {peer}: its address is not in the monitor's allow",
                      peer=describePeer(addr) if addr else "?")
            return None
        if len(self.channels) >= self.maxClients:
            return self._refuse(addr)
        channel = super().buildProtocol(addr)
        self.channels.add(channel)
        return channel

    def _refuse(self, addr: IAddress | None) -> _Busy | None:
        """
        Refuse a connection past C{max_clients}: count it, log it (at most
        once every L{REFUSAL_LOG_INTERVAL} seconds), and give it a L{_Busy},
        or, with C{max_clients} refused connections still being closed,
        L{None} (its port aborts it at once, as it does for C{allow}).
        """
        self.refused += 1
        now = self.reactor.seconds()
        if self._lastLogged is not None and now - self._lastLogged < REFUSAL_LOG_INTERVAL:
            self._unlogged += 1
        else:
            self._lastLogged = now
            unlogged, self._unlogged = self._unlogged, 0
            _log.warn(_REFUSING if not unlogged else _REFUSING_MORE,
                      peer=describePeer(addr) if addr else "?", limit=self.maxClients,
                      unlogged=unlogged, interval=int(REFUSAL_LOG_INTERVAL))
        if self._closing >= self.maxClients:
            return None
        self._closing += 1
        return _Busy(self)

    def refusalClosed(self) -> None:
        """
        A connection refused past C{max_clients} (a L{_Busy}) is closed.
        """
        self._closing -= 1

    def log(self, request: Request) -> None:
        """
        Keep no access log: a scraper every few seconds would drown the log.
        """


@implementer(IStatsSource)
class MonitorService(EndpointService):
    """
    Serves the statistics of a L{BackplaneService} over HTTP on a server
    endpoint: C{/stats} (JSON), C{/metrics} (Prometheus), C{/healthz}, and
    the status page C{/} with its live tails C{/tail/NAME}.

    Its metrics are in its own L{CollectorRegistry} (L{registry}), never in
    C{prometheus_client}'s global one, so that many services live in one
    process.
    """

    log = Logger()
    factory: MonitorSite

    def __init__(self, service: BackplaneService, endpoint: IStreamServerEndpoint, *,
                 description: str, where: str | None = "monitor", path: str | None = None,
                 allow: Sequence[Network] | None = None, tail: bool = True,
                 max_tails: int = DEFAULT_MAX_TAILS,
                 clock: IReactorTime | None = None,
                 authority: Authority | None = None, hosts: Sequence[str] = (),
                 max_clients: int = DEFAULT_MAX_CLIENTS) -> None:
        """
        @param service: the service whose statistics are reported.
        @param max_clients: the most connections it holds at once; one more
            gets C{503} and is closed.
        @param hosts: the names it is served under, besides C{localhost} and
            the address a client connects to (the defence against DNS
            rebinding: any other C{Host} gets 421).
        @param authority: with C{[monitor] auth = true}, what decides who may
            read it.
        @param description: the endpoint as the user wrote it, for messages.
        @param allow: the networks clients may connect from (L{None}: any).
        @param tail: whether C{/tail/NAME} serves the lines of backplanes.
        @param max_tails: how many tails may be open at once.
        @param clock: the time (the reactor by default).
        """
        if clock is None:
            from twisted.internet import reactor as globalReactor

            clock = globalReactor
        self.service = service
        self.clock: IReactorTime = clock
        self.started: float | None = None
        self.requests = 0
        self.registry = CollectorRegistry()
        self.registry.register(StatsCollector(self))
        ProcessCollector(registry=self.registry)
        self.tails = Tails(service, enabled=tail, max_tails=max_tails, clock=clock)
        self.resource = MonitorResource(self)
        self.gate = Gate(authority, clock=clock)
        site = MonitorSite(self.resource, allow=allow, reactor=clock, gate=self.gate,
                           hosts=hosts, max_clients=max_clients)
        super().__init__(endpoint, site, description=description, where=where, path=path)

    def startService(self) -> None:
        self.started = self.clock.seconds()
        super().startService()
        self.tails.start()

    def stopService(self) -> Deferred[None]:
        """
        End every live tail, then stop listening.
        """
        self.tails.stop()
        return super().stopService()

    def uptime(self) -> float:
        """
        Seconds since the service started (0 before).
        """
        return 0.0 if self.started is None else max(0.0, self.clock.seconds() - self.started)

    def backplanes(self) -> list[Any]:
        """
        The backplanes of the service, for L{StatsCollector}.
        """
        return list(self.service.backplanes())

    def counted(self) -> None:
        """
        Count a request served.
        """
        self.requests += 1

    def pendingStats(self) -> dict[str, int | None]:
        """
        The service's bound on what waits for subscribers
        (L{PendingBudget.report<backplane.budget.PendingBudget.report>}).
        """
        return self.service.budget.report()

    def unfinishedStats(self) -> dict[str, int | None]:
        """
        The service's bound on the unfinished lines clients hold
        (L{UnfinishedBudget.report<backplane.budget.UnfinishedBudget.report>}).
        """
        return self.service.unfinished.report()

    def sourceStats(self) -> list[dict[str, Any]]:
        """
        What every statistics source of the service reports now, in the
        order of the service's children.  A source that fails is logged and
        left out.
        """
        reports = []
        for source in statsSources(self.service):
            try:
                report = source.report()
            except Exception:
                self.log.failure("The statistics of {source!r} failed", Failure(),
                                 source=source)
                continue
            reports.append(dict(report))
        return reports

    def document(self) -> dict[str, object]:
        """
        The document C{/stats} serves: C{server} (version, pid, start time,
        uptime, memory, what waits for subscribers and the unfinished lines
        clients hold, with their bounds),
        C{backplanes} (by name) and C{services} (what each statistics
        source reports, as L{IStatsSource} describes).
        """
        now = self.clock.seconds()
        return {
            "server": {
                "version": version(),
                "twisted": twistedVersion,
                "python": sys.version.split()[0],
                "pid": os.getpid(),
                "started": None if self.started is None else _isoTime(self.started),
                "now": _isoTime(now),
                "uptime_seconds": round(self.uptime(), 3),
                "rss_bytes": residentMemory(),
                "max_rss_bytes": peakMemory(),
                "running": bool(self.service.running),
                **self.service.budget.report(),
                **self.service.unfinished.report(),
            },
            "backplanes": {
                backplane.name: {
                    "subscribers": len(backplane),
                    "retain": backplane.retain,
                    **asdict(backplane.stats),
                    "history": None if backplane.history is None else backplane.history.report(),
                }
                for backplane in self.service.backplanes()
            },
            "services": self.sourceStats(),
        }

    def report(self) -> dict[str, object]:
        """
        The monitor's own statistics (L{IStatsSource}): requests served,
        connections refused by C{allow} and past C{max_clients}, the
        connections it holds, live tails.
        """
        tails = self.tails
        report: dict[str, object] = {
            "name": self.name or "monitor",
            "kind": "monitor",
            "state": self.state,
            "counters": {"requests": self.requests, "disallowed": self.factory.disallowed,
                         "refused": self.factory.refused,
                         "misdirected": self.factory.misdirected,
                         "bad_heads": self.factory.badHeads,
                         "tails_opened": tails.stats.accepted,
                         "tails_refused": tails.stats.refused,
                         "tail_dropped": tails.stats.dropped,
                         "tails_cut_off": tails.stats.slow_disconnects},
            "gauges": {"clients": len(self.factory.channels), "tails": len(tails.clients)},
            "info": {"endpoint": self.description, "tail": tails.enabled},
        }
        if self.gate.checks:
            report["access"] = self.gate.counters.snapshot()
        return report
