"""
The relay: a client of an upstream line server whose lines are published to a
local backplane, and/or which sends a local backplane's lines upstream,
reconnecting with exponential backoff and jitter.

Two ways to run one, each with exactly one retry mechanism:

  - L{RelayFactory} is a L{ReconnectingClientFactory}:
    C{reactor.connectTCP(host, port, RelayFactory(service, "DATA"))} and the
    factory reconnects by itself.
  - L{RelayService} is a L{ClientService} for any client endpoint (tcp, tls,
    unix, ...); it does the retrying and the factory's own retry is off.
"""

from __future__ import annotations

import random as _random
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import ReconnectingClientFactory
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from backplane.address import describePeer
from backplane.interfaces import ILineSink, IStatsSource
from backplane.protocols import (
    DEFAULT_MAX_LINE_LENGTH,
    BackplaneProtocol,
    Limits,
)
from backplane.service import Backplane, BackplaneService, Subscription

RelayState = Literal["connecting", "connected", "waiting", "stopped"]

DEFAULT_BUFFER = 10000
DEFAULT_INITIAL_DELAY = 1.0
DEFAULT_MAX_DELAY = 60.0
DEFAULT_FACTOR = 2.0
DEFAULT_JITTER = 0.1


@dataclass
class RelayStats:
    """
    Counters of one relay, for monitoring.

    @ivar state: C{"connecting"} (an attempt is under way), C{"connected"},
        C{"waiting"} (for the next attempt, after a failure or a loss) or
        C{"stopped"} (not trying any more).
    @ivar attempts: connection attempts made, successful or not.
    @ivar connects: connections made.
    @ivar reconnects: connections made after the first one.
    @ivar lines_in: lines received from upstream and published locally.
    @ivar lines_out: lines sent upstream (written to the connection).
    @ivar dropped: lines of C{subscribe_to} never sent upstream because the
        buffer was full (the oldest go first).
    @ivar buffered: lines waiting in the buffer now.
    @ivar idle_timeouts: connections dropped because upstream sent nothing
        for C{idle_timeout} seconds.
    """

    state: RelayState = "connecting"
    attempts: int = 0
    connects: int = 0
    reconnects: int = 0
    lines_in: int = 0
    lines_out: int = 0
    dropped: int = 0
    buffered: int = 0
    idle_timeouts: int = 0


def retryPolicy(
    initial_delay: float = DEFAULT_INITIAL_DELAY,
    max_delay: float = DEFAULT_MAX_DELAY,
    *,
    factor: float = DEFAULT_FACTOR,
    jitter: float = DEFAULT_JITTER,
    random: Callable[[], float] = _random.random,
) -> Callable[[int], float]:
    """
    A L{ClientService} retry policy: exponential backoff with jitter, capped.

    The wait before retry C{n} (1, 2, ...) after consecutive failures is
    C{min(initial_delay * factor ** (n - 1), max_delay)}, shortened at random
    by up to the fraction C{jitter} so that many relays cut off together do
    not come back in step.  It never exceeds C{max_delay}.

    @param random: returns a float in [0, 1); inject a seeded one in tests.
    """
    if initial_delay <= 0 or max_delay < initial_delay:
        raise ValueError("need 0 < initial_delay <= max_delay")
    if factor < 1:
        raise ValueError("factor must be 1 or more")
    if not 0 <= jitter < 1:
        raise ValueError("jitter is a fraction: 0 <= jitter < 1")
    grow = backoffPolicy(initial_delay, max_delay, factor, jitter=lambda: 0.0)

    def policy(attempt: int) -> float:
        return grow(max(attempt - 1, 0)) * (1.0 - jitter * random())

    return policy


def _keepAlive(transport: Any) -> bool:
    """
    Turn TCP keepalive on for C{transport}, or the TCP transport it wraps (TLS).

    @return: whether a transport supporting it was found.
    """
    for _ in range(4):
        if transport is None:
            return False
        setKeepAlive = getattr(transport, "setTcpKeepAlive", None)
        if setKeepAlive is not None:
            try:
                setKeepAlive(1)
            except OSError:
                return False
            return True
        transport = getattr(transport, "transport", None)
    return False


class RelayProtocol(BackplaneProtocol, TimeoutMixin):
    """
    One connection of a relay to its upstream.

    Lines from upstream are framed exactly as on a server port (this is a
    L{BackplaneProtocol}) and published with the relay as their origin.
    Lines going upstream are written by the L{RelayFactory}, which keeps
    what cannot be written now in its buffer.
    """

    factory: RelayFactory

    def __init__(self, factory: RelayFactory) -> None:
        super().__init__(publish_to=factory.publishTo, subscribe_to=None,
                         limits=factory.limits)
        self.factory = factory
        self.paused = False

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """
        Schedule the idle timeout on the relay's clock.
        """
        return self.factory.reactor.callLater(period, func)

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.factory.subscribeTo is not None:
            self.transport.registerProducer(self, True)
        _keepAlive(self.transport)
        self.setTimeout(self.factory.idleTimeout)
        self.factory._connected(self)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def publishLines(self, backplane: Backplane, data: bytes) -> None:
        count = data.count(b"\n")
        self.factory.stats.lines_in += count
        backplane.publish_lines(data, count, origin=self.factory)

    def timeoutConnection(self) -> None:
        self.factory._idle(self)
        self._closing = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.setTimeout(None)
        super().connectionLost(reason)
        self.factory._disconnected(self, reason)

    # IPushProducer: upstream not reading pauses us; the factory buffers.

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.factory._drain()

    def stopProducing(self) -> None:
        self.paused = True

    @property
    def writable(self) -> bool:
        """
        Whether lines written now would go upstream: connected, not closing,
        and upstream is reading.
        """
        return not (self.paused or self._closing
                    or getattr(self.transport, "disconnecting", False))


@implementer(ILineSink)
class RelayFactory(ReconnectingClientFactory):
    """
    A relay to an upstream line server, reconnecting with backoff.

    Use it as C{reactor.connectTCP(host, port, RelayFactory(service, "DATA"))}
    (this factory then retries by itself, as any L{ReconnectingClientFactory})
    or under a L{RelayService} for any client endpoint (which then does the
    retrying instead).  One connection at a time.

    With C{publish_to}, the lines upstream sends are published to that
    backplane, framed as on a server port.  With C{subscribe_to}, every line
    of that backplane is sent upstream; while upstream is down or not
    reading, up to C{buffer} lines wait here (surviving reconnects) and are
    sent first, oldest first, when it is back; past C{buffer} the oldest are
    dropped and counted.  A relay that does both with one backplane does not
    send upstream's own lines back to it.

    @ivar stats: the relay's L{RelayStats}.
    """

    log = Logger()
    noisy = False

    def __init__(
        self,
        service: BackplaneService,
        publish_to: str | None = None,
        *,
        subscribe_to: str | None = None,
        buffer: int = DEFAULT_BUFFER,
        idle_timeout: float | None = None,
        initial_delay: float = DEFAULT_INITIAL_DELAY,
        max_delay: float = DEFAULT_MAX_DELAY,
        jitter: float = DEFAULT_JITTER,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        clock: IReactorTime | None = None,
    ) -> None:
        """
        @param service: the registry the backplanes are looked up in.
        @param publish_to: the backplane lines from upstream are published to.
        @param subscribe_to: the backplane whose lines are sent upstream.
        @param buffer: the most lines of C{subscribe_to} kept while they
            cannot be sent (0: none are kept).
        @param idle_timeout: drop the connection (and reconnect) when upstream
            sends nothing for this many seconds; L{None}: never.
        @param initial_delay: seconds before the first retry.
        @param max_delay: the longest wait between retries, in seconds.
        @param jitter: the fraction by which each wait is randomly varied.
        @param max_line_length: the longest line accepted from upstream;
            a longer one is not published and the connection is dropped.
        @param clock: the reactor (L{IReactorTime}) for timeouts and retries.
        @raise ValueError: no direction, or an option out of range.
        @raise UnknownBackplane: a named backplane is not registered.
        """
        if publish_to is None and subscribe_to is None:
            raise ValueError("a relay needs publish_to, subscribe_to, or both")
        if buffer < 0:
            raise ValueError("buffer must be 0 or more")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be more than 0 (or None: off)")
        retryPolicy(initial_delay, max_delay, jitter=jitter)  # validates them
        self.publishTo = None if publish_to is None else service.get(publish_to)
        self.subscribeTo = None if subscribe_to is None else service.get(subscribe_to)
        self.bufferSize = buffer
        self.idleTimeout = idle_timeout
        self.limits = Limits(max_line_length=max_line_length)
        # ReconnectingClientFactory's knobs.
        self.initialDelay = self.delay = initial_delay
        self.maxDelay = max_delay  # type: ignore[assignment]
        self.factor = DEFAULT_FACTOR
        self.jitter = jitter
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        #: The clock of timeouts and retries.
        self.reactor: IReactorTime = clock
        self.clock = clock  # type: ignore[assignment]  # ReconnectingClientFactory's
        self.stats = RelayStats()
        #: Where upstream is, for log lines.
        self.destination = "upstream"
        self._protocol: RelayProtocol | None = None
        self._pending: deque[tuple[bytes, int]] = deque()
        self._subscription: Subscription | None = None
        self._ownRetry = True
        self._everConnected = False
        self._attemptsSinceUp = 0
        self._droppedSinceUp = 0
        self._quiet = False  # a failure of this outage has been logged
        self._startRelaying()

    def __repr__(self) -> str:
        return f"<RelayFactory to {self.destination} {self.stats.state}>"

    @property
    def dropped(self) -> int:
        """
        Lines never sent upstream because the buffer was full.
        """
        return self.stats.dropped

    @property
    def connected(self) -> bool:
        """
        Whether a connection to upstream is up now.
        """
        return self._protocol is not None

    def buildProtocol(self, addr: IAddress | None) -> RelayProtocol:  # type: ignore[override]
        return RelayProtocol(self)

    def delegateRetry(self) -> None:
        """
        Leave reconnecting to someone else (a L{ClientService}): this
        factory's own L{ReconnectingClientFactory} retry is off for good, so
        that a connection is never retried twice.
        """
        self._ownRetry = False

    # ReconnectingClientFactory, for connectTCP and friends.

    def startedConnecting(self, connector: IConnector) -> None:
        self.destination = describePeer(connector.getDestination())
        self._attempting()

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self._failed(reason)
        if self._ownRetry:
            super().clientConnectionFailed(connector, reason)

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        if self._ownRetry:
            super().clientConnectionLost(connector, reason)

    def stopTrying(self) -> None:
        """
        Stop reconnecting.  A connection that is up stays up (close it with
        the connector, or stop the L{RelayService}); once there is none,
        the relay stops taking lines from C{subscribe_to}.
        """
        super().stopTrying()
        if self._protocol is None:
            self.stats.state = "stopped"
            self._stopRelaying()

    def resetDelay(self) -> None:
        """
        Start the backoff over, and try again if L{stopTrying} was called.
        """
        super().resetDelay()
        self._startRelaying()

    # What happens to the connection.

    def _attempting(self) -> None:
        self.stats.attempts += 1
        self._attemptsSinceUp += 1
        self.stats.state = "connecting"
        self._startRelaying()

    def _failed(self, reason: Failure) -> None:
        if not self.continueTrying:
            return
        self.stats.state = "waiting"
        if self._quiet:
            return  # logged once for this outage; stats.attempts counts the rest
        self._quiet = True
        self.log.warn(
            "Relay could not connect to {destination}: {reason}; retrying with backoff "
            "(up to {maxDelay}s apart)",
            destination=self.destination, reason=reason.getErrorMessage(),
            maxDelay=self.maxDelay,
        )

    def _connected(self, protocol: RelayProtocol) -> None:
        self._protocol = protocol
        self.destination = protocol.peer
        self.stats.connects += 1
        self.stats.state = "connected"
        if self._ownRetry:
            self.resetDelay()
        if not self._everConnected:
            self.log.info("Relay connected to {peer}", peer=protocol.peer)
        else:
            self.stats.reconnects += 1
            self.log.info(
                "Relay reconnected to {peer} after {attempts} attempts; sending "
                "{buffered} buffered lines ({dropped} dropped while it was away)",
                peer=protocol.peer, attempts=self._attemptsSinceUp,
                buffered=self.stats.buffered, dropped=self._droppedSinceUp,
            )
        self._everConnected = True
        self._attemptsSinceUp = 0
        self._droppedSinceUp = 0
        self._quiet = False
        self._startRelaying()
        self._drain()

    def _disconnected(self, protocol: RelayProtocol, reason: Failure | None) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        why = reason.getErrorMessage() if reason is not None else "closed"
        if self.continueTrying:
            self.stats.state = "waiting"
            self._quiet = True
            self.log.warn(
                "Relay lost its connection to {peer} ({reason}); reconnecting with backoff",
                peer=protocol.peer, reason=why,
            )
        else:
            self.stats.state = "stopped"
            self.log.info("Relay closed its connection to {peer}", peer=protocol.peer)
            self._stopRelaying()

    def _idle(self, protocol: RelayProtocol) -> None:
        self.stats.idle_timeouts += 1
        self.log.warn(
            "Relay heard nothing from {peer} for {timeout}s (idle_timeout); "
            "dropping the connection",
            peer=protocol.peer, timeout=self.idleTimeout,
        )

    # Lines going upstream: ILineSink, and the buffer.

    def _startRelaying(self) -> None:
        if self.subscribeTo is not None and self._subscription is None:
            self._subscription = self.subscribeTo.attach(self, origin=self)

    def _stopRelaying(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    def deliver(self, data: bytes, count: int) -> None:
        """
        Send a chunk of lines upstream now, or keep it in the buffer.
        """
        protocol = self._protocol
        if protocol is not None and not self._pending and protocol.writable:
            protocol.transport.write(data)
            self.stats.lines_out += count
            return
        self._hold(data, count)

    def _hold(self, data: bytes, count: int) -> None:
        pending = self._pending
        pending.append((data, count))
        held = self.stats.buffered + count
        excess = held - self.bufferSize
        if excess > 0:
            held -= excess
            self._drop(excess)
            while excess:
                first, lines = pending[0]
                if lines <= excess:
                    pending.popleft()
                    excess -= lines
                else:
                    rest = first.split(b"\n", excess)[-1]
                    pending[0] = (rest, lines - excess)
                    excess = 0
        self.stats.buffered = held

    def _drop(self, count: int) -> None:
        if not self._droppedSinceUp:
            self.log.warn(
                "Relay to {destination}: {buffer} lines are waiting to go upstream "
                "(the buffer option); dropping the oldest",
                destination=self.destination, buffer=self.bufferSize,
            )
        self._droppedSinceUp += count
        self.stats.dropped += count
        assert self.subscribeTo is not None
        self.subscribeTo.stats.dropped += count

    def _drain(self) -> None:
        """
        Write the buffer upstream, oldest first, while upstream reads.
        """
        protocol = self._protocol
        pending = self._pending
        while pending and protocol is not None and self._protocol is protocol \
                and protocol.writable:
            data, count = pending.popleft()
            self.stats.buffered -= count
            self.stats.lines_out += count
            protocol.transport.write(data)


def describeEndpoint(endpoint: IStreamClientEndpoint) -> str:
    """
    A short form of a client endpoint for log lines, as well as can be told.
    """
    wrapped = getattr(endpoint, "_wrappedEndpoint", None)
    if wrapped is not None:
        return f"tls:{describeEndpoint(wrapped)}"
    port = getattr(endpoint, "_port", None)
    for attribute in ("_hostText", "_hostStr", "_host"):
        host = getattr(endpoint, attribute, None)
        if isinstance(host, (str, bytes)) and port is not None:
            if isinstance(host, bytes):
                host = host.decode("ascii", "replace")
            return f"{host}:{port}"
    path = getattr(endpoint, "_path", None)
    if path is not None:
        return f"unix:{path}"
    return type(endpoint).__name__


@implementer(IStreamClientEndpoint)
class _CountingEndpoint:
    """
    An endpoint that tells a L{RelayFactory} of each attempt and failure.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, factory: RelayFactory) -> None:
        self._endpoint = endpoint
        self._factory = factory

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self._factory._attempting()
        connecting = self._endpoint.connect(protocolFactory)
        connecting.addErrback(self._failed)
        return connecting

    def _failed(self, reason: Failure) -> Failure:
        self._factory._failed(reason)
        return reason


@provider(ILogObserver)
def _warningsOnly(event: dict[str, Any]) -> None:
    """
    Pass on L{ClientService}'s own warnings and errors, not its note of
    every retry: the relay logs each change of state once instead (twistd
    shows every level, debug included).
    """
    level = event.get("log_level")
    if level is None or level >= LogLevel.warn:
        globalLogPublisher(event)


@implementer(IStatsSource)
class RelayService(ClientService):
    """
    Keeps a L{RelayFactory} connected to upstream through any client
    endpoint, retrying with exponential backoff and jitter.

    This is the one retry mechanism of the connection: the factory's own
    L{ReconnectingClientFactory} retry is switched off.  The backoff comes
    from the factory's C{initial_delay}, C{max_delay} and C{jitter} (see
    L{retryPolicy}) and starts over after each connection made.  Starting
    while upstream is down is fine: it keeps trying.  L{stopService} stops
    trying and closes the connection.
    """

    _log = Logger(observer=_warningsOnly)
    log = Logger()

    #: Seconds L{stopService} waits for a polite close before aborting.
    stopTimeout = 5.0

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        factory: RelayFactory,
        *,
        description: str | None = None,
        clock: IReactorTime | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        """
        @param endpoint: how to reach upstream, e.g. from
            L{clientFromString<twisted.internet.endpoints.clientFromString>}.
        @param factory: the relay; its retry settings are used here.
        @param description: upstream's name in log lines (for example the
            endpoint description); guessed from C{endpoint} if not given.
        @param clock: the reactor for retries; the factory's if not given.
        @param random: the jitter's source of floats in [0, 1).
        """
        factory.delegateRetry()
        factory.destination = description or describeEndpoint(endpoint)
        self.factory = factory
        self.clock = factory.reactor if clock is None else clock
        policy = retryPolicy(factory.initialDelay, factory.maxDelay, factor=factory.factor,
                             jitter=factory.jitter, random=random)
        super().__init__(_CountingEndpoint(endpoint, factory), factory,
                         retryPolicy=policy, clock=self.clock)

    def report(self) -> dict[str, object]:
        """
        The relay's statistics (L{IStatsSource}): its state and the counters
        of L{RelayStats}.
        """
        factory = self.factory
        counters = asdict(factory.stats)
        state = counters.pop("state")
        buffered = counters.pop("buffered")
        return {
            "name": self.name or "connect",
            "kind": "connect",
            "state": state,
            "counters": counters,
            "gauges": {"buffered": buffered, "connected": int(factory.connected)},
            "info": {
                "endpoint": factory.destination,
                "publish_to": None if factory.publishTo is None else factory.publishTo.name,
                "subscribe_to": None if factory.subscribeTo is None else factory.subscribeTo.name,
            },
        }

    def startService(self) -> None:
        """
        Start connecting, and keep the relay connected.
        """
        if not self.running:
            self.factory.continueTrying = True
            self.factory._startRelaying()
            if self.factory._protocol is None:
                self.factory.stats.state = "connecting"
        super().startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop retrying and close the connection.

        @return: a L{Deferred} that fires once the connection is closed (it
            is aborted if upstream does not let it close in L{stopTimeout}).
        """
        self.factory.stopTrying()
        protocol = self.factory._protocol
        stopped = super().stopService()
        if protocol is not None and not stopped.called:
            abort = self.clock.callLater(self.stopTimeout, protocol.transport.abortConnection)

            def closed(result: None) -> None:
                if abort.active():
                    abort.cancel()
                return result

            stopped.addBoth(closed)
        return stopped
