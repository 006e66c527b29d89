"""
Acknowledged publishing (SPEC section 10): a publishing port with
C{acks = true} tells each client how many of its lines are safe.

A client may send as its first line C{HELLO PUBLISHER-ID SEQ}: SEQ is how
many of that publisher's lines were acknowledged before, in any earlier
connection; the lines that follow are its lines SEQ+1, SEQ+2, ...  The port
keeps, per backplane (in its store, when it has one), how many lines of each
publisher id it has published, and skips those it already has: a publisher
that resends what was not yet acknowledged when its connection dropped
never duplicates a line.

The port sends C{ACK N} lines, N being how many lines of this connection
(from the first after C{HELLO}, skipped ones included) are published, and,
on a backplane with a store, written to its files and fsynced: at least
every C{ack_interval} seconds and every C{ack_lines} lines while lines
arrive.  A malformed C{HELLO}, or a SEQ beyond what the port has for that
publisher, gets one line C{ERR reason} and the connection is closed.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from backplane._types import defaultReactor
from backplane.auth.authority import Authority
from backplane.protocols import BackplaneFactory, BackplaneProtocol, Limits
from backplane.service import Backplane, BackplaneService

DEFAULT_ACK_LINES = 1000
#: The most publisher ids an acks port keeps figures of (the least recently
#: seen go first).
MAX_PUBLISHER_STATS = 1000
DEFAULT_ACK_INTERVAL = 1.0

_HELLO = re.compile(rb"HELLO ([A-Za-z0-9._:-]{1,64}) (0|[1-9][0-9]{0,18})")


class PublisherStats:
    """
    What each publisher id did on one port: lines acknowledged, lines
    skipped as already published, connections (with C{HELLO}); bounded to
    the L{MAX_PUBLISHER_STATS} ids seen last.
    """

    def __init__(self, limit: int = MAX_PUBLISHER_STATS) -> None:
        self.limit = limit
        self._ids: dict[str, dict[str, int]] = {}

    def of(self, publisherId: str) -> dict[str, int]:
        """
        The figures of C{publisherId}, made (and made the most recent) now.
        """
        figures = self._ids.pop(publisherId, None)
        if figures is None:
            figures = {"connections": 0, "acknowledged": 0, "deduplicated": 0}
            if len(self._ids) >= self.limit:
                del self._ids[next(iter(self._ids))]
        self._ids[publisherId] = figures
        return figures

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {publisherId: dict(figures) for publisherId, figures in self._ids.items()}


class AckingProtocol(BackplaneProtocol):
    """
    A publisher on an C{acks = true} port: what it sends is published, and
    acknowledged with C{ACK N} lines (see the module's docstring).

    @ivar publisherId: the id its C{HELLO} gave, or L{None}.
    @ivar received: lines of this connection taken: published, or skipped
        as already published.
    @ivar acked: the N of the last C{ACK N} sent.
    """

    log = Logger()

    def __init__(self, backplane: Backplane, *, limits: Limits = Limits(),
                 ackLines: int = DEFAULT_ACK_LINES, ackInterval: float = DEFAULT_ACK_INTERVAL,
                 clock: IReactorTime | None = None) -> None:
        super().__init__(publish_to=backplane, limits=limits)
        self.ackLines = ackLines
        self.ackInterval = ackInterval
        self.clock = clock if clock is not None else defaultReactor()
        self.publisherId: str | None = None
        self.base = 0
        self.received = 0
        self.acked = 0
        self._skip = 0
        self._first = True
        self._timer: IDelayedCall | None = None
        self._syncing: Deferred[None] | None = None
        self._outPaused = False
        self._ackWaiting = False
        self._figures: dict[str, int] | None = None

    def readConnectionLost(self) -> None:
        """
        The publisher's input ended (a FIN): publish its last line, send the
        last C{ACK} at once (once its lines are durable, with a store), and
        then close the connection.
        """
        if self._closing or self.inputEnded:
            return
        self.inputEnded = True
        self.endOfInput()
        if self._closing:
            return
        self._ackNow()
        if self._syncing is None:
            self._finish()

    def _finish(self) -> None:
        if self._ackWaiting:
            self._ackWaiting = False
            self.transport.write(b"ACK %d\n" % self.acked)
        self.close()

    def connectionMade(self) -> None:
        super().connectionMade()
        # What is written is ACK lines only: when the client does not read
        # them, the latest replaces the others instead of piling up.
        self.transport.registerProducer(self, True)
        self._producing = True

    # Lines in.

    def linesReceived(self, data: bytes) -> None:
        backplane = self.publishTo
        if backplane is None or self._closing:
            return
        if self._first:
            self._first = False
            if data.startswith(b"HELLO"):
                line, _, data = data.partition(b"\n")
                if not self._hello(backplane, line) or not data:
                    return
        count = data.count(b"\n")
        if self._skip:
            skipped = min(self._skip, count)
            self._skip -= skipped
            self.received += skipped
            self.portStats.deduplicated += skipped
            if self._figures is not None:
                self._figures["deduplicated"] += skipped
            count -= skipped
            if not count:
                self._ackLater()
                return
            cut = 0
            for _ in range(skipped):
                cut = data.index(b"\n", cut) + 1
            data = data[cut:]
        self.received += count
        stats = self.portStats
        stats.messages_in += count
        stats.bytes_in += len(data)
        mark = None if self.publisherId is None else (self.publisherId, self.base + self.received)
        backplane.publishLines(data, count, origin=self, mark=mark)
        self._ackLater()

    def _hello(self, backplane: Backplane, line: bytes) -> bool:
        match = _HELLO.fullmatch(line.rstrip(b"\r"))
        if match is None:
            self.refuse("expected HELLO PUBLISHER-ID SEQ (an id of 1 to 64 letters, digits "
                        "and ._:-, and a count)")
            return False
        publisherId, seq = match.group(1).decode("ascii"), int(match.group(2))
        factory = self.factory
        if isinstance(factory, AckingFactory):
            factory.takeOver(publisherId, self)
        mark = backplane.mark(publisherId)
        if seq > mark:
            self.refuse(f"HELLO {publisherId} {seq}: this server has only {mark} lines of "
                        f"{publisherId}; were they lost with its store?")
            return False
        self.publisherId = publisherId
        self.base = seq
        self._skip = mark - seq
        if isinstance(factory, AckingFactory):
            self._figures = factory.publisherStats.of(publisherId)
            self._figures["connections"] += 1
        if self._skip:
            self.log.info("Publisher {publisherId} ({peer}) resends from line {seq}; "
                          "{skip} lines are already published and are skipped",
                          publisherId=publisherId, peer=self.peer, seq=seq + 1,
                          skip=self._skip)
        return True

    def refuse(self, reason: str) -> None:
        """
        Send C{ERR reason} and close the connection.
        """
        self.log.info("Refusing {peer}: {reason}", peer=self.peer, reason=reason)
        self.portStats.bad_requests += 1
        self.transport.write(b"ERR " + reason.encode("ascii", "replace") + b"\n")
        self.close()

    # Acknowledgements out.

    def _ackLater(self) -> None:
        if self.received - self.acked >= self.ackLines:
            self._ackNow()
        elif self._timer is None and self.received > self.acked:
            self._timer = self.clock.callLater(self.ackInterval, self._ackNow)

    def _ackNow(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if self._closing or self.received <= self.acked or self._syncing is not None:
            return
        target = self.received
        backplane = self.publishTo
        history = None if backplane is None else backplane.history
        if history is None or history.synced >= history.last:
            self._send(target)
            return
        syncing = self._syncing = history.whenSynced(history.last)
        syncing.addCallbacks(self._synced, self._notSynced,
                             callbackArgs=(target,), errbackArgs=(target,))

    def _synced(self, result: object, target: int) -> None:
        self._syncing = None
        self._send(target)
        if self.inputEnded and not self._closing:
            # Its input has ended: this was the last ACK it waits for.
            self._ackNow()
            if self._syncing is None:
                self._finish()
            return
        self._ackLater()

    def _notSynced(self, failure: Failure, target: int) -> None:
        self._syncing = None
        if self._closing:
            return
        self.log.error("Cannot acknowledge the lines of {peer}: the store did not keep them "
                       "({error}); closing the connection, the client resends",
                       peer=self.peer, error=failure.getErrorMessage())
        self.portStats.store_failures += 1
        self.transport.abortConnection()

    def _send(self, target: int) -> None:
        if self._closing or target <= self.acked:
            return
        self.portStats.acknowledged += target - self.acked
        if self._figures is not None:
            self._figures["acknowledged"] += target - self.acked
        self.acked = target
        if self._outPaused:
            self._ackWaiting = True
        else:
            self.transport.write(b"ACK %d\n" % target)

    # IPushProducer, for the transport: only ACK lines are written.

    def pauseProducing(self) -> None:
        self._outPaused = True

    def resumeProducing(self) -> None:
        self._outPaused = False
        if self._ackWaiting and not self._closing:
            self._ackWaiting = False
            self.transport.write(b"ACK %d\n" % self.acked)

    def stopProducing(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        factory = self.factory
        if isinstance(factory, AckingFactory) and self.publisherId is not None:
            factory.gone(self.publisherId, self)
        super().connectionLost(reason)


class AckingFactory(BackplaneFactory):
    """
    Serves L{AckingProtocol}: a publishing port with C{acks = true}.

    One connection at a time speaks for a publisher id: a C{HELLO} with an id
    that another connection has (one that died without the server noticing
    yet) closes that one first, so that their lines are never counted twice.
    """

    def __init__(self, service: BackplaneService, *, publish_to: str | None = None,
                 subscribe_to: str | None = None, limits: Limits = Limits(),
                 ack_lines: int = DEFAULT_ACK_LINES,
                 ack_interval: float = DEFAULT_ACK_INTERVAL,
                 authority: Authority | None = None,
                 clock: IReactorTime | None = None) -> None:
        """
        @param authority: as for L{BackplaneFactory}: C{AUTH} comes before
            C{HELLO}.
        @raise ValueError: no C{publish_to}, a C{subscribe_to}, or bounds out
            of range.
        """
        if publish_to is None or subscribe_to is not None:
            raise ValueError("acks are for a port that only publishes: it needs publish_to, "
                             "and no subscribe_to")
        if ack_lines < 1 or ack_interval <= 0:
            raise ValueError("ack_lines must be at least 1, ack_interval more than 0")
        super().__init__(service, publish_to=publish_to, limits=limits, authority=authority,
                         clock=clock)
        self.ackLines = ack_lines
        self.ackInterval = ack_interval
        self.clock = clock
        self.publishers: dict[str, AckingProtocol] = {}
        #: What each publisher id did here (in C{/stats}).
        self.publisherStats = PublisherStats()

    def makeProtocol(self) -> AckingProtocol:
        assert self.publishTo is not None
        return AckingProtocol(self.publishTo, limits=self.limits, ackLines=self.ackLines,
                              ackInterval=self.ackInterval, clock=self.clock)

    def takeOver(self, publisherId: str, protocol: AckingProtocol) -> None:
        """
        C{protocol} speaks for C{publisherId} now: close the connection that
        did, at once, reading nothing more from it.
        """
        old = self.publishers.get(publisherId)
        if old is not None and old is not protocol:
            self.log.info("Publisher {publisherId} connected again from {peer}: closing its "
                          "older connection from {old}", publisherId=publisherId,
                          peer=protocol.peer, old=old.peer)
            old.publisherId = None
            old._closing = True
            old.transport.abortConnection()
        self.publishers[publisherId] = protocol

    def gone(self, publisherId: str, protocol: AckingProtocol) -> None:
        if self.publishers.get(publisherId) is protocol:
            del self.publishers[publisherId]
