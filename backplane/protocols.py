"""
The line protocols: a client's lines go onto a backplane (L{PublishTo}), a
backplane's lines go to a client (L{SubscribeTo}), or both at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHalfCloseableProtocol,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from backplane._types import defaultReactor
from backplane.address import Network, describePeer, isAllowed, peerCommonName
from backplane.auth.authority import Authority
from backplane.auth.gate import Gate
from backplane.auth.identity import AccessDenied, Identity
from backplane.auth.lines import LineAdmission
from backplane.budget import UnfinishedBudget
from backplane.framing import DEFAULT_MAX_LINE_LENGTH as DEFAULT_MAX_LINE_LENGTH
from backplane.framing import LineFramer
from backplane.framing import firstOverlong as firstOverlong
from backplane.interfaces import ILineSink
from backplane.output import LINGER_READ_BYTES, BoundedWriter, Linger, LingerGroup, sendAtOnce
from backplane.prefix import Prefix, hostPort, makePrefix
from backplane.service import Backplane, BackplaneService, Subscription

SlowPolicy = Literal["disconnect", "drop"]
Framing = Literal["lines", "syslog"]

DEFAULT_MAX_PENDING = 1024 * 1024
#: Seconds a new connection has to finish its handshake (TLS, WebSocket
#: opening handshake, an HTTP request's head) before it is closed.
DEFAULT_HANDSHAKE_TIMEOUT = 5.0

#: The methods whose request line (C{GET / HTTP/1.1}) as the first line of
#: a connection marks an HTTP client, answered 400 and never published.
HTTP_METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS",
                b"TRACE", b"PATCH")
_REQUEST_LINE = re.compile(rb"(?:%s) [!-~]+ HTTP/[0-9]\.[0-9]\r?" % b"|".join(HTTP_METHODS))
_REQUEST_STARTS = tuple(method + b" " for method in HTTP_METHODS)
#: The longest first line held back to tell an HTTP request line from a line.
MAX_REQUEST_LINE = 2048


def looksLikeHTTP(head: bytes) -> bool | None:
    """
    Whether the first bytes of a connection are an HTTP request line.

    @param head: what the client sent first, at least one byte.
    @return: C{True} for a complete request line (C{METHOD TARGET
        HTTP/x.y} and a newline), C{False} for anything that cannot be one,
        L{None} while it may still become one (no newline yet).
    """
    end = head.find(b"\n")
    if end >= 0:
        return _REQUEST_LINE.fullmatch(head, 0, end) is not None
    if len(head) > MAX_REQUEST_LINE:
        return False
    if any(head.startswith(start) or start.startswith(head) for start in _REQUEST_STARTS):
        return None
    return False


def httpRefusal(description: str, client: str = "nc HOST PORT") -> bytes:
    """
    The short C{400 Bad Request} an HTTP client of a line port gets.

    @param description: what the port is, e.g. C{"a backplane line port"}.
    @param client: a command that speaks the port's protocol.
    """
    body = (f"This is {description}, not an HTTP server: use {client}, "
            f"not HTTP.\n").encode("ascii", "replace")
    return (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))


@dataclass(frozen=True)
class Limits:
    """
    What one client of a port may do.

    @ivar max_line_length: the longest line a client may publish, in bytes
        without the delimiter; a longer one disconnects the client and is
        never published.
    @ivar max_pending: bytes that may wait for a subscriber (beyond what its
        transport buffers anyway) before C{slow} applies.
    @ivar slow: C{"disconnect"} a subscriber past C{max_pending}, or
        C{"drop"} messages for it until it catches up.
    @ivar max_clients: connections a port accepts at once (L{None}: no limit).
    @ivar allow: the networks clients may connect from (L{None}: any); see
        L{isAllowed}.
    @ivar handshake_timeout: seconds a connection has to finish its
        handshake (TLS; a WebSocket opening handshake; an HTTP request)
        before it is closed.  Until it has, it does not count against
        C{max_clients}.
    @ivar max_handshakes: connections a port keeps in their handshake at
        once (L{None}: as many as C{max_clients}, unbounded without it); a
        new connection past it closes the oldest unfinished one.
    @ivar idle_timeout: seconds a publisher may hold an unfinished line
        without sending anything before it is closed and the half line
        discarded (0: never).
    @ivar prefix: what is put before each line a client publishes: its
        receive time and/or its sender's address (L{backplane.prefix}), in
        the order of L{PREFIX_FIELDS<backplane.prefix.PREFIX_FIELDS>}.
    @ivar framing: how what clients send is split into messages: C{"lines"}
        (L{LineFramer}), or C{"syslog"} (L{SyslogFramer<backplane.syslog.SyslogFramer>}:
        RFC 6587 octet counting and newline-terminated frames).
    @ivar linger: seconds a subscriber's chunks may be held back to be
        written together (0: each is written at once); see L{Linger}.
    """

    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    max_pending: int = DEFAULT_MAX_PENDING
    slow: SlowPolicy = "disconnect"
    max_clients: int | None = None
    allow: tuple[Network, ...] | None = None
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    max_handshakes: int | None = None
    idle_timeout: float = 0.0
    framing: Framing = "lines"
    prefix: tuple[str, ...] = ()
    linger: float = 0.0

    @property
    def handshakeLimit(self) -> int | None:
        """
        The unfinished handshakes a port keeps at once: C{max_handshakes},
        or by default C{max_clients}.
        """
        return self.max_handshakes if self.max_handshakes is not None else self.max_clients

    def __post_init__(self) -> None:
        if self.max_line_length < 1:
            raise ValueError("max_line_length must be at least 1")
        if self.max_pending < 0:
            raise ValueError("max_pending must be 0 or more")
        if self.slow not in ("disconnect", "drop"):
            raise ValueError(f"slow must be 'disconnect' or 'drop', not {self.slow!r}")
        if self.max_clients is not None and self.max_clients < 0:
            raise ValueError("max_clients must be 0 or more")
        if not self.handshake_timeout > 0:
            raise ValueError("handshake_timeout must be more than 0")
        if self.max_handshakes is not None and self.max_handshakes < 1:
            raise ValueError("max_handshakes must be 1 or more")
        if self.idle_timeout < 0:
            raise ValueError("idle_timeout must be 0 or more")
        if self.framing not in ("lines", "syslog"):
            raise ValueError(f"framing must be 'lines' or 'syslog', not {self.framing!r}")
        if not set(self.prefix) <= {"time", "address"}:
            raise ValueError(f"prefix holds 'time' and 'address' only, not {self.prefix!r}")
        if not self.linger >= 0:
            raise ValueError("linger must be 0 or more")


@dataclass
class PortStats:
    """
    Counters of one port (one L{BackplaneFactory}), for monitoring.  They
    only ever grow.

    @ivar accepted: connections given a protocol.
    @ivar refused: connections closed at once because C{max_clients} were
        connected.
    @ivar disallowed: connections closed at once because their address is
        not in C{allow}.
    @ivar tls_failures: TLS connections that closed before their handshake
        completed (a client without a valid certificate on a port that
        requires one, a client that does not speak TLS, ...).
    @ivar overlong: clients disconnected for a line longer than
        C{max_line_length}.
    @ivar slow_disconnects: subscribers disconnected past C{max_pending}.
    @ivar dropped: messages subscribers missed past C{max_pending} with
        C{slow = "drop"}.
    @ivar messages_in: lines the port's clients published.
    @ivar bytes_in: bytes of those lines, delimiters included.
    @ivar resumes: subscribers that resumed from the history (C{ids = true}).
    @ivar gaps: subscribers told that messages they asked for are missing.
    @ivar bad_requests: clients refused for a malformed request (C{ERR}).
    @ivar acknowledged: lines acknowledged to publishers (C{acks = true}).
    @ivar deduplicated: lines publishers resent that were already published,
        skipped.
    @ivar store_failures: connections closed because the store did not keep
        their lines, so they could not be acknowledged.
    @ivar handshake_timeouts: connections closed because their handshake
        (TLS, WebSocket, an HTTP request's head) did not finish within
        C{handshake_timeout} (a TLS one is also in C{tls_failures}).
    @ivar handshakes_evicted: connections closed in their handshake to make
        room for a new one, C{max_handshakes} being in theirs.
    @ivar bad_heads: WebSocket and HTTP requests refused for their head
        (too big, too many headers, malformed): 431 or 400.
    @ivar idle_timeouts: publishers closed for holding an unfinished line
        for C{idle_timeout} without sending anything.
    @ivar idle_discarded: bytes of those unfinished lines, discarded.
    @ivar discarded_bytes: bytes of half lines never published: those of a
        connection reset or aborted, closed by the server, or cut for a line
        longer than C{max_line_length} or for holding the longest unfinished
        line past C{max_unfinished_total} (a half line before a clean end of
        input, a FIN, is published).  On WebSocket and Redis ports: the
        unfinished messages (their payload so far) and requests of clients
        whose connection ends, or is cut for C{max_unfinished_total}, before
        they finish them; not a message or request refused, nor what a
        WebSocket client that only subscribes sends (it publishes nothing).
    @ivar http_requests: clients that sent an HTTP request line first,
        answered C{400 Bad Request} and disconnected.
    """

    accepted: int = 0
    refused: int = 0
    disallowed: int = 0
    tls_failures: int = 0
    overlong: int = 0
    slow_disconnects: int = 0
    dropped: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    resumes: int = 0
    gaps: int = 0
    bad_requests: int = 0
    acknowledged: int = 0
    deduplicated: int = 0
    store_failures: int = 0
    handshake_timeouts: int = 0
    handshakes_evicted: int = 0
    bad_heads: int = 0
    idle_timeouts: int = 0
    idle_discarded: int = 0
    discarded_bytes: int = 0
    http_requests: int = 0


def makeFramer(receiver: Any, limits: Limits) -> LineFramer:
    """
    The framer of a client of a port with C{limits}: a L{LineFramer}, or a
    L{SyslogFramer<backplane.syslog.SyslogFramer>} (the same interface) for
    C{framing = "syslog"}.
    """
    if limits.framing == "syslog":
        from backplane.syslog import SyslogFramer

        return SyslogFramer(receiver, limits.max_line_length)
    return LineFramer(receiver, limits.max_line_length)


@implementer(ILineSink, IHandshakeListener, IPushProducer, IHalfCloseableProtocol)
class BackplaneProtocol(Protocol):
    """
    A line client of a backplane port: it may publish, subscribe, or both.

    Lines are delimited by C{b"\\n"}; one trailing C{b"\\r"} is stripped; any
    other byte passes through unchanged, and an empty line is a message.  The
    complete lines of each chunk read are published together, and a
    subscriber receives each published chunk in one write.

    A client that publishes to and subscribes to one backplane does not get
    its own lines back.  Data from a client that does not publish is read and
    discarded.  Over TLS, a client joins its backplanes (and is counted as a
    publisher, or handed messages) only once the TLS handshake has completed,
    so a client that never completes it (one without the client certificate
    a port requires) neither publishes nor holds messages.

    On a port with C{auth = true} (its L{gate} has an authority), the
    client's first line must be C{AUTH TOKEN} (a L{LineAdmission} reads it),
    unless its TLS certificate names a user: it joins its backplanes only
    once admitted, and a refused client gets one line C{ERR reason} and is
    disconnected, having published and received nothing.

    The end of what a client sends: after a clean end of input (a FIN, or a
    TLS close), its last line is published even without a newline, and a
    client that subscribes keeps receiving (it half-closed, as C{nc -N}
    does); a client that only publishes is disconnected.  A connection
    that is reset or aborted, or that the server closes, publishes no half
    line; its bytes are counted (C{discarded_bytes}).  A client whose first
    line is an HTTP request line gets a C{400 Bad Request} and is
    disconnected; nothing it sent is published.

    Two objects do the work: L{framer} (a L{LineFramer}) splits what the
    client sends into lines, and, once it subscribes, L{output} (a
    L{BoundedWriter}) writes to it within C{max_pending}.  The protocol is
    its transport's streaming producer and passes the transport's
    L{pauseProducing} and L{resumeProducing} on to L{output}.

    @ivar framer: the client's L{LineFramer}.
    @ivar output: the client's L{BoundedWriter}, once it subscribes
        (L{None} before, and for a client that only publishes).
    @ivar gate: the access checks of the port (its factory sets it), or
        L{None}: none.
    @ivar admission: what reads the client's C{AUTH} line, until it is
        admitted or refused.
    @ivar identity: who the client proved to be, once admitted on a port
        with C{auth}.
    @ivar inputEnded: whether the client's input has ended cleanly (it
        closed or half-closed its sending side).
    @ivar prefix: what puts the port's C{prefix} before each line the
        client publishes, or L{None}.
    @ivar linger: the port's write coalescer (its factory sets it), or
        L{None}: every chunk is written at once.
    @ivar unfinishedBudget: the service's bound on the unfinished lines of
        all clients together (its port sets it), on which this client
        counts its half line after each read (L{unfinished}); L{None}: not
        counted.
    """

    log = Logger()
    # Once connected: an ITransport that is also an IConsumer and can
    # abortConnection (TCP, TLS, UNIX and StringTransport all are).
    transport: Any
    gate: Gate | None = None
    linger: Linger | None = None
    unfinishedBudget: UnfinishedBudget | None = None

    def __init__(
        self,
        publish_to: Backplane | None = None,
        subscribe_to: Backplane | None = None,
        limits: Limits = Limits(),
    ) -> None:
        self.publishTo = publish_to
        self.subscribeTo = subscribe_to
        self.limits = limits
        self.peer = "?"
        # The counters of the port this client came through (its factory's
        # when it has one).
        self.portStats = PortStats()
        self.framer = makeFramer(self, limits)
        self.output: BoundedWriter | None = None
        self._subscription: Subscription | None = None
        self._group: LingerGroup | None = None
        self._closing = False
        self.inputEnded = False
        # The first bytes, held until they cannot be an HTTP request line.
        self._head: bytes | None = b""
        self._joined = False
        self._handshaking = False
        self._producing = False
        self.admission: LineAdmission | None = None
        self.identity: Identity | None = None
        self._idle: IDelayedCall | None = None
        self.prefix: Prefix | None = None
        self._unfinished = 0

    @property
    def unfinished(self) -> int:
        """
        The bytes of an unfinished line the client holds on the service's
        L{unfinishedBudget} (its half line, and the first bytes held back
        to tell an HTTP request), as of its last read.
        """
        return self._unfinished

    @property
    def dropped(self) -> int:
        """
        Messages this client missed as a slow subscriber (C{slow = "drop"}).
        """
        return 0 if self.output is None else self.output.dropped

    def connectionMade(self) -> None:
        address = self.transport.getPeer()
        self.peer = describePeer(address)
        tls = ISSLTransport.providedBy(self.transport)
        if not tls and not self._handshakeDone():
            return
        if self.limits.prefix:
            clock = self.gate.clock if self.gate is not None else None
            host, port = getattr(address, "host", None), getattr(address, "port", None)
            shown = "-" if host is None or port is None else hostPort(host, port)
            self.prefix = makePrefix(self.limits.prefix, clock or defaultReactor(), shown)
        gate = self.gate
        if gate is not None and gate.auth:
            self.admission = LineAdmission(self, self.framer, gate, peer=self.peer)
            self.admission.start()
        if tls:
            self._handshaking = True
        elif self.admission is None:
            self._join()

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done (and the client's certificate, if the port
        asks for one, verified): join the backplanes, or, on a port with
        C{auth}, let a certificate that names a user admit the client.
        """
        if self._handshaking and not self._closing:
            self._handshaking = False
            if not self._handshakeDone():
                return
            if self.admission is not None:
                self.admission.certificate(peerCommonName(self.transport))
            else:
                self._join()

    def _handshakeDone(self) -> bool:
        """
        Tell the port the handshake is done, so that the client counts
        against C{max_clients}; if the port is full, abort the connection.

        @return: whether the client may stay.
        """
        factory = self.factory
        if not isinstance(factory, BackplaneFactory) or factory.handshakeDone(self):
            return True
        self._closing = True
        self.framer.discard()
        self.transport.abortConnection()
        return False

    def admitted(self, identity: Identity | None, rest: bytes) -> None:
        """
        The client's token (or certificate) is accepted for the port's
        backplanes: join them, and read what it sent after C{AUTH} as its
        first lines.
        """
        self.admission = None
        self.identity = identity
        if self._closing:
            return
        self._join()
        if rest and not self._closing:
            self.linesReceived(rest)

    def accessRefused(self, denied: AccessDenied) -> None:
        """
        The client is refused (counted and logged by the port's gate): one
        line C{ERR reason}, and the connection is closed.
        """
        self.admission = None
        if self._closing:
            return
        self.transport.write(b"ERR " + denied.reason.encode("ascii", "backslashreplace") + b"\n")
        self.close()

    def _join(self) -> None:
        self._joined = True
        if self.publishTo is not None:
            self.publishTo.stats.publishers += 1
        backplane = self.subscribeTo
        if backplane is not None:
            sendAtOnce(self.transport)
            # Under linger, a plain subscriber's chunks are held back once
            # for all such subscribers of the port (its LingerGroup), not by
            # its own writer.
            self._group = self._lingerGroup(backplane)
            self.output = BoundedWriter(self, self.transport, self.limits, name=backplane.name,
                                        counters=(self.portStats, backplane.stats),
                                        budget=backplane.budget,
                                        linger=self.linger if self._group is None else None)
            self.transport.registerProducer(self, True)
            self._producing = True
            self.subscribe(backplane)

    def subscribe(self, backplane: Backplane) -> None:
        """
        Start handing the client the messages of C{backplane}, its
        C{subscribe_to}, once it has joined and its writer is ready.
        Subclasses override it to subscribe another way (with ids, say).
        """
        if self._group is not None and self.output is not None:
            self._group.join(self.output)
            return
        sink: ILineSink = self
        if self.output is not None and type(self).deliver is BackplaneProtocol.deliver:
            # The backplane hands each chunk to the writer itself: one call
            # a subscriber fewer on every publish (the writer is the client's
            # until it disconnects, when the subscription is cancelled).
            sink = self.output
        self._subscription = backplane.attach(sink, origin=self)

    def close(self) -> None:
        """
        Close the connection once what is pending for the client is sent;
        nothing more is handed to it or published from it.
        """
        self._closing = True
        self._discard()
        self._unsubscribe(handOver=True)
        if self.output is not None:
            self.output.flush()
        if self._producing:
            # A transport closes only once its producer is gone (a paused
            # one would hold it open for ever).
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._idle is not None:
            if self._idle.active():
                self._idle.cancel()
            self._idle = None
        if self.admission is not None:
            self.admission.cancel()
            self.admission = None
        if self._handshaking:
            self._handshaking = False
            self.portStats.tls_failures += 1
        elif (reason is not None and reason.check(ConnectionDone) and not self._closing
              and not self.inputEnded):
            # A clean end that was no half-close (a TLS close_notify): the
            # client's last line is a line.
            self.inputEnded = True
            self.endOfInput()
        self._closing = True
        self._discard()
        if self.output is not None:
            self.output.discard()
        self._unsubscribe()
        if self.publishTo is not None:
            if self._joined:
                self.publishTo.stats.publishers -= 1
            self.publishTo = None
        self._joined = False
        if isinstance(self.factory, BackplaneFactory):
            self.factory.clientGone(self)

    def _lingerGroup(self, backplane: Backplane) -> LingerGroup | None:
        """
        The port's L{LingerGroup} of C{backplane}, if this client is to
        be one of it: on a port with C{linger}, a client that gets the
        backplane's plain lines (no ids: L{subscribe} is not overridden)
        and does not publish to it (it must not get its own lines back).
        """
        factory = self.factory
        if (self.linger is None or self.publishTo is backplane
                or type(self).subscribe is not BackplaneProtocol.subscribe
                or type(self).deliver is not BackplaneProtocol.deliver
                or not isinstance(factory, BackplaneFactory)):
            return None
        return factory.lingerGroup(backplane)

    def _unsubscribe(self, handOver: bool = False) -> None:
        """
        Take the client off its backplane.

        @param handOver: have its writer take what its L{LingerGroup} kept
            for it (it is being closed, and writes what it has first).
        """
        group, self._group = self._group, None
        if group is not None and self.output is not None:
            group.leave(self.output, handOver=handOver)
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    def _discard(self) -> None:
        """
        Forget the half line the client sent (and the first bytes held
        back), counting them in C{discarded_bytes}.
        """
        discarded = len(self.framer.discard())
        if self._head:
            discarded += len(self._head)
        self._head = None
        if discarded:
            self.portStats.discarded_bytes += discarded
        self._countUnfinished()

    def _countUnfinished(self) -> None:
        """
        Count what the client holds of an unfinished line now on the
        service's bound, if it changed: once a read, never a line at a time.
        """
        budget = self.unfinishedBudget
        if budget is None:
            return
        held = len(self.framer.buffered)
        head = self._head
        if head:
            held += len(head)
        before = self._unfinished
        if held != before:
            self._unfinished = held
            budget.update(self, before, held)

    def overUnfinished(self) -> None:
        """
        All clients together hold more than C{max_unfinished_total} of
        unfinished lines, and this one holds the most: log it, and close
        the connection, its half line discarded (never published, counted
        in C{discarded_bytes}) and released from the bound.
        """
        budget = self.unfinishedBudget
        self.log.warn(
            "Disconnecting {peer}: its unfinished line of {length} bytes is the longest, and "
            "all clients together hold more than max_unfinished_total ({limit} bytes) of "
            "unfinished lines; it was not published",
            peer=self.peer, length=self._unfinished,
            limit=None if budget is None else budget.limit,
        )
        self.close()

    @property
    def _receiving(self) -> bool:
        """
        Whether the client receives a backplane's messages now.
        """
        return self._joined and self.output is not None and not self._closing

    # The end of input (IHalfCloseableProtocol).

    def readConnectionLost(self) -> None:
        """
        The client sends nothing more (a FIN: it closed, or half-closed):
        publish its last line (L{endOfInput}); a client that subscribes
        keeps receiving, any other is disconnected.  A client still being
        admitted (C{AUTH}) is admitted or refused by what it sent.
        """
        if self._closing or self.inputEnded:
            return
        self.inputEnded = True
        self.endOfInput()
        if not self._closing and not self._receiving:
            self.close()
        else:
            self._countUnfinished()

    def writeConnectionLost(self) -> None:
        """
        The connection's sending side is shut down: nothing more can reach
        the client, so close it.
        """
        if not self._closing:
            self.close()

    def endOfInput(self) -> None:
        """
        The client's input ended cleanly: what it sent last is read, its
        last half line as a whole line.  Subclasses override it to end
        their reading otherwise.
        """
        head, self._head = self._head, None
        if head:
            self._read(head)
        if not self._closing:
            discarded = self.framer.finish()
            if discarded:
                self.portStats.discarded_bytes += discarded

    # Publishing: lines in, through the framer (a LinesReceiver).

    def dataReceived(self, data: bytes) -> None:
        if self._closing or not data:
            return
        head = self._head
        if head is not None:
            # Until the first line cannot be an HTTP request line, it waits.
            data = head + data
            request = looksLikeHTTP(data)
            if request is None and len(data) <= self.framer.maxLineLength:
                self._head = data
                self._countUnfinished()
                return
            self._head = None
            if request:
                self.refuseHTTP()
                return
        self._read(data)
        linger = self.linger
        if (linger is not None and self.publishTo is not None and not self._closing
                and len(data) < LINGER_READ_BYTES):
            linger.holdReading(self.transport)

    def _read(self, data: bytes) -> None:
        if self.admission is not None:
            self.admission.dataReceived(data)
        else:
            self.readData(data)
        if self.limits.idle_timeout:
            self._watchIdle()
        self._countUnfinished()

    def _watchIdle(self) -> None:
        """
        (Re)start the C{idle_timeout} while the client holds an unfinished
        line; forget it once it holds none.
        """
        timer = self._idle
        if self._closing or not self.framer.buffered:
            if timer is not None:
                if timer.active():
                    timer.cancel()
                self._idle = None
        elif timer is not None and timer.active():
            timer.reset(self.limits.idle_timeout)
        else:
            clock = getattr(self.factory, "clock", None) or defaultReactor()
            self._idle = clock.callLater(self.limits.idle_timeout, self._idleTimedOut)

    def _idleTimedOut(self) -> None:
        """
        The client held an unfinished line for C{idle_timeout} without
        sending anything: discard it (never published), count it, close.
        """
        self._idle = None
        if self._closing:
            return
        length = len(self.framer.discard())
        self.portStats.idle_timeouts += 1
        self.portStats.idle_discarded += length
        self.log.warn(
            "Disconnecting {peer}: it sent nothing for idle_timeout ({timeout} s) with an "
            "unfinished line of {length} bytes, which was not published",
            peer=self.peer, timeout=self.limits.idle_timeout, length=length,
        )
        self.close()

    def refuseHTTP(self) -> None:
        """
        The client's first line is an HTTP request line: answer C{400 Bad
        Request} (naming what the port is) and disconnect it, having
        published nothing it sent.
        """
        self.log.info("Refusing {peer}: it sent an HTTP request to a line port",
                      peer=self.peer)
        self.portStats.http_requests += 1
        self._unsubscribe()
        if self.output is not None:
            # Nothing more of the backplane for it: the answer is last.
            self.output.discard()
        if self.limits.framing == "syslog":
            client = "logger --tcp --octet-count -n HOST -P PORT"
        else:
            client = "nc HOST PORT"
        self.transport.write(httpRefusal(self.describePort(), client))
        self.close()

    def describePort(self) -> str:
        """
        What this port is, in words, for an HTTP client that came to it (it
        names no backplane: the client has not been admitted).
        """
        if self.limits.framing == "syslog":
            return "a backplane syslog port (RFC 6587 frames over TCP)"
        return "a backplane line port (one message a line, over TCP)"

    def readData(self, data: bytes) -> None:
        """
        Read what an admitted client sent: frame it, if it publishes (what
        a client that does not publish sends is discarded).  Subclasses
        override it to read otherwise.
        """
        if self.publishTo is not None:
            self.framer.dataReceived(data)

    def linesReceived(self, data: bytes) -> None:
        """
        The framer's complete lines: publish them (L{publishLines}).
        """
        backplane = self.publishTo
        if backplane is not None:
            self.publishLines(backplane, data)

    def publishLines(self, backplane: Backplane, data: bytes) -> None:
        """
        Publish a chunk of complete lines read from the client.

        Framing, C{\\r} stripping and C{max_line_length} are done by the time
        this is called: C{data} is one or more messages, each ending with
        C{b"\\n"}.  Subclasses override it to publish with another origin or
        to count what they read.
        """
        if self.prefix is not None:
            data = self.prefix(data)
        count = data.count(b"\n")
        stats = self.portStats
        stats.messages_in += count
        stats.bytes_in += len(data)
        backplane.publishLines(data, count, origin=self)

    def lineTooLong(self, length: int) -> None:
        """
        The client sent a line longer than C{max_line_length}: log it, count
        it, and close the connection (after what is pending for it).
        """
        self.log.warn(
            "Disconnecting {peer}: a line of {length} bytes or more is longer than "
            "max_line_length ({limit}); it was not published",
            peer=self.peer, length=length, limit=self.limits.max_line_length,
        )
        self.portStats.overlong += 1
        self.portStats.discarded_bytes += length
        self.close()

    # Subscribing: lines out (ILineSink), through the writer (its OutputOwner).

    def deliver(self, data: bytes, count: int) -> None:
        """
        Write a chunk of lines to the client, or keep it while the
        transport's buffer is full, within C{max_pending}.
        """
        output = self.output
        if output is not None:
            output.deliver(data, count)

    def outputTooSlow(self) -> None:
        """
        Past C{max_pending} with C{slow = "disconnect"}: hand the client
        nothing more (its writer aborts the connection).
        """
        self._closing = True
        self._unsubscribe()

    def outputCaughtUp(self, missed: int) -> None:
        """
        The client caught up after missing messages: nothing to do (its
        writer logged it).
        """

    # IPushProducer, for the transport: passed on to the writer.

    def pauseProducing(self) -> None:
        if self.output is not None:
            self.output.pauseProducing()

    def resumeProducing(self) -> None:
        if self.output is not None:
            self.output.resumeProducing()

    def stopProducing(self) -> None:
        pass


class PublishTo(BackplaneProtocol):
    """
    A client whose lines are published to a backplane.
    """

    def __init__(self, backplane: Backplane, *, subscribe_to: Backplane | None = None,
                 limits: Limits = Limits()) -> None:
        super().__init__(publish_to=backplane, subscribe_to=subscribe_to, limits=limits)


class SubscribeTo(BackplaneProtocol):
    """
    A client that receives every line of a backplane.
    """

    def __init__(self, backplane: Backplane, *, publish_to: Backplane | None = None,
                 limits: Limits = Limits()) -> None:
        super().__init__(publish_to=publish_to, subscribe_to=backplane, limits=limits)


class BackplaneFactory(Factory):
    """
    A server factory for clients that publish to and/or subscribe to
    backplanes, enforcing L{Limits} (C{allow} and C{max_clients} here, the
    rest in each protocol) and counting what its clients do in L{stats}, a
    L{PortStats}, and checking access with its L{gate}.

    @ivar gate: the port's access checks (L{Gate}): the C{AUTH} line on a
        port with an authority, C{Origin} on web ports.
    @ivar linger: the port's write coalescer, shared by its subscribers
        (C{limits.linger}), or L{None}.
    """

    log = Logger()
    protocol: type[Protocol] = BackplaneProtocol
    noisy = False
    #: The protocols its clients speak, for an C{ssl:} port's ALPN
    #: (L{backplane.tls.negotiateProtocols}): none on a line port.
    alpn: tuple[bytes, ...] = ()
    #: Whether a port must name its backplane (C{publish_to} or
    #: C{subscribe_to}); a port whose clients choose theirs says L{False}.
    needsBackplane = True

    def __init__(self, service: BackplaneService, *, publish_to: str | None = None,
                 subscribe_to: str | None = None, limits: Limits = Limits(),
                 authority: Authority | None = None,
                 clock: IReactorTime | None = None) -> None:
        """
        @param service: the registry the backplanes are looked up in.
        @param authority: with C{auth = true}, what decides who a client is
            and what it may do (one per port: its counters are the port's).
        @param clock: the time (the reactor by default), for the time a
            client has to send C{AUTH}.
        @raise UnknownBackplane: a named backplane is not registered.
        @raise ValueError: neither C{publish_to} nor C{subscribe_to} is given.
        """
        if publish_to is None and subscribe_to is None and self.needsBackplane:
            raise ValueError("a port needs publish_to, subscribe_to, or both")
        self.publishTo = None if publish_to is None else service.get(publish_to)
        self.subscribeTo = None if subscribe_to is None else service.get(subscribe_to)
        self.limits = limits
        self.service = service
        self.gate = Gate(authority, publish=publish_to, subscribe=subscribe_to, clock=clock)
        self.clock = clock
        self.linger = Linger(limits.linger, clock) if limits.linger > 0 else None
        # Under linger: the plain subscribers of each backplane, as one sink.
        self._lingerGroups: dict[Backplane, LingerGroup] = {}
        self.protocols: set[Protocol] = set()
        self.stats = PortStats()
        self._emptied: list[Deferred[None]] = []
        # Clients whose handshake is done (they count against max_clients),
        # and those still in theirs, oldest first, with their timeouts.
        self._established: set[Protocol] = set()
        self._handshaking: dict[Protocol, IDelayedCall] = {}

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """
        A protocol for a new client, or L{None} (which closes the connection
        at once) for a client not in C{allow} or past C{max_clients}.

        The new client is in its handshake (L{handshakeDone} ends it) and
        does not count against C{max_clients} until it is done; past
        C{handshake_timeout} it is closed.  With L{Limits.handshakeLimit}
        clients in their handshake already, the oldest of them is closed to
        make room: a client that completes its handshake promptly gets in
        however many connections are held open unfinished.
        """
        if not isAllowed(addr, self.limits.allow):
            self.stats.disallowed += 1
            self.log.warn("Refusing {peer}: its address is not in allow",
                          peer=describePeer(addr) if addr else "?")
            return None
        maxClients = self.limits.max_clients
        if maxClients is not None and len(self._established) >= maxClients:
            self.stats.refused += 1
            self.log.warn(
                "Refusing {peer}: max_clients ({limit}) reached",
                peer=describePeer(addr) if addr else "?", limit=maxClients,
            )
            return None
        protocol = self.makeProtocol()
        protocol.factory = self
        if isinstance(protocol, BackplaneProtocol):
            protocol.gate = self.gate
            protocol.linger = self.linger
            protocol.unfinishedBudget = self.service.unfinished
        # Its clients (BackplaneProtocol, WebSocketClient) count in this
        # port's stats: an attribute they have, and Protocol has not.
        counted: Any = protocol
        counted.portStats = self.stats
        handshakes = self.limits.handshakeLimit
        if handshakes is not None and len(self._handshaking) >= handshakes:
            self._evictOldestHandshake()
        clock: Any = self.clock if self.clock is not None else defaultReactor()
        self._handshaking[protocol] = clock.callLater(
            self.limits.handshake_timeout, self._handshakeTimedOut, protocol)
        self.protocols.add(protocol)
        self.stats.accepted += 1
        return protocol

    def handshakeDone(self, protocol: Protocol) -> bool:
        """
        C{protocol}'s handshake is done (TLS, a WebSocket opening handshake,
        a first HTTP request; at once on a plain connection): from now on it
        counts against C{max_clients}.

        @return: whether it may stay: C{False} if C{max_clients} clients
            are there already (counted as refused; the caller closes the
            connection), or if it was closed for its handshake's timeout.
            (C{True} for a protocol this port did not build.)
        """
        timer = self._handshaking.pop(protocol, None)
        if timer is None:
            return protocol in self._established or protocol not in self.protocols
        if timer.active():
            timer.cancel()
        maxClients = self.limits.max_clients
        if maxClients is not None and len(self._established) >= maxClients:
            self.stats.refused += 1
            self.log.warn("Refusing {peer}: max_clients ({limit}) reached",
                          peer=self._peer(protocol), limit=maxClients)
            return False
        self._established.add(protocol)
        return True

    def _handshakeTimedOut(self, protocol: Protocol) -> None:
        if self._handshaking.pop(protocol, None) is None:
            return
        self.stats.handshake_timeouts += 1
        self.log.warn("Closing {peer}: its handshake did not finish within "
                      "handshake_timeout ({timeout} s)",
                      peer=self._peer(protocol), timeout=self.limits.handshake_timeout)
        self._abort(protocol)

    def _evictOldestHandshake(self) -> None:
        protocol, timer = next(iter(self._handshaking.items()))
        del self._handshaking[protocol]
        if timer.active():
            timer.cancel()
        self.stats.handshakes_evicted += 1
        self.log.warn("Closing {peer}: still in its handshake, with max_handshakes ({limit}) "
                      "connections in theirs", peer=self._peer(protocol),
                      limit=self.limits.handshakeLimit)
        self._abort(protocol)

    @staticmethod
    def _peer(protocol: Protocol) -> str:
        transport: Any = protocol.transport
        return "?" if transport is None else describePeer(transport.getPeer())

    @staticmethod
    def _abort(protocol: Protocol) -> None:
        transport: Any = protocol.transport
        if transport is not None:
            transport.abortConnection()

    @property
    def clients(self) -> int:
        """
        The number of clients connected now, their handshake done.
        """
        return len(self._established)

    @property
    def handshakes(self) -> int:
        """
        The number of connections in their handshake now.
        """
        return len(self._handshaking)

    @property
    def refused(self) -> int:
        """
        Connections refused because C{max_clients} were connected
        (C{stats.refused}).
        """
        return self.stats.refused

    def makeProtocol(self) -> Protocol:
        """
        A new protocol for one client.
        """
        return BackplaneProtocol(self.publishTo, self.subscribeTo, self.limits)

    def lingerGroup(self, backplane: Backplane) -> LingerGroup:
        """
        The L{LingerGroup} of this port's plain subscribers of
        C{backplane} (on a port with C{linger}).
        """
        assert self.linger is not None
        group = self._lingerGroups.get(backplane)
        if group is None:
            group = self._lingerGroups[backplane] = LingerGroup(backplane, self.linger)
        return group

    def clientGone(self, protocol: Protocol) -> None:
        """
        A client built by this factory has disconnected.
        """
        self.protocols.discard(protocol)
        self._established.discard(protocol)
        timer = self._handshaking.pop(protocol, None)
        if timer is not None and timer.active():
            timer.cancel()
        if not self.protocols:
            emptied, self._emptied = self._emptied, []
            for d in emptied:
                d.callback(None)

    def disconnectAll(self) -> Deferred[None]:
        """
        Close every client's connection, after sending what is pending.

        @return: a L{Deferred} that fires once every client is gone.
        """
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._emptied.append(d)
        for protocol in list(self.protocols):
            self.closeClient(protocol)
        return d

    def closeClient(self, protocol: Protocol) -> None:
        """
        Close one client's connection after sending what is pending for it.
        """
        assert isinstance(protocol, BackplaneProtocol)
        protocol.close()

    def abortAll(self) -> None:
        """
        Drop every client's connection at once, pending output and all.
        """
        for protocol in list(self.protocols):
            transport: Any = protocol.transport
            transport.abortConnection()


class PublishToFactory(BackplaneFactory):
    """
    Serves L{PublishTo}: each client's lines are published to backplane C{name}.
    """

    def __init__(self, service: BackplaneService, name: str, *,
                 subscribe_to: str | None = None, limits: Limits = Limits(),
                 authority: Authority | None = None,
                 clock: IReactorTime | None = None) -> None:
        super().__init__(service, publish_to=name, subscribe_to=subscribe_to, limits=limits,
                         authority=authority, clock=clock)

    def makeProtocol(self) -> PublishTo:
        assert self.publishTo is not None
        return PublishTo(self.publishTo, subscribe_to=self.subscribeTo, limits=self.limits)


class SubscribeToFactory(BackplaneFactory):
    """
    Serves L{SubscribeTo}: each client receives every line of backplane C{name}.
    """

    def __init__(self, service: BackplaneService, name: str, *,
                 publish_to: str | None = None, limits: Limits = Limits(),
                 authority: Authority | None = None,
                 clock: IReactorTime | None = None) -> None:
        super().__init__(service, publish_to=publish_to, subscribe_to=name, limits=limits,
                         authority=authority, clock=clock)

    def makeProtocol(self) -> SubscribeTo:
        assert self.subscribeTo is not None
        return SubscribeTo(self.subscribeTo, publish_to=self.publishTo, limits=self.limits)
