"""
The relay: a client of an upstream line server whose lines are published to a
local backplane, and/or which sends a local backplane's lines upstream,
reconnecting with exponential backoff and jitter.

The pieces, one job each:

  - L{Relay}, the core: the backplanes, the lines waiting to go upstream
    (L{LineBuffer}), the state and its L{RelayStats}, the log lines.  Whoever
    connects tells it what happens through its public methods.
  - L{RelayProtocol}, one connection: it frames what upstream sends with a
    L{LineFramer} and writes what the core gives it.
  - Two ways to connect, each with exactly one retry mechanism:
    L{RelayFactory} is a L{ReconnectingClientFactory} over a core
    (C{reactor.connectTCP(host, port, RelayFactory(service, "DATA"))}, and
    the factory reconnects by itself); L{RelayService} is a L{ClientService}
    over a core, for any client endpoint (tcp, tls, unix, ...), connecting
    through a plain L{RelayClientFactory}.

With C{acks}, the lines going upstream are kept in an L{Outbox} (in memory,
or on disk with a spool) instead of a L{LineBuffer} until upstream, a port
with C{acks = true}, acknowledges them (SPEC section 10): each connection
begins with C{HELLO}, the relay resends what was not acknowledged, and takes
C{ACK N} lines.
"""

from __future__ import annotations

import random as _random
import re
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from twisted.application.internet import ClientService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IDelayedCall,
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, ReconnectingClientFactory, connectionDone
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from backplane._types import defaultReactor
from backplane.address import describePeer
from backplane.budget import UnfinishedBudget
from backplane.framing import DEFAULT_MAX_LINE_LENGTH, LineFramer
from backplane.history.ids import ID_PREFIX_ROOM
from backplane.interfaces import ILineSink, IStatsSource
from backplane.outbox import DEFAULT_SPOOL_BYTES as DEFAULT_SPOOL_BYTES
from backplane.outbox import DEFAULT_SPOOL_FSYNC_INTERVAL as DEFAULT_SPOOL_FSYNC_INTERVAL
from backplane.outbox import Outbox
from backplane.protocols import Limits
from backplane.retry import DEFAULT_FACTOR as DEFAULT_FACTOR
from backplane.retry import DEFAULT_INITIAL_DELAY as DEFAULT_INITIAL_DELAY
from backplane.retry import DEFAULT_JITTER as DEFAULT_JITTER
from backplane.retry import DEFAULT_MAX_DELAY as DEFAULT_MAX_DELAY
from backplane.retry import backoffPolicy
from backplane.service import Backplane, BackplaneService, Subscription

RelayState = Literal["connecting", "connected", "waiting", "stopped"]

DEFAULT_BUFFER = 10000
#: Seconds after which a relay with C{acks} warns (once a connection) that
#: upstream has acknowledged none of the lines it sent.
ACK_WARNING = 10.0

# An id at the start of a line (SPEC section 9: EPOCH:SEQ), and the room one
# takes beyond max_line_length.
_ID_PREFIX = re.compile(rb"^[0-9a-z]{1,32}:[1-9][0-9]{0,19} ", re.MULTILINE)
_ID_ROOM = ID_PREFIX_ROOM


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
    @ivar resumes: connections on which the relay asked upstream to resume
        after the last id it had (C{resume = true}).
    @ivar gaps: times upstream said messages the relay asked for are
        missing.
    @ivar refused: lines from upstream that are not what C{resume = true}
        or C{acks = true} expects (an id or a control line; an C{ACK}), and
        C{ERR} lines of an C{acks = true} upstream.
    @ivar acknowledged: with C{acks}: lines upstream acknowledged.
    @ivar resent: with C{acks}: lines sent again, because upstream had not
        acknowledged them when the connection (or, with a spool, the
        process) ended.
    @ivar spooled: with C{acks}: lines kept now that upstream has not
        acknowledged (in memory, or in the spool).
    @ivar discarded_bytes: bytes of half lines from upstream never
        published: a connection reset, aborted or cut for a line longer than
        C{max_line_length} or for holding the longest unfinished line past
        C{[limits] max_unfinished_total} (a half line before a clean end, a
        FIN, is published).
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
    resumes: int = 0
    gaps: int = 0
    refused: int = 0
    acknowledged: int = 0
    resent: int = 0
    spooled: int = 0
    discarded_bytes: int = 0


def retryPolicy(
    initial_delay: float = DEFAULT_INITIAL_DELAY,
    max_delay: float = DEFAULT_MAX_DELAY,
    *,
    factor: float = DEFAULT_FACTOR,
    jitter: float = DEFAULT_JITTER,
    random: Callable[[], float] = _random.random,
) -> Callable[[int], float]:
    """
    The spelling of earlier releases of L{backplane.retry.backoffPolicy}
    (which L{RelayService} uses), with its keyword arguments.
    """
    return backoffPolicy(initial_delay, max_delay, factor=factor, jitter=jitter, random=random)


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


class PendingLines(Protocol):
    """
    Where a L{Relay} keeps the lines that cannot go upstream now (no
    connection, or upstream not reading), to send them first, oldest first,
    when they can: a L{LineBuffer} in memory; with C{acks}, an
    L{Outbox}, which keeps the lines sent too, until upstream acknowledges
    them.
    """

    @property
    def lines(self) -> int:
        """
        The lines kept now.
        """

    def __bool__(self) -> bool:
        """
        Whether any line is kept.
        """

    def add(self, data: bytes, count: int) -> int:
        """
        Keep a chunk of C{count} lines.

        @return: how many lines (the oldest) were dropped to make room.
        """

    def take(self) -> tuple[bytes, int]:
        """
        Remove and return the oldest chunk kept, and its number of lines.
        """

    def written(self, data: bytes, count: int) -> int:
        """
        A chunk of C{count} lines is written upstream at once (none is kept
        now): take note of it, if it must be kept until acknowledged.

        @return: how many lines (the oldest) were dropped to make room.
        """


class LineBuffer:
    """
    The newest C{size} lines not yet sent upstream, in memory, in chunks as
    they were published; past C{size} the oldest lines are dropped, whole.
    """

    def __init__(self, size: int) -> None:
        """
        @param size: the most lines kept (0: none).
        @raise ValueError: C{size} is negative.
        """
        if size < 0:
            raise ValueError("buffer must be 0 or more")
        self.size = size
        self._chunks: deque[tuple[bytes, int]] = deque()
        self._lines = 0

    @property
    def lines(self) -> int:
        """
        The lines kept now.
        """
        return self._lines

    def __bool__(self) -> bool:
        return bool(self._chunks)

    def add(self, data: bytes, count: int) -> int:
        """
        Keep a chunk of C{count} lines, dropping the oldest lines past
        C{size}.

        @return: the number of lines dropped.
        """
        chunks = self._chunks
        chunks.append((data, count))
        held = self._lines + count
        dropped = max(held - self.size, 0)
        excess = dropped
        while excess:
            first, lines = chunks[0]
            if lines <= excess:
                chunks.popleft()
                excess -= lines
            else:
                chunks[0] = (first.split(b"\n", excess)[-1], lines - excess)
                excess = 0
        self._lines = held - dropped
        return dropped

    def take(self) -> tuple[bytes, int]:
        """
        Remove and return the oldest chunk, and its number of lines.

        @raise IndexError: nothing is kept.
        """
        data, count = self._chunks.popleft()
        self._lines -= count
        return data, count

    def written(self, data: bytes, count: int) -> int:
        """
        A chunk goes upstream at once: nothing to keep.

        @return: 0.
        """
        return 0


@implementer(ILineSink)
class Relay:
    """
    The core of a relay to an upstream line server, whoever connects it.

    With C{publish_to}, the lines upstream sends are published to that
    backplane, framed as on a server port.  With C{subscribe_to}, every line
    of that backplane is sent upstream; while upstream is down or not
    reading, up to C{buffer} lines wait in L{pending} (surviving reconnects)
    and are sent first, oldest first, when it is back; past C{buffer} the
    oldest are dropped and counted.  A relay that does both with one
    backplane does not send upstream's own lines back to it (it is their
    origin).

    With C{acks} (SPEC section 10: upstream is a port with C{acks = true},
    and the relay only sends), every line of C{subscribe_to} is kept in an
    L{Outbox} (L{outbox}, which is also L{pending}) until upstream
    acknowledges it: up to C{buffer} lines in memory, or in a folder on disk
    (C{spool}), bounded by C{spool_bytes}, which survives the relay's
    restarts.  Each connection begins with C{HELLO PUBLISHER-ID SEQ}, then
    the lines not acknowledged, oldest first, then live lines; upstream's
    C{ACK N} lines say how many of them are safe.  Past the bound, the
    oldest lines not acknowledged are dropped and counted; if lines not yet
    sent had to go, the connection is closed and the next one begins a new
    publisher id (upstream refuses a C{HELLO} that skips lines).

    Whoever makes the connections (L{RelayFactory}, L{RelayService}) tells
    it of each attempt (L{connecting}), failure (L{connectionFailed}) and of
    whether it keeps trying (L{start}, L{stop}); each L{RelayProtocol} tells
    it of its connection (L{connectionMade}, L{connectionLost},
    L{connectionIdle}) and of the lines upstream sent (L{linesReceived}).  It logs each change of
    state once, not each attempt.

    Seams for what a later protocol with upstream needs: L{greet} is called
    with each new connection before anything else is sent on it (to send a
    first line, or to put a reader of control lines in front of the
    protocol's L{LineFramer}); L{linesReceived} sees every line upstream
    sends; L{pending} is the one place that keeps unsent lines.

    @ivar stats: the relay's L{RelayStats}.
    @ivar pending: the lines waiting to go upstream (L{PendingLines}).
    @ivar outbox: with C{acks}, the L{Outbox} (also L{pending}); else
        L{None}.
    @ivar protocol: the L{RelayProtocol} connected now, or L{None}.
    @ivar destination: where upstream is, for log lines.
    @ivar trying: whether the relay keeps (re)connecting: C{False} once
        L{stop} is called, until L{start}.
    """

    log = Logger()

    def __init__(
        self,
        service: BackplaneService,
        publish_to: str | None = None,
        *,
        subscribe_to: str | None = None,
        buffer: int = DEFAULT_BUFFER,
        idle_timeout: float | None = None,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_delay: float = DEFAULT_MAX_DELAY,
        clock: IReactorTime | None = None,
        resume: bool = False,
        acks: bool = False,
        spool: str | None = None,
        spool_bytes: int = DEFAULT_SPOOL_BYTES,
        spool_fsync_interval: float = DEFAULT_SPOOL_FSYNC_INTERVAL,
    ) -> None:
        """
        @param service: the registry the backplanes are looked up in.
        @param publish_to: the backplane lines from upstream are published to.
        @param subscribe_to: the backplane whose lines are sent upstream.
        @param buffer: the most lines of C{subscribe_to} kept while they
            cannot be sent (0: none are kept); with C{acks} and no C{spool},
            the most lines kept until upstream acknowledges them (1 or more).
        @param idle_timeout: drop the connection when upstream sends nothing
            for this many seconds; L{None}: never.
        @param max_line_length: the longest line accepted from upstream;
            a longer one is not published and the connection is dropped.
        @param max_delay: the longest wait between retries of whoever
            connects the relay, for log lines.
        @param clock: the reactor (L{IReactorTime}) for timeouts.
        @param resume: upstream is a port with C{ids = true}: strip the ids
            of its lines, remember the last, and on every connection after
            the first send C{RESUME} with it, so that nothing is lost or
            repeated across reconnects (SPEC section 9).
        @param acks: upstream is a port with C{acks = true}: keep every line
            of C{subscribe_to} until upstream acknowledges it (SPEC section
            10).  Needs C{subscribe_to}, and no C{publish_to}.
        @param spool: with C{acks}: keep the lines in this folder (made if
            missing) instead of in memory, so that they survive restarts.
        @param spool_bytes: the most bytes of the spool's files; past it the
            oldest lines not acknowledged are dropped.
        @param spool_fsync_interval: the most seconds between a write to the
            spool and its fsync.
        @raise ValueError: no direction, or an option out of range.
        @raise UnknownBackplane: a named backplane is not registered.
        @raise StoreError: the spool cannot be opened.
        """
        if publish_to is None and subscribe_to is None:
            raise ValueError("a relay needs publish_to, subscribe_to, or both")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be more than 0 (or None: off)")
        if max_line_length < 1:
            raise ValueError("max_line_length must be at least 1")
        if acks and (subscribe_to is None or publish_to is not None):
            raise ValueError("acks are for a relay that only sends upstream: it needs "
                             "subscribe_to, and no publish_to")
        if spool is not None and not acks:
            raise ValueError("a spool keeps lines until upstream acknowledges them: it needs acks")
        if acks and spool is None and buffer < 1:
            raise ValueError("with acks, buffer must be at least 1 (the lines kept until "
                             "upstream acknowledges them)")
        self.publishTo = None if publish_to is None else service.get(publish_to)
        self.subscribeTo = None if subscribe_to is None else service.get(subscribe_to)
        #: The clock of timeouts.
        self.clock: IReactorTime = defaultReactor() if clock is None else clock
        self.outbox: Outbox | None = None
        if not acks:
            self.pending: PendingLines = LineBuffer(buffer)
        elif spool is None:
            self.pending = self.outbox = Outbox.inMemory(buffer)
        else:
            self.pending = self.outbox = Outbox.onDisk(
                spool, maxBytes=spool_bytes, fsyncInterval=spool_fsync_interval,
                clock=self.clock)
        self.bufferSize = buffer
        self.idleTimeout = idle_timeout
        self.resume = resume
        if resume and publish_to is None:
            raise ValueError("resume is for what comes from upstream: it needs publish_to")
        #: The longest line upstream may send: with ids, room for one.
        self.maxLineLength = max_line_length + (_ID_ROOM if resume else 0)
        #: With C{resume}: the id of the last line published from upstream.
        self.lastId: bytes | None = None
        self.maxDelay = max_delay
        #: The service's bound on the unfinished input of all its
        #: connections (C{[limits] max_unfinished_total}), on which the
        #: connection upstream counts its half line as a port's clients do.
        self.unfinishedBudget: UnfinishedBudget = service.unfinished
        self.stats = RelayStats()
        if self.outbox is not None:
            self.stats.buffered = self.outbox.lines
            self.stats.spooled = self.outbox.unacknowledged
        self.destination = "upstream"
        self.protocol: RelayProtocol | None = None
        self.trying = True
        self._subscription: Subscription | None = None
        self._everConnected = False
        self._attemptsSinceUp = 0
        self._droppedSinceUp = 0
        self._quiet = False  # a failure of this outage has been logged
        self._ackWarning: IDelayedCall | None = None
        self._acksHeard = False  # an ACK came on this connection
        self._subscribe()

    def __repr__(self) -> str:
        return f"<Relay to {self.destination} {self.stats.state}>"

    @property
    def connected(self) -> bool:
        """
        Whether a connection to upstream is up now.
        """
        return self.protocol is not None

    @property
    def reads(self) -> bool:
        """
        Whether the relay reads what upstream sends: lines to publish
        (C{publish_to}), or acknowledgements (C{acks}).
        """
        return self.publishTo is not None or self.outbox is not None

    def open(self) -> None:
        """
        Open the spool again if L{close} closed it (nothing otherwise).

        @raise StoreError: it cannot be opened.
        """
        outbox = self.outbox
        if outbox is not None:
            outbox.open()
            self.stats.buffered = outbox.lines
            self.stats.spooled = outbox.unacknowledged

    def close(self) -> Deferred[None]:
        """
        Close the spool, if any, once the relay is stopped and has no
        connection: what it holds is made durable, to be sent after the
        next start.
        """
        if self.outbox is None:
            return succeed(None)
        return self.outbox.close()

    # Whether to keep trying: told by whoever connects.

    def start(self) -> None:
        """
        Keep (re)connecting: take the lines of C{subscribe_to} again (to send
        or to buffer), and say C{"connecting"} if the relay had stopped.
        """
        self.trying = True
        self._subscribe()
        if self.protocol is None and self.stats.state == "stopped":
            self.stats.state = "connecting"

    def stop(self) -> None:
        """
        Stop (re)connecting.  A connection that is up stays up (whoever
        connected it closes it); once there is none the relay is
        C{"stopped"} and takes no more lines from C{subscribe_to}.
        """
        self.trying = False
        if self.protocol is None:
            self.stats.state = "stopped"
            self._unsubscribe()

    # What happens to the connection attempts: told by whoever connects.

    def connecting(self, destination: str | None = None) -> None:
        """
        An attempt to connect has begun (to C{destination}, if known).
        """
        if destination is not None:
            self.destination = destination
        self.stats.attempts += 1
        self._attemptsSinceUp += 1
        self.stats.state = "connecting"
        self._subscribe()

    def connectionFailed(self, reason: Failure) -> None:
        """
        An attempt to connect failed; the first failure of an outage is
        logged.
        """
        if not self.trying:
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

    # What happens to a connection: told by its RelayProtocol.

    def connectionMade(self, protocol: RelayProtocol) -> None:
        """
        C{protocol} is connected to upstream: greet it, then send what
        waits, oldest first, and from now on what is published.
        """
        self.protocol = protocol
        self.destination = protocol.peer
        self.stats.connects += 1
        self.stats.state = "connected"
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
        self.greet(protocol)
        self._subscribe()
        self.sendPending()

    def greet(self, protocol: RelayProtocol) -> None:
        """
        Called with each new connection before anything else is written to
        it: the place for a first line (C{protocol.sendLines(b"HELLO ...\\n")})
        or a reader of control lines (C{protocol.framer.receiver}).  The
        plain relay says nothing; with C{resume}, it asks for what follows
        the last id it has; with C{acks}, it says C{HELLO} (and the lines
        not acknowledged follow it).
        """
        if self.resume and self.lastId is not None:
            self.stats.resumes += 1
            protocol.sendLines(b"RESUME " + self.lastId + b"\n")
        outbox = self.outbox
        if outbox is not None:
            before = outbox.publisherId
            hello = outbox.hello()
            if outbox.publisherId != before:
                self.log.warn(
                    "Relay to {destination}: lines were dropped (or upstream refused to go "
                    "on) before upstream acknowledged them, so the relay goes on as a new "
                    "publisher, {publisherId}, from the first line it keeps",
                    destination=self.destination, publisherId=outbox.publisherId)
            protocol.sendLines(hello)
            self._acksHeard = False
            self._ackWarning = self.clock.callLater(ACK_WARNING, self._noAcks, protocol)

    def _noAcks(self, protocol: RelayProtocol) -> None:
        """
        C{ACK_WARNING} seconds after C{protocol} said C{HELLO}: warn if lines
        were sent and none acknowledged (upstream may not be an C{acks =
        true} port); wait again if none were sent.
        """
        self._ackWarning = None
        outbox = self.outbox
        if outbox is None or protocol is not self.protocol or self._acksHeard:
            return
        if outbox.sent > outbox.acked:
            self.log.warn(
                "Relay to {destination}: upstream has acknowledged none of the lines sent "
                "in {seconds} seconds; is it a port with acks = true?",
                destination=self.destination, seconds=ACK_WARNING)
            return
        self._ackWarning = self.clock.callLater(ACK_WARNING, self._noAcks, protocol)

    def connectionLost(self, protocol: RelayProtocol, reason: Failure | None) -> None:
        """
        C{protocol}'s connection is gone: wait for the next one, or stop.
        """
        if protocol is not self.protocol:
            return
        self.protocol = None
        if self._ackWarning is not None:
            if self._ackWarning.active():
                self._ackWarning.cancel()
            self._ackWarning = None
        if self.outbox is not None:
            self.outbox.disconnected()
            self.stats.buffered = self.outbox.lines
        why = reason.getErrorMessage() if reason is not None else "closed"
        if self.trying:
            self.stats.state = "waiting"
            self._quiet = True
            self.log.warn(
                "Relay lost its connection to {peer} ({reason}); reconnecting with backoff",
                peer=protocol.peer, reason=why,
            )
        else:
            self.stats.state = "stopped"
            self.log.info("Relay closed its connection to {peer}", peer=protocol.peer)
            self._unsubscribe()

    def connectionIdle(self, protocol: RelayProtocol) -> None:
        """
        Upstream sent nothing for C{idle_timeout} seconds: C{protocol} drops
        its connection.
        """
        self.stats.idle_timeouts += 1
        self.log.warn(
            "Relay heard nothing from {peer} for {timeout}s (idle_timeout); "
            "dropping the connection",
            peer=protocol.peer, timeout=self.idleTimeout,
        )

    # Lines from upstream.

    def linesReceived(self, data: bytes) -> None:
        """
        Publish a chunk of complete lines upstream sent, framed by the
        protocol, with the relay as their origin.
        """
        if self.outbox is not None:
            self._acknowledgements(data)
            return
        backplane = self.publishTo
        if backplane is None:
            return
        if self.resume:
            data = self._withoutIds(data)
            if not data:
                return
        count = data.count(b"\n")
        self.stats.lines_in += count
        backplane.publishLines(data, count, origin=self)

    def _withoutIds(self, data: bytes) -> bytes:
        """
        The payloads of a chunk of C{ID payload} lines (one regular
        expression over the chunk), remembering the last id; control lines
        (C{GAP}, C{ERR}) are logged and counted.  A line that is neither
        drops the connection: upstream is not an C{ids = true} port.
        """
        if data.startswith((b"GAP ", b"ERR ")) or b"\nGAP " in data or b"\nERR " in data:
            lines = data.split(b"\n")
            lines.pop()
            data = b"".join(line + b"\n" for line in lines if not self._control(line))
            if not data:
                return data
        payloads, count = _ID_PREFIX.subn(b"", data)
        if count != data.count(b"\n"):
            self.stats.refused += 1
            self.log.error(
                "Relay to {destination}: upstream sent a line without an id; is it a port "
                "with ids = true? Dropping the connection", destination=self.destination)
            if self.protocol is not None:
                self.protocol.transport.abortConnection()
            return b""
        start = data.rfind(b"\n", 0, len(data) - 1) + 1
        self.lastId = data[start:data.index(b" ", start)]
        return payloads

    def _acknowledgements(self, data: bytes) -> None:
        """
        What an C{acks = true} upstream sends: C{ACK N} lines, or one C{ERR}
        line before it closes the connection.  Anything else (or an C{ACK}
        of more lines than were sent) drops the connection.
        """
        outbox = self.outbox
        protocol = self.protocol
        if outbox is None or protocol is None:
            return
        for line in data.split(b"\n")[:-1]:
            count = line[4:]
            if line.startswith(b"ACK ") and count.isdigit() and len(count) < 20:
                self._acksHeard = True
                try:
                    self.stats.acknowledged += outbox.acknowledge(int(count))
                except ValueError as e:
                    self._refuse(protocol, str(e))
                    return
            elif line.startswith(b"ERR "):
                self.stats.refused += 1
                outbox.refused()
                self.log.error(
                    "Relay to {destination}: upstream refused HELLO for publisher "
                    "{publisherId}: {reason}; the lines it has not acknowledged go again, "
                    "as a new publisher", destination=self.destination,
                    publisherId=outbox.publisherId,
                    reason=line[4:200].decode("ascii", "replace"))
            else:
                self._refuse(protocol, f"it sent {line[:64]!r}, not ACK N; is it a port "
                                       "with acks = true?")
                return
        self.stats.spooled = outbox.unacknowledged

    def _refuse(self, protocol: RelayProtocol, reason: str) -> None:
        self.stats.refused += 1
        self.log.error("Relay to {destination}: upstream does not speak acks: {reason}; "
                       "dropping the connection", destination=self.destination, reason=reason)
        protocol.abort()

    def _control(self, line: bytes) -> bool:
        if line.startswith(b"GAP "):
            self.stats.gaps += 1
            self.log.warn("Relay to {destination}: upstream lost lines the relay asked for "
                          "({gap})", destination=self.destination,
                          gap=line[4:200].decode("ascii", "replace"))
            return True
        if line.startswith(b"ERR "):
            self.log.error("Relay to {destination}: upstream refused: {reason}",
                           destination=self.destination,
                           reason=line[4:200].decode("ascii", "replace"))
            return True
        return False

    # Lines going upstream: ILineSink, and the buffer.

    def deliver(self, data: bytes, count: int) -> None:
        """
        Send a chunk of lines upstream now, or keep it in L{pending}.
        """
        protocol = self.protocol
        pending = self.pending
        if protocol is not None and not pending and protocol.writable:
            dropped = pending.written(data, count)
            protocol.sendLines(data)
            self.stats.lines_out += count
        else:
            dropped = pending.add(data, count)
            self.stats.buffered = pending.lines
        if dropped:
            self._dropped(dropped)
        outbox = self.outbox
        if outbox is not None:
            self.stats.spooled = outbox.unacknowledged
            if outbox.behind:
                self._behind()

    def sendPending(self) -> None:
        """
        Write the buffered lines upstream, oldest first, while upstream reads.
        """
        protocol = self.protocol
        pending = self.pending
        outbox = self.outbox
        while pending and protocol is not None and self.protocol is protocol \
                and protocol.writable:
            if outbox is not None and outbox.behind:
                self._behind()
                return
            data, count = pending.take()
            self.stats.buffered = pending.lines
            self.stats.lines_out += count
            if outbox is not None:
                self.stats.resent = outbox.resent
            protocol.sendLines(data)

    def _behind(self) -> None:
        """
        Lines not yet sent on this connection are gone from the outbox: the
        lines that follow are not what upstream would count, so the
        connection is closed; the next one begins a new publisher id.
        """
        protocol = self.protocol
        if protocol is None or protocol.closing:
            return
        self.log.warn("Relay to {destination}: lines not yet sent were dropped; closing the "
                      "connection, to go on as a new publisher", destination=self.destination)
        protocol.abort()

    def _dropped(self, count: int) -> None:
        if not self._droppedSinceUp:
            outbox = self.outbox
            if outbox is None:
                self.log.warn(
                    "Relay to {destination}: {buffer} lines are waiting to go upstream "
                    "(the buffer option); dropping the oldest",
                    destination=self.destination, buffer=self.bufferSize,
                )
            else:
                self.log.warn(
                    "Relay to {destination}: the lines upstream has not acknowledged fill the "
                    "{bound}; dropping the oldest", destination=self.destination,
                    bound="buffer" if outbox.path is None else f"spool {outbox.path}",
                )
        self._droppedSinceUp += count
        self.stats.dropped += count
        assert self.subscribeTo is not None
        self.subscribeTo.stats.dropped += count

    def _subscribe(self) -> None:
        if self.subscribeTo is not None and self._subscription is None:
            self._subscription = self.subscribeTo.attach(self, origin=self)

    def _unsubscribe(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None


@implementer(IPushProducer, IHandshakeListener)
class RelayProtocol(TwistedProtocol, TimeoutMixin):
    """
    One connection of a L{Relay} to its upstream.

    Lines from upstream are framed exactly as on a server port, by its
    L{framer} (a L{LineFramer}), and handed to the relay, which publishes
    them; lines going upstream are written by the relay (L{sendLines}),
    which keeps what cannot be written now.  It is its transport's
    streaming producer, so that the relay knows when upstream is not
    reading (L{writable}).  Over TLS it counts as a publisher of
    C{publish_to} once the handshake is done.

    Upstream's half line is held on the service's bound on unfinished input
    (the relay's L{Relay.unfinishedBudget}), as a port's clients' are: it is
    an L{UnfinishedHolder<backplane.budget.UnfinishedHolder>}, counting what
    it holds after each read, and cut (L{overUnfinished}) when it holds the
    most past the bound.

    @ivar framer: the L{LineFramer} of what upstream sends.
    @ivar peer: upstream's address, for log lines.
    """

    log = Logger()
    # Once connected: a TCP, TLS or UNIX transport (or a StringTransport).
    transport: Any

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.framer = LineFramer(self, relay.maxLineLength)
        self.peer = "?"
        self.paused = False
        self._closing = False
        self._handshaking = False
        self._joined = False
        self._unfinished = 0

    @property
    def unfinished(self) -> int:
        """
        The bytes of upstream's unfinished line the connection holds on the
        service's bound on unfinished input, as of its last read.
        """
        return self._unfinished

    def _countUnfinished(self) -> None:
        """
        Count what the connection holds of an unfinished line now on the
        service's bound, if it changed: once a read, never a line at a time
        (nothing once it is closing).
        """
        held = 0 if self._closing else len(self.framer.buffered)
        before = self._unfinished
        if held != before:
            self._unfinished = held
            self.relay.unfinishedBudget.update(self, before, held)

    def overUnfinished(self) -> None:
        """
        All connections together hold more than C{max_unfinished_total} of
        unfinished input, and upstream's half line is the longest: log it,
        forget it (never published, counted in the relay's
        C{discarded_bytes}), release it from the bound and close the
        connection; the relay reconnects as after any loss.
        """
        length = len(self.framer.discard())
        self.log.warn(
            "Disconnecting {peer}: its unfinished line of {length} bytes is the longest, and "
            "all connections together hold more than max_unfinished_total ({limit} bytes) of "
            "unfinished lines; it was not published",
            peer=self.peer, length=length, limit=self.relay.unfinishedBudget.limit,
        )
        self.relay.stats.discarded_bytes += length
        self._closing = True
        self._countUnfinished()
        self.transport.loseConnection()

    def callLater(self, period: float, func: Callable[[], object]) -> IDelayedCall:
        """
        Schedule the idle timeout on the relay's clock.
        """
        return self.relay.clock.callLater(period, func)

    def connectionMade(self) -> None:
        self.peer = describePeer(self.transport.getPeer())
        if ISSLTransport.providedBy(self.transport):
            self._handshaking = True
        else:
            self._join()
        if self.relay.subscribeTo is not None:
            self.transport.registerProducer(self, True)
        _keepAlive(self.transport)
        self.setTimeout(self.relay.idleTimeout)
        self.relay.connectionMade(self)

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done: count as a publisher.
        """
        if self._handshaking and not self._closing:
            self._handshaking = False
            self._join()

    def _join(self) -> None:
        if self.relay.publishTo is not None:
            self.relay.publishTo.stats.publishers += 1
            self._joined = True

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        if self.relay.reads and not self._closing:
            self.framer.dataReceived(data)
            self._countUnfinished()

    def linesReceived(self, data: bytes) -> None:
        """
        The framer's complete lines: the relay publishes them.
        """
        self.relay.linesReceived(data)

    def lineTooLong(self, length: int) -> None:
        """
        Upstream sent a line longer than C{max_line_length}: drop the
        connection (the relay reconnects).
        """
        self.log.warn(
            "Disconnecting {peer}: a line of {length} bytes or more is longer than "
            "max_line_length ({limit}); it was not published",
            peer=self.peer, length=length, limit=self.relay.maxLineLength,
        )
        self.relay.stats.discarded_bytes += length
        self._closing = True
        self.transport.loseConnection()

    def sendLines(self, data: bytes) -> None:
        """
        Write complete lines upstream.
        """
        self.transport.write(data)

    @property
    def closing(self) -> bool:
        """
        Whether the connection is being closed (or is closed).
        """
        return self._closing

    def abort(self) -> None:
        """
        Abort the connection at once (a reset: upstream publishes no half
        line), reading nothing more from it.
        """
        self._closing = True
        self.transport.abortConnection()

    def timeoutConnection(self) -> None:
        self.relay.connectionIdle(self)
        self._closing = True
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.setTimeout(None)
        if (reason.check(ConnectionDone) and not self._closing and self.relay.reads
                and self.relay.trying):
            # Upstream ended cleanly (a FIN, a TLS close): its last line is a
            # line, as a file's last line without a newline is.  (A relay
            # that is stopping closed the connection itself: its half line
            # is upstream's unfinished one.)
            self.framer.finish()
        self._closing = True
        self._handshaking = False
        discarded = len(self.framer.discard())
        if discarded:
            self.relay.stats.discarded_bytes += discarded
        self._countUnfinished()
        if self._joined:
            self._joined = False
            publishTo: Backplane | None = self.relay.publishTo
            if publishTo is not None:
                publishTo.stats.publishers -= 1
        self.relay.connectionLost(self, reason)

    # IPushProducer: upstream not reading pauses us; the relay buffers.

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.relay.sendPending()

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


class RelayClientFactory(Factory):
    """
    A plain factory of L{RelayProtocol}s over a L{Relay}, for whatever does
    the connecting and the retrying (a L{ClientService}): it never retries.
    """

    noisy = False

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def buildProtocol(self, addr: IAddress | None) -> RelayProtocol:
        protocol = RelayProtocol(self.relay)
        protocol.factory = self
        return protocol


class RelayFactory(ReconnectingClientFactory):
    """
    A relay to an upstream line server, reconnecting with backoff: a
    L{ReconnectingClientFactory} over a L{Relay} (its L{relay}).

    Use it as C{reactor.connectTCP(host, port, RelayFactory(service, "DATA"))}
    (this factory then retries by itself, as any L{ReconnectingClientFactory})
    or hand it to a L{RelayService} for any client endpoint (which then
    connects its relay through a plain L{RelayClientFactory} and does the
    retrying; this factory's own retry is switched off).  One connection at a
    time.  See L{Relay} for what is relayed.

    @ivar relay: the L{Relay}.
    """

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
        resume: bool = False,
        acks: bool = False,
        spool: str | None = None,
        spool_bytes: int = DEFAULT_SPOOL_BYTES,
        spool_fsync_interval: float = DEFAULT_SPOOL_FSYNC_INTERVAL,
    ) -> None:
        """
        @param service: the registry the backplanes are looked up in.
        @param publish_to: the backplane lines from upstream are published to.
        @param subscribe_to: the backplane whose lines are sent upstream.
        @param buffer: the most lines of C{subscribe_to} kept while they
            cannot be sent (0: none are kept).
        @param resume: see L{Relay}.
        @param acks: see L{Relay}; close the spool with C{relay.close()}
            when done (L{RelayService} does).
        @param spool: see L{Relay}.
        @param spool_bytes: see L{Relay}.
        @param spool_fsync_interval: see L{Relay}.
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
        @raise StoreError: the spool cannot be opened.
        """
        backoffPolicy(initial_delay, max_delay, jitter=jitter)  # validates them
        self.relay = Relay(service, publish_to, subscribe_to=subscribe_to, buffer=buffer,
                           idle_timeout=idle_timeout, max_line_length=max_line_length,
                           max_delay=max_delay, clock=clock, resume=resume, acks=acks,
                           spool=spool, spool_bytes=spool_bytes,
                           spool_fsync_interval=spool_fsync_interval)
        # ReconnectingClientFactory's knobs.
        self.initialDelay = self.delay = initial_delay
        self.maxDelay = max_delay  # type: ignore[assignment]
        self.factor = DEFAULT_FACTOR
        self.jitter = jitter
        self.clock = self.relay.clock  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<RelayFactory to {self.destination} {self.stats.state}>"

    # The relay's, for those who knew them here.

    @property
    def stats(self) -> RelayStats:
        """
        The relay's L{RelayStats}.
        """
        return self.relay.stats

    @property
    def dropped(self) -> int:
        """
        Lines never sent upstream because the buffer was full.
        """
        return self.relay.stats.dropped

    @property
    def connected(self) -> bool:
        """
        Whether a connection to upstream is up now.
        """
        return self.relay.connected

    @property
    def destination(self) -> str:
        """
        Where upstream is, for log lines.
        """
        return self.relay.destination

    @destination.setter
    def destination(self, destination: str) -> None:
        self.relay.destination = destination

    @property
    def publishTo(self) -> Backplane | None:
        """
        The backplane lines from upstream are published to.
        """
        return self.relay.publishTo

    @property
    def subscribeTo(self) -> Backplane | None:
        """
        The backplane whose lines are sent upstream.
        """
        return self.relay.subscribeTo

    @property
    def bufferSize(self) -> int:
        """
        The most lines of C{subscribe_to} kept while they cannot be sent.
        """
        return self.relay.bufferSize

    @property
    def idleTimeout(self) -> float | None:
        """
        Seconds of silence from upstream after which the connection is
        dropped (L{None}: never).
        """
        return self.relay.idleTimeout

    @property
    def limits(self) -> Limits:
        """
        What upstream may send: its C{max_line_length}.
        """
        return Limits(max_line_length=self.relay.maxLineLength)

    @property
    def reactor(self) -> IReactorTime:
        """
        The clock of timeouts and retries.
        """
        return self.relay.clock

    # ReconnectingClientFactory, for connectTCP and friends.

    def buildProtocol(self, addr: IAddress | None) -> RelayProtocol:
        """
        A protocol for a new connection: the backoff starts over.
        """
        self.resetDelay()
        protocol = RelayProtocol(self.relay)
        protocol.factory = self
        return protocol

    def startedConnecting(self, connector: IConnector) -> None:
        if self.continueTrying:
            self.relay.connecting(describePeer(connector.getDestination()))

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if self.continueTrying:
            self.relay.connectionFailed(reason)
        super().clientConnectionFailed(connector, reason)

    def stopTrying(self) -> None:
        """
        Stop reconnecting.  A connection that is up stays up (close it with
        the connector); once there is none, the relay stops taking lines
        from C{subscribe_to}.
        """
        super().stopTrying()
        self.relay.stop()

    def resetDelay(self) -> None:
        """
        Start the backoff over, and try again if L{stopTrying} was called.
        """
        super().resetDelay()
        self.relay.start()


@implementer(IStreamClientEndpoint)
class _ReportingEndpoint:
    """
    An endpoint that tells a L{Relay} of each attempt and failure.
    """

    def __init__(self, endpoint: IStreamClientEndpoint, relay: Relay) -> None:
        self._endpoint = endpoint
        self._relay = relay

    def __repr__(self) -> str:
        # How ClientService's notes of its retries name the endpoint.
        return self._relay.destination

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self._relay.connecting()
        connecting = self._endpoint.connect(protocolFactory)
        connecting.addErrback(self._failed)
        return connecting

    def _failed(self, reason: Failure) -> Failure:
        self._relay.connectionFailed(reason)
        return reason


@implementer(IStatsSource)
class RelayService(ClientService):
    """
    Keeps the L{Relay} of a L{RelayFactory} connected to upstream through
    any client endpoint, retrying with exponential backoff and jitter.

    This is the one retry mechanism of the connection: the relay is
    connected through a plain L{RelayClientFactory}, and the factory's own
    L{ReconnectingClientFactory} retry is switched off.  The backoff is
    L{backplane.retry.backoffPolicy} with the factory's C{initial_delay},
    C{max_delay} and C{jitter}, and starts over after each connection made.
    Starting while upstream is down is fine: it keeps trying.
    L{stopService} stops trying and closes the connection.

    L{ClientService} itself logs each retry it schedules (C{"Scheduling
    retry ..."}, level info, namespace C{backplane.relay.RelayService});
    the relay logs each change of state once.

    @ivar factory: the L{RelayFactory} given.
    @ivar relay: its L{Relay}.
    """

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
        @param description: upstream's name in log lines until connected
            (the endpoint description, as the config gives it); the
            endpoint's class name if not given.
        @param clock: the reactor for retries; the relay's if not given.
        @param random: the jitter's source of floats in [0, 1).
        """
        relay = factory.relay
        # The factory's own retry must never run beside this service's.
        factory.continueTrying = False
        relay.destination = description or type(endpoint).__name__
        #: The endpoint as configured (C{relay.destination} becomes the
        #: peer's address once connected, for log lines).
        self.description = relay.destination
        self.factory = factory
        self.relay = relay
        self.clock = relay.clock if clock is None else clock
        policy = backoffPolicy(factory.initialDelay, factory.maxDelay, factor=factory.factor,
                               jitter=factory.jitter, random=random)
        super().__init__(_ReportingEndpoint(endpoint, relay), RelayClientFactory(relay),
                         retryPolicy=policy, clock=self.clock)

    def report(self) -> dict[str, object]:
        """
        The relay's statistics (L{IStatsSource}): its state and the counters
        of L{RelayStats}; C{info.endpoint} is the endpoint as configured,
        and C{peer} the address of the upstream connected to now (L{None}
        while not connected).
        """
        relay = self.relay
        counters = asdict(relay.stats)
        state = counters.pop("state")
        gauges: dict[str, int] = {"buffered": counters.pop("buffered")}
        spooled = counters.pop("spooled")
        info: dict[str, object] = {
            "endpoint": self.description,
            "publish_to": None if relay.publishTo is None else relay.publishTo.name,
            "subscribe_to": None if relay.subscribeTo is None else relay.subscribeTo.name,
        }
        outbox = relay.outbox
        if outbox is not None:
            gauges["spooled"] = spooled
            info.update(acks=True, spool=outbox.path, publisher_id=outbox.publisherId)
        gauges["connected"] = int(relay.connected)
        return {
            "name": self.name or "connect",
            "kind": "connect",
            "state": state,
            "counters": counters,
            "gauges": gauges,
            "info": info,
            "peer": relay.protocol.peer if relay.protocol is not None else None,
        }

    def startService(self) -> None:
        """
        Start connecting, and keep the relay connected (opening its spool
        again if it was stopped before).
        """
        if not self.running:
            self.relay.open()
            self.relay.start()
        super().startService()

    def stopService(self) -> Deferred[None]:
        """
        Stop retrying and close the connection, then the relay's spool.

        @return: a L{Deferred} that fires once the connection is closed (it
            is aborted if upstream does not let it close in L{stopTimeout})
            and the spool too.
        """
        self.relay.stop()
        protocol = self.relay.protocol
        stopped = super().stopService()
        if protocol is not None and not stopped.called:
            abort = self.clock.callLater(self.stopTimeout, protocol.transport.abortConnection)

            def closed(result: None) -> None:
                if abort.active():
                    abort.cancel()
                return result

            stopped.addBoth(closed)
        relay = self.relay
        if relay.outbox is not None:
            stopped.addCallback(lambda _: relay.close())
        return stopped
