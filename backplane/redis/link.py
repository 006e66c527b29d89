"""
The Redis bridge's connections: each kept up by a L{_Link}, the only retry
mechanism of that connection, speaking txredisapi's protocol (its connection
factories, which retry on their own, are not used).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, error
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from txredisapi import RedisProtocol, SubscriberProtocol


def retryDelay(attempt: int, initial: float, maximum: float,
               random: Callable[[], float] = random.random) -> float:
    """
    Seconds to wait before reconnection attempt number C{attempt} (1 is the
    first after a failure): an exponential step, C{initial * 2 ** (attempt -
    1)}, times a random factor between 0.5 and 1.5, kept between C{initial}
    and C{maximum}.  The jitter keeps nodes that lost Redis together from
    coming back all at once.
    """
    step = min(maximum, initial * 2.0 ** min(attempt - 1, 64))
    return min(maximum, max(initial, step * (0.5 + random())))


class _Link:
    """
    One connection to Redis, kept up.

    It connects; once C{prepare} (log in, subscribe...) has succeeded it is
    ready and checked with a PING every C{timeout} seconds; after a failed
    attempt, a failed C{prepare}, an unanswered PING or a lost connection it
    waits (L{retryDelay}) and connects again, until stopped.  It is the only
    retry mechanism of its connection.
    """

    def __init__(
        self,
        name: str,
        endpoint: IStreamClientEndpoint,
        protocol: Callable[..., Any],
        *,
        prepare: Callable[[Any], Deferred[object]],
        ready: Callable[[_Link], None],
        down: Callable[[_Link, str], None],
        delay: Callable[[int], float],
        timeout: float,
        clock: Any,
    ) -> None:
        self.name = name
        self.endpoint = endpoint
        self.protocolClass = protocol
        self.prepare = prepare
        self.onReady = ready
        self.onDown = down
        self.delay = delay
        self.timeout = timeout
        self.clock = clock
        self.protocol: Any = None
        self.ready = False
        self._failures = 0
        self._why = ""
        self._stopping = True
        self._attempt: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._ping: IDelayedCall | None = None
        self._abort: IDelayedCall | None = None
        self._stopped: list[Deferred[None]] = []

    def start(self) -> None:
        """
        Connect, and keep connecting until L{stop}.
        """
        self._stopping = False
        self._failures = 0
        self._connect()

    def stop(self) -> Deferred[None]:
        """
        Stop retrying and close the connection.

        @return: a L{Deferred} that fires once the connection is closed.
        """
        self._stopping = True
        for call in (self._retry, self._ping):
            if call is not None and call.active():
                call.cancel()
        self._retry = self._ping = None
        if self._attempt is not None:
            self._attempt.cancel()
        if self.protocol is None:
            return succeed(None)
        stopped: Deferred[None] = Deferred()
        self._stopped.append(stopped)
        transport = self.protocol.transport
        # A server that does not read would hold loseConnection forever.
        if self._abort is None:
            self._abort = self.clock.callLater(self.timeout, transport.abortConnection)
        transport.loseConnection()
        return stopped

    def _connect(self) -> None:
        self._retry = None
        factory = _LinkFactory(self)
        self._attempt = attempt = self.endpoint.connect(factory)
        attempt.addCallbacks(self._connected, self._attemptFailed)

    def _attemptFailed(self, failure: Failure) -> None:
        self._attempt = None
        # A retry is already set if the connection was made and lost before
        # the endpoint gave up on it.
        if not self._stopping and self._retry is None:
            self._retryLater(f"cannot connect: {failure.getErrorMessage()}")

    def _connected(self, protocol: Any) -> None:
        self._attempt = None
        if protocol is not self.protocol:
            # Lost before the endpoint reported it: _lost has dealt with it.
            return
        if self._stopping:
            protocol.transport.loseConnection()
            return
        preparing = maybeDeferred(self.prepare, protocol)
        preparing.addTimeout(self.timeout, self.clock)
        preparing.addCallbacks(self._prepared, self._unprepared,
                               callbackArgs=(protocol,), errbackArgs=(protocol,))

    def _prepared(self, result: object, protocol: Any) -> None:
        if protocol is not self.protocol or self._stopping:
            return
        self.ready = True
        self._failures = 0
        self._ping = self.clock.callLater(self.timeout, self._sendPing)
        self.onReady(self)

    def _unprepared(self, failure: Failure, protocol: Any) -> None:
        if protocol is self.protocol and not self._stopping:
            self._why = f"no usable connection: {_describe(failure, self.timeout)}"
            protocol.transport.abortConnection()

    def _sendPing(self) -> None:
        self._ping = None
        protocol = self.protocol
        if protocol is None or not self.ready:
            return
        pinged = protocol.ping()
        pinged.addTimeout(self.timeout, self.clock)
        pinged.addCallbacks(self._pong, self._noPong,
                            callbackArgs=(protocol,), errbackArgs=(protocol,))

    def _pong(self, result: object, protocol: Any) -> None:
        if protocol is self.protocol and self.ready and not self._stopping:
            self._ping = self.clock.callLater(self.timeout, self._sendPing)

    def _noPong(self, failure: Failure, protocol: Any) -> None:
        if protocol is self.protocol and not self._stopping:
            self._why = f"PING unanswered: {_describe(failure, self.timeout)}"
            protocol.transport.abortConnection()

    def built(self, protocol: Any) -> None:
        """
        A protocol was built for a new connection (called by the factory).
        """
        self.protocol = protocol
        self._why = ""

    def lost(self, protocol: Any, reason: Failure) -> None:
        """
        The connection of C{protocol} is closed (called by the protocol).
        """
        if protocol is not self.protocol:
            return
        self.protocol = None
        self.ready = False
        for call in (self._ping, self._abort):
            if call is not None and call.active():
                call.cancel()
        self._ping = self._abort = None
        if self._stopping:
            stopped, self._stopped = self._stopped, []
            for d in stopped:
                d.callback(None)
            return
        self._retryLater(self._why or f"connection lost: {reason.getErrorMessage()}")

    def _retryLater(self, why: str) -> None:
        self._failures += 1
        self._retry = self.clock.callLater(self.delay(self._failures), self._connect)
        self.onDown(self, why)


def _describe(failure: Failure, timeout: float) -> str:
    # Deferred.addTimeout raises one or the other, by Twisted version.
    if failure.check(defer.TimeoutError, error.TimeoutError):
        return f"no answer within {timeout:g} s"
    return failure.getErrorMessage()


class _LinkFactory(Factory):
    """
    Builds the txredisapi protocol of a L{_Link}'s connection: bytes in, bytes
    out (no decoding, no number conversion), on the link's clock.
    """

    noisy = False

    def __init__(self, link: _Link) -> None:
        self.link = link

    def buildProtocol(self, addr: object) -> Any:
        protocol = self.link.protocolClass(charset=None, convertNumbers=False)
        protocol.factory = self
        protocol.link = self.link
        protocol.callLater = self.link.clock.callLater
        self.link.built(protocol)
        return protocol


class _InlineParsing:
    """
    Parse all that a read brings at once.

    txredisapi's pure-Python parser (the one used without hiredis) parses
    what follows each bulk string on a later turn of the reactor, pausing the
    transport meanwhile: three turns and four epoll calls per pub/sub
    message.  Here what follows is parsed in a loop instead (hiredis's parser
    never gets there).
    """

    _extra = b""

    def setLineMode(self, extra: bytes = b"") -> None:
        # Called by rawDataReceived at the very end of dataReceived, with
        # what follows the bulk string: nothing else is buffered then.
        self.line_mode = 1
        self._extra = extra

    def dataReceived(self, data: bytes, unpause: bool = False) -> None:
        super().dataReceived(data)  # type: ignore[misc]
        while self._extra:
            extra, self._extra = self._extra, b""
            super().dataReceived(extra)  # type: ignore[misc]


class _Publisher(_InlineParsing, RedisProtocol):  # type: ignore[misc,valid-type]
    """
    The publishing connection.
    """

    link: _Link

    def connectionLost(self, why: Failure) -> None:
        # The link first, so that the PUBLISHes it fails below are counted
        # in the outage that this loss begins.
        self.link.lost(self, why)
        super().connectionLost(why)


class _Subscriber(_InlineParsing, SubscriberProtocol):  # type: ignore[misc,valid-type]
    """
    The subscribed connection.
    """

    link: _Link
    received: Callable[[bytes, bytes], None]

    def messageReceived(self, pattern: object, channel: bytes, message: bytes) -> None:
        self.received(channel, message)

    def connectionLost(self, why: Failure) -> None:
        self.link.lost(self, why)
        super().connectionLost(why)
