"""
Listening ports as services: listen on start, refuse clearly when the address
is taken, and (for a backplane port) on stop close every client, not only the
port.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python import log as legacyLog
from twisted.python.failure import Failure
from zope.interface import implementer

from backplane.address import describePeer
from backplane.errors import CannotListen
from backplane.interfaces import IStatsSource
from backplane.protocols import BackplaneFactory


class _Refused(Protocol):
    """
    A connection its factory refused: closed as soon as it is made.
    """

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.abortConnection()


class _ClosingRefusals(Factory):
    """
    A factory whose refusals (L{None} from C{buildProtocol}) close the
    connection at once on every transport.

    A plain TCP port closes a connection whose factory returns L{None}; a
    TLS port would instead fail with the L{None} and leave the connection
    open, so a refused client could complete its handshake and hold the
    connection past C{max_clients}.  Here it gets a protocol that aborts it.

    It hides from Twisted's TLS the protocols a wrapped web L{Site} names
    for ALPN: an C{ssl:} port chooses them itself, from the factory's
    C{alpn} (L{backplane.tls.negotiateProtocols}).
    """

    noisy = False

    def __init__(self, factory: IProtocolFactory) -> None:
        self.wrappedFactory = factory

    def logPrefix(self) -> str:
        prefix: Any = getattr(self.wrappedFactory, "logPrefix", None)
        return str(prefix()) if callable(prefix) else type(self.wrappedFactory).__name__

    def doStart(self) -> None:
        self.wrappedFactory.doStart()

    def doStop(self) -> None:
        self.wrappedFactory.doStop()

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        protocol: Any = self.wrappedFactory.buildProtocol(cast(IAddress, addr))
        return _Refused() if protocol is None else protocol


def listenQuietly(endpoint: IStreamServerEndpoint,
                  factory: IProtocolFactory) -> Deferred[IListeningPort]:
    """
    C{endpoint.listen(factory)}, without the line Twisted's ports log as
    they start (C{"Factory starting on 1500"}): the service logs its own,
    with the entry's name and the address.

    Twisted's ports log that line with the legacy C{twisted.python.log.msg}
    while C{listen} runs, and an event whose C{log_format} is empty is
    written by no text observer; so C{listen} runs with that in its legacy
    log context.  Only legacy events logged during the call are affected;
    failures come back in the L{Deferred}.  (C{tests/test_twistd.py} checks
    the log of a real start, and fails if Twisted logs it otherwise.)
    """
    listening: Deferred[IListeningPort] = legacyLog.callWithContext(
        {"log_format": ""}, endpoint.listen, factory)
    return listening


class EndpointService(Service):
    """
    Serves a protocol factory on a server endpoint.

    Unlike L{twisted.application.internet.StreamServerEndpointService}, a
    port that cannot listen (an address in use, a permission denied) makes
    C{startService} raise a L{CannotListen} naming the entry.  It listens in
    C{privilegedStartService}, so twistd binds it before dropping privileges.
    """

    log = Logger()

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory, *,
                 description: str, where: str | None = None,
                 path: str | None = None) -> None:
        """
        @param description: the endpoint as the user wrote it, for messages.
        @param where: the config entry, e.g. C{listen[2]}, for messages.
        @param path: the config file, for messages.
        """
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.where = where
        self.path = path
        self.port: IListeningPort | None = None
        self.failed = False
        self._listening: Deferred[IListeningPort] | None = None

    @property
    def state(self) -> str:
        """
        C{"listening"}, C{"starting"} (an endpoint that listens
        asynchronously has not yet), C{"failed"} (it could not listen), or
        C{"stopped"}.
        """
        if self.port is not None:
            return "listening"
        if self.failed:
            return "failed"
        if self._listening is not None:
            return "starting"
        return "stopped"

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.failed = False
        synchronous = True
        outcome: list[object] = []

        def settled(result: object) -> None:
            if synchronous:
                outcome.append(result)
            else:  # an endpoint that listens asynchronously
                self._listened(result)

        if isinstance(self.endpoint, SSL4ServerEndpoint):
            from backplane.tls import negotiateProtocols

            # A factory's alpn: the protocols it speaks, for TLS's ALPN.
            negotiateProtocols(self.endpoint, getattr(self.factory, "alpn", ()))
        self._listening = listenQuietly(self.endpoint, _ClosingRefusals(self.factory))
        self._listening.addBoth(settled)
        synchronous = False
        if not outcome:
            return
        if isinstance(outcome[0], Failure):
            self._listening = None
            self.failed = True
            raise self._cannotListen(outcome[0])
        self._listened(outcome[0])

    def _listened(self, port: object) -> None:
        if isinstance(port, Failure):
            self.failed = True
            self.log.critical("{error}", error=str(self._cannotListen(port)))
            return
        self.port = listening = IListeningPort(port)
        self.log.info("{where} listening on {address}", where=self.where or "port",
                      address=describePeer(listening.getHost()))

    def _cannotListen(self, failure: Failure) -> CannotListen:
        reason = getattr(failure.value, "socketError", None) or failure.value
        reason = getattr(reason, "strerror", None) or str(reason)
        return CannotListen(f"cannot listen on {self.description!r}: {reason}",
                           path=self.path, where=f"{self.where}.endpoint" if self.where else None)

    def startService(self) -> None:
        super().startService()
        if self._listening is None:
            self.privilegedStartService()

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting connections.
        """
        super().stopService()
        return Deferred.fromCoroutine(self._stopListening())

    async def _stopListening(self) -> None:
        port, self.port, self._listening = self.port, None, None
        if port is not None:
            await maybeDeferred(port.stopListening)


@implementer(IStatsSource)
class ListenService(EndpointService):
    """
    Serves a L{BackplaneFactory} on a server endpoint, and reports its
    statistics (L{IStatsSource}).

    C{stopService} also closes the connections of the clients, giving them
    C{close_timeout} seconds to take what is still pending for them.
    """

    factory: BackplaneFactory

    def __init__(self, endpoint: IStreamServerEndpoint, factory: BackplaneFactory, *,
                 description: str, where: str | None = None, path: str | None = None,
                 close_timeout: float = 5.0, clock: IReactorTime | None = None,
                 protocol: str = "lines") -> None:
        """
        @param description: the endpoint as the user wrote it, for messages.
        @param where: the config entry, e.g. C{listen[2]}, for messages.
        @param path: the config file, for messages.
        @param protocol: what its clients speak (the entry's C{protocol}),
            for its statistics.
        """
        super().__init__(endpoint, factory, description=description, where=where, path=path)
        self.protocol = protocol
        self.closeTimeout = close_timeout
        self.clock = clock

    def report(self) -> dict[str, object]:
        """
        The port's statistics: state, C{clients} now, the counters of
        L{backplane.protocols.PortStats}, and, on a port that checks access
        (C{auth = true}, or a web port), C{access}: tokens accepted and
        clients refused by reason (L{backplane.auth.AccessCounters}).
        """
        factory = self.factory
        report: dict[str, object] = {
            "name": self.name or self.where or self.description,
            "kind": "listen",
            "state": self.state,
            "counters": asdict(factory.stats),
            "gauges": {"clients": factory.clients, "handshakes": factory.handshakes},
            "info": {
                "endpoint": self.description,
                "protocol": self.protocol,
                "address": describePeer(self.port.getHost()) if self.port else None,
                "publish_to": None if factory.publishTo is None else factory.publishTo.name,
                "subscribe_to": None if factory.subscribeTo is None else factory.subscribeTo.name,
            },
        }
        gate = factory.gate
        if gate.checks:
            # What the port's access checks decided (auth = true, or a web
            # port's origin check).
            report["access"] = gate.counters.snapshot()
        more = getattr(factory, "portReport", None)
        if callable(more):
            # A port that reports more of its own (a Redis port): its
            # counters, gauges and info beside every port's.
            for key, values in more().items():
                section: Any = report.setdefault(key, {})
                section.update(values)
        publishers = getattr(factory, "publisherStats", None)
        if publishers is not None:
            # An acks = true port: what each publisher id did (in /stats
            # only: as metric labels, ids would grow without bound).
            report["publishers"] = publishers.snapshot()
        return report

    def stopService(self) -> Deferred[None]:
        """
        Stop accepting, then close every client's connection.
        """
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stop())

    async def _stop(self) -> None:
        await self._stopListening()
        if not self.factory.protocols:
            return
        clock: Any = self.clock
        if clock is None:
            from twisted.internet import reactor as clock
        timer = clock.callLater(self.closeTimeout, self.factory.abortAll)
        try:
            await self.factory.disconnectAll()
        finally:
            if timer.active():
                timer.cancel()
