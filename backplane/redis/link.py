"""
The Redis bridge's connections: txredisapi's protocol (bytes in, bytes out),
each connection kept up by a Twisted L{ClientService}.

A L{Link} is one connection, the publisher's or the subscriber's.  Its
L{ClientService} connects, and after a failed attempt, a failed handshake or
a lost connection waits as its retry policy says and connects again: it is the
only retry mechanism of the connection (txredisapi's connection factories,
which retry on their own, are not used).  Its C{prepareConnection} is the
handshake (log in, then PING or SUBSCRIBE: every new subscribed connection
subscribes again), which must succeed within C{timeout} seconds; once it has,
a L{HealthCheck} PINGs the connection every C{timeout} seconds and aborts it
when a PING goes unanswered as long.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.application.internet import ClientService
from twisted.internet import defer, error
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.python.failure import Failure
from txredisapi import RedisProtocol, SubscriberProtocol
from zope.interface import implementer


def describe(failure: Failure, timeout: float) -> str:
    """
    Why a command failed, for a log line: a timeout as C{"no answer within N
    s"}.
    """
    # Deferred.addTimeout raises one or the other, by Twisted version.
    if failure.check(defer.TimeoutError, error.TimeoutError):
        return f"no answer within {timeout:g} s"
    return failure.getErrorMessage()


class _Pingable(Protocol):
    """
    What a L{HealthCheck} needs of a connection.
    """

    def ping(self) -> Deferred[Any]:
        """
        Send PING; the L{Deferred} fires with the answer.
        """


class HealthCheck:
    """
    Checks that a ready connection still answers: a PING every C{interval}
    seconds, which must be answered within C{interval} seconds, finds a Redis
    that hangs or a network that drops packets without closing the connection.
    """

    def __init__(self, protocol: _Pingable, interval: float, clock: IReactorTime,
                 dead: Callable[[str], None]) -> None:
        """
        @param protocol: the connection's protocol.
        @param dead: called, with why, when a PING goes unanswered; the
            check is over then.
        """
        self.protocol = protocol
        self.interval = interval
        self.clock = clock
        self.dead = dead
        self._next: IDelayedCall | None = None
        self._stopped = False

    def start(self) -> None:
        """
        Send the first PING in C{interval} seconds.
        """
        self._next = self.clock.callLater(self.interval, self._ping)

    def stop(self) -> None:
        """
        Send no more PINGs, and ignore the answer to one in flight.
        """
        self._stopped = True
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def _ping(self) -> None:
        self._next = None
        pinged = maybeDeferred(self.protocol.ping)
        pinged.addTimeout(self.interval, self.clock)
        pinged.addCallbacks(self._pong, self._noPong)

    def _pong(self, answer: object) -> None:
        if not self._stopped:
            self._next = self.clock.callLater(self.interval, self._ping)

    def _noPong(self, failure: Failure) -> None:
        if not self._stopped:
            self._stopped = True
            self.dead(f"PING unanswered: {describe(failure, self.interval)}")


class Link:
    """
    One connection to Redis, kept up by a L{ClientService}.

    The service connects, and calls C{prepare} with the new connection's
    protocol; once that has succeeded (within C{timeout} seconds) the link is
    L{ready}, its connection is checked by a L{HealthCheck} and C{ready} is
    called.  C{down} is called, with why, when an attempt fails, when a
    connection is lost or aborted (handshake failed, PING unanswered), so
    once or more per outage; meanwhile the service waits as C{retryPolicy}
    says and connects again, until L{stop}.

    @ivar name: C{"publisher"} or C{"subscriber"}, for tests and logs.
    @ivar service: the L{ClientService}.
    @ivar protocol: the protocol of the current connection (being prepared
        or ready), or L{None}.
    @ivar ready: whether the current connection is prepared and in use.
    """

    def __init__(
        self,
        name: str,
        endpoint: IStreamClientEndpoint,
        protocol: Callable[..., Any],
        *,
        prepare: Callable[[Any], Deferred[object]],
        ready: Callable[[Link], None],
        down: Callable[[Link, str], None],
        retryPolicy: Callable[[int], float],
        timeout: float,
        clock: IReactorTime,
    ) -> None:
        """
        @param protocol: builds the connection's protocol from txredisapi's
            keyword arguments (L{Publisher}, or a function making a
            L{Subscriber}).
        @param retryPolicy: the seconds to wait after N failures in a row
            (L{backplane.retry.backoffPolicy}).
        """
        self.name = name
        self.protocolClass = protocol
        self.prepare = prepare
        self.onReady = ready
        self.onDown = down
        self.timeout = timeout
        self.clock = clock
        self.protocol: Any = None
        self.ready = False
        self._why = ""
        self._stopping = True
        self._health: HealthCheck | None = None
        self.service = ClientService(
            _GatedEndpoint(endpoint, self), _LinkFactory(self), retryPolicy=retryPolicy,
            clock=clock, prepareConnection=self._prepareConnection,
        )

    def __repr__(self) -> str:
        return f"<Link {self.name}>"

    def start(self) -> None:
        """
        Connect, and keep connecting until L{stop}.
        """
        self._stopping = False
        self.service.startService()

    def stop(self) -> Deferred[None]:
        """
        Stop retrying and close the connection, aborting it if the server
        has not let it close within C{timeout} seconds.

        @return: a L{Deferred} that fires once the connection is closed.
        """
        self._stopping = True
        protocol = self.protocol
        stopped = self.service.stopService()
        if protocol is None or stopped.called:
            return stopped
        # A server that does not read would hold a polite close forever.
        abort = self.clock.callLater(self.timeout, protocol.transport.abortConnection)

        def closed(result: None) -> None:
            if abort.active():
                abort.cancel()
            return result

        return stopped.addBoth(closed)

    # The ClientService's hooks.

    def _prepareConnection(self, connection: IProtocol) -> Deferred[object]:
        # The ClientService passes its proxy of the protocol.  It makes one
        # connection at a time, so this is the last protocol built, unless
        # that connection is lost already.
        protocol = self.protocol
        if protocol is None:
            return fail(error.ConnectionLost("lost before the handshake"))
        preparing = maybeDeferred(self.prepare, protocol)
        preparing.addTimeout(self.timeout, self.clock)
        return preparing.addCallbacks(self._prepared, self._unprepared,
                                      callbackArgs=(protocol,), errbackArgs=(protocol,))

    def _prepared(self, result: object, protocol: Any) -> None:
        if protocol is not self.protocol:
            # Lost meanwhile: the ClientService must not take it for connected.
            raise error.ConnectionLost("lost during the handshake")
        self.ready = True
        self._health = HealthCheck(protocol, self.timeout, self.clock,
                                   lambda why: self._abort(protocol, why))
        self._health.start()
        self.onReady(self)

    def _unprepared(self, failure: Failure, protocol: Any) -> Failure:
        # The ClientService counts the failure and retries, but leaves the
        # connection open: close it.
        if protocol is self.protocol:
            self._abort(protocol, f"no usable connection: {describe(failure, self.timeout)}")
        return failure

    def _abort(self, protocol: Any, why: str) -> None:
        if protocol is self.protocol:
            self._why = why
            protocol.transport.abortConnection()

    def built(self, protocol: Any) -> None:
        """
        A protocol was built for a new connection (called by the factory).
        """
        self.protocol = protocol
        self.ready = False
        self._why = ""

    def lost(self, protocol: Any, reason: Failure) -> None:
        """
        The connection of C{protocol} is closed (called by the protocol).
        """
        if protocol is not self.protocol:
            return
        self.protocol = None
        self.ready = False
        if self._health is not None:
            self._health.stop()
            self._health = None
        if not self._stopping:
            self.onDown(self, self._why or f"connection lost: {reason.getErrorMessage()}")

    def failed(self, reason: Failure) -> None:
        """
        An attempt to connect failed (called by the endpoint).
        """
        if not self._stopping:
            self.onDown(self, f"cannot connect: {reason.getErrorMessage()}")


class _LinkFactory(Factory):
    """
    Builds the txredisapi protocol of a L{Link}'s connection: bytes in, bytes
    out (no decoding, no number conversion), on the link's clock.
    """

    noisy = False

    def __init__(self, link: Link) -> None:
        self.link = link

    def buildProtocol(self, addr: IAddress | None) -> Any:
        protocol = self.link.protocolClass(charset=None, convertNumbers=False)
        protocol.factory = self
        protocol.link = self.link
        # txredisapi schedules on this (as Twisted's TimeoutMixin does).
        protocol.callLater = self.link.clock.callLater
        self.link.built(protocol)
        return protocol


@implementer(IStreamClientEndpoint)
class _GatedEndpoint:
    """
    The endpoint of a L{Link}'s L{ClientService}: connects through the real
    one, reports failed attempts to the link, and puts a L{_Gate} before each
    connection's protocol.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, link: Link) -> None:
        self.endpoint = endpoint
        self.link = link

    def __repr__(self) -> str:
        # How ClientService's notes of its retries name the endpoint.
        return f"Redis (the {self.link.name} connection)"

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self.endpoint.connect(_GateFactory(protocolFactory, self.link))
        return connecting.addCallbacks(lambda gate: gate.wrapped, self._failed)

    def _failed(self, reason: Failure) -> Failure:
        self.link.failed(reason)
        return reason


@implementer(IProtocolFactory)
class _GateFactory:
    """
    Puts a L{_Gate} before each protocol that a L{ClientService}'s factory
    builds.
    """

    def __init__(self, factory: IProtocolFactory, link: Link) -> None:
        self.factory = factory
        self.link = link

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        wrapped = self.factory.buildProtocol(addr)
        if wrapped is None:
            return None
        # Building it, the link's factory made it the link's protocol.
        return _Gate(wrapped, self.link.protocol, self.link)


@implementer(IProtocol)
class _Gate:
    """
    Tells a L{ClientService} that a connection is lost only if it is ready.

    The L{ClientService} (Twisted 23.8 to 26.x at least) does not expect to
    hear of a connection whose C{prepareConnection} has not succeeded: told
    that one was lost (the server closed it during the handshake, or the
    link aborted it after a failed handshake, which the service leaves
    open), its state machine raises C{NoTransition} from C{connectionLost}.
    So the loss of such a connection goes to the link's protocol alone; the
    service has counted the failed handshake already.
    """

    def __init__(self, wrapped: IProtocol, protocol: Any, link: Link) -> None:
        """
        @param wrapped: the service's protocol (its proxy of C{protocol}).
        @param protocol: the link's protocol.
        """
        self.wrapped = wrapped
        self.protocol = protocol
        self.link = link

    def makeConnection(self, transport: ITransport) -> None:
        self.wrapped.makeConnection(transport)

    def connectionMade(self) -> None:
        pass  # makeConnection has told the protocol.

    def dataReceived(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.link.ready and self.link.protocol is self.protocol:
            self.wrapped.connectionLost(reason)
        else:
            self.protocol.connectionLost(reason)


class InlineParsing:
    """
    Parse all that a read brings at once.

    txredisapi's pure-Python parser (the one used without hiredis) parses
    what follows each bulk string on a later turn of the reactor, pausing the
    transport meanwhile: three turns and four epoll calls per pub/sub
    message.  Here what follows is parsed in a loop instead (hiredis's parser
    never gets there).

    The one use of txredisapi's parser internals: its C{rawDataReceived}
    ends each bulk string by calling C{setLineMode(extra=rest)}, the last
    thing C{dataReceived} does, and C{setLineMode()} without C{extra} only
    goes back to line mode.  C{tests.test_redis_link.TxredisapiParserTests}
    fails if that changes.
    """

    _extra = b""

    def setLineMode(self, extra: bytes = b"") -> None:
        # Nothing else is buffered when this is called: keep what follows
        # for dataReceived, instead of a pause and a callLater(0, ...).
        super().setLineMode()  # type: ignore[misc]
        self._extra = extra

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        super().dataReceived(data)  # type: ignore[misc]
        while self._extra:
            extra, self._extra = self._extra, b""
            super().dataReceived(extra)  # type: ignore[misc]


class Publisher(InlineParsing, RedisProtocol):  # type: ignore[misc]
    """
    The publishing connection.
    """

    link: Link

    def connectionLost(self, why: Failure = connectionDone) -> None:
        # The link first, so that the PUBLISHes it fails below are counted
        # in the outage that this loss begins.
        self.link.lost(self, why)
        super().connectionLost(why)


class Subscriber(InlineParsing, SubscriberProtocol):  # type: ignore[misc]
    """
    The subscribed connection: each message goes to C{received(channel,
    payload)}.
    """

    link: Link
    received: Callable[[bytes, bytes], None]

    def messageReceived(self, pattern: object, channel: bytes, message: bytes) -> None:
        self.received(channel, message)

    def connectionLost(self, why: Failure = connectionDone) -> None:
        self.link.lost(self, why)
        super().connectionLost(why)
