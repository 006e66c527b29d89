"""
The line protocols: a client's lines go onto a backplane (L{PublishTo}), a
backplane's lines go to a client (L{SubscribeTo}), or both at once.
"""

from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass
from typing import Any, Literal

from twisted.internet import tcp
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IHandshakeListener, IPushProducer, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from backplane.address import Network, describePeer, isAllowed
from backplane.interfaces import ILineSink
from backplane.service import Backplane, BackplaneService, Subscription

SlowPolicy = Literal["disconnect", "drop"]

DEFAULT_MAX_LINE_LENGTH = 64 * 1024
DEFAULT_MAX_PENDING = 1024 * 1024


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
    """

    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    max_pending: int = DEFAULT_MAX_PENDING
    slow: SlowPolicy = "disconnect"
    max_clients: int | None = None
    allow: tuple[Network, ...] | None = None

    def __post_init__(self) -> None:
        if self.max_line_length < 1:
            raise ValueError("max_line_length must be at least 1")
        if self.max_pending < 0:
            raise ValueError("max_pending must be 0 or more")
        if self.slow not in ("disconnect", "drop"):
            raise ValueError(f"slow must be 'disconnect' or 'drop', not {self.slow!r}")
        if self.max_clients is not None and self.max_clients < 0:
            raise ValueError("max_clients must be 0 or more")


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


def firstOverlong(data: bytes, limit: int) -> int:
    """
    Find the first line of C{data} longer than C{limit} bytes.

    @param data: complete lines, each ending with C{b"\\n"}.
    @return: the offset where that line starts, or -1 if there is none.
    """
    if len(data) <= limit:
        return -1
    # A line of more than `limit` bytes covers a whole aligned block of `step`
    # bytes, so if every block holds a newline there is no such line: a few
    # C-speed finds per chunk instead of a look at every line.
    step = (limit + 1) // 2
    find = data.find
    for start in range(0, len(data) - step + 1, step):
        if find(b"\n", start, start + step) == -1:
            break
    else:
        return -1
    offset = 0
    for line in data.split(b"\n"):
        if len(line) > limit:
            return offset
        offset += len(line) + 1
    return -1


def _directSocket(transport: object) -> socket.socket | None:
    """
    The socket of a plain TCP or UNIX connection, or L{None} for any other
    transport (TLS, a test's).

    A subscriber writes to that socket itself while its transport's buffer
    is empty: a write through the transport costs a round through the
    reactor (register for writability, poll, send, unregister), twice the
    CPU of the C{send} alone for the small chunks a clock tick or a
    fixed-rate publisher makes (see docs/performance.md).  Whatever the
    socket does not take at once goes through the transport, which then
    holds it and everything after it, in order.
    """
    if isinstance(transport, tcp.Connection) and not transport.TLS:
        handle: socket.socket = transport.getHandle()
        return handle
    return None


def _drained(transport: Any) -> bool:
    # Twisted's FileDescriptor keeps unsent data in these two buffers.
    return not (transport.dataBuffer or transport._tempDataBuffer or transport.disconnecting)


def _sendNow(sock: socket.socket, data: bytes) -> bytes:
    """
    Send what the socket takes without blocking; return the rest.
    """
    try:
        sent = sock.send(data)
    except (BlockingIOError, InterruptedError):
        return data
    except OSError:
        return data  # the transport meets the error too, and closes
    return data[sent:]


@implementer(IPushProducer)
class BoundedOutput:
    """
    The output side of a network subscriber, kept within C{max_pending}: a
    mixin for a protocol that registers itself as its transport's streaming
    producer and writes through L{_send}.

    The transport calls L{pauseProducing} when its buffer is full (on every
    write while it stays full) and L{resumeProducing} once it has drained.
    While it is full, what is sent waits here, up to C{limits.max_pending}
    bytes, and goes to the transport as it empties; past that bound,
    C{limits.slow} applies: the subscriber is aborted, or it misses whole
    chunks until it catches up.

    The protocol provides C{transport}, C{log}, C{limits} (L{Limits}),
    C{subscribeTo} (its L{Backplane}), C{peer} (for the log), C{portStats}
    (L{PortStats}), C{_subscription} and C{_closing}.

    @ivar dropped: messages this subscriber missed, all told.
    """

    transport: Any
    log: Any
    limits: Limits
    subscribeTo: Backplane | None
    peer: str
    portStats: PortStats
    _subscription: Subscription | None
    _closing: bool

    dropped = 0
    _paused = False
    _waiting: deque[bytes] | None = None  # made on the first pause
    _waitingBytes = 0
    _missed = 0  # messages dropped since the subscriber fell behind
    _socket: socket.socket | None = None  # see _produceFor

    def _produceFor(self, transport: Any) -> None:
        """
        Register as C{transport}'s streaming producer, to learn when its
        buffer is full; and take note of its socket if it is a plain TCP or
        UNIX connection, which L{_send} may write to itself.
        """
        transport.registerProducer(self, True)
        self._socket = _directSocket(transport)

    def _send(self, data: bytes, count: int) -> None:
        """
        Write C{data} (C{count} messages) to the client, or keep it while
        the transport's buffer is full, within C{max_pending}.
        """
        if not self._paused:
            if self._socket is not None and _drained(self.transport):
                data = _sendNow(self._socket, data)
                if not data:
                    return
            self.transport.write(data)
        elif self._waitingBytes + len(data) > self.limits.max_pending:
            self._tooSlow(count)
        else:
            assert self._waiting is not None
            self._waiting.append(data)
            self._waitingBytes += len(data)

    def _sendWaiting(self) -> None:
        """
        Hand everything that waits to the transport (before closing).
        """
        if self._waiting:
            self.transport.writeSequence(list(self._waiting))
            self._dropWaiting()

    def _dropWaiting(self) -> None:
        if self._waiting:
            self._waiting.clear()
        self._waitingBytes = 0

    def _tooSlow(self, count: int) -> None:
        backplane = self.subscribeTo
        assert backplane is not None
        if self.limits.slow == "drop":
            if not self._missed:
                self.log.warn(
                    "Subscriber {peer} of backplane {name} is more than max_pending "
                    "({limit} bytes) behind: it misses messages until it catches up",
                    peer=self.peer, name=backplane.name, limit=self.limits.max_pending,
                )
            self._missed += count
            self.dropped += count
            backplane.stats.dropped += count
            self.portStats.dropped += count
            return
        backplane.stats.slow_disconnects += 1
        self.portStats.slow_disconnects += 1
        self.log.warn(
            "Disconnecting slow subscriber {peer} of backplane {name}: more than "
            "max_pending ({limit} bytes) waiting to be sent",
            peer=self.peer, name=backplane.name, limit=self.limits.max_pending,
        )
        self._closing = True
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        self._dropWaiting()
        # Not loseConnection: that would wait, holding the backlog, for a
        # client that is not reading.
        self.transport.abortConnection()

    # IPushProducer: the transport tells us when its buffer is full (on every
    # write while it is), and when it is empty again.

    def pauseProducing(self) -> None:
        self._paused = True
        if self._waiting is None:
            self._waiting = deque()

    def resumeProducing(self) -> None:
        self._paused = False
        waiting = self._waiting
        while waiting and not self._paused:
            data = waiting.popleft()
            self._waitingBytes -= len(data)
            self.transport.write(data)  # pauses us again once the buffer is full
        if self._missed and not self._paused and self.subscribeTo is not None:
            self.log.info(
                "Subscriber {peer} of backplane {name} caught up, having missed {missed} "
                "messages", peer=self.peer, name=self.subscribeTo.name, missed=self._missed,
            )
            self._missed = 0

    def stopProducing(self) -> None:
        pass


@implementer(ILineSink, IHandshakeListener)
class BackplaneProtocol(BoundedOutput, Protocol):
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
    """

    log = Logger()
    # Once connected: an ITransport that is also an IConsumer and can
    # abortConnection (TCP, TLS, UNIX and StringTransport all are).
    transport: Any

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
        self._buffer = b""
        self._subscription: Subscription | None = None
        self._closing = False
        self._joined = False
        self._handshaking = False
        self._producing = False

    def connectionMade(self) -> None:
        self.peer = describePeer(self.transport.getPeer())
        if ISSLTransport.providedBy(self.transport):
            self._handshaking = True
        else:
            self._join()

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done (and the client's certificate, if the port
        asks for one, verified): join the backplanes.
        """
        if self._handshaking and not self._closing:
            self._handshaking = False
            self._join()

    def _join(self) -> None:
        self._joined = True
        if self.publishTo is not None:
            self.publishTo.stats.publishers += 1
        if self.subscribeTo is not None:
            # Each chunk is sent as soon as it is written, as Redis does:
            # Nagle's algorithm would hold it back for the peer's ACK.
            setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
            if setNoDelay is not None:
                setNoDelay(True)
            self._produceFor(self.transport)
            self._producing = True
            self._subscription = self.subscribeTo.attach(self, origin=self)

    def close(self) -> None:
        """
        Close the connection once what is pending for the client is sent;
        nothing more is handed to it or published from it.
        """
        self._closing = True
        self._buffer = b""
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        self._sendWaiting()
        if self._producing:
            # A transport closes only once its producer is gone (a paused
            # one would hold it open for ever).
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._handshaking:
            self._handshaking = False
            self.portStats.tls_failures += 1
        self._closing = True
        self._buffer = b""
        self._dropWaiting()
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self.publishTo is not None:
            if self._joined:
                self.publishTo.stats.publishers -= 1
            self.publishTo = None
        self._joined = False
        if isinstance(self.factory, BackplaneFactory):
            self.factory.clientGone(self)

    # Publishing: lines in.

    def dataReceived(self, data: bytes) -> None:
        backplane = self.publishTo
        if backplane is None or self._closing:
            return
        if self._buffer:
            data = self._buffer + data
        end = data.rfind(b"\n") + 1
        limit = self.limits.max_line_length
        if not end:
            self._buffer = data
            if len(data) > limit:
                self._overlong(len(data))
            return
        if end < len(data):
            complete, self._buffer = data[:end], data[end:]
        else:
            complete, self._buffer = data, b""
        bad = firstOverlong(complete, limit)
        if bad >= 0:
            complete = complete[:bad]
            self._buffer = b""
        if complete:
            if b"\r" in complete:
                complete = complete.replace(b"\r\n", b"\n")
            self.publishLines(backplane, complete)
        if bad >= 0:
            self._overlong(data.find(b"\n", bad) - bad)
        elif len(self._buffer) > limit:
            self._overlong(len(self._buffer))

    def publishLines(self, backplane: Backplane, data: bytes) -> None:
        """
        Publish a chunk of complete lines read from the client.

        Framing, C{\\r} stripping and C{max_line_length} are done by the time
        this is called: C{data} is one or more messages, each ending with
        C{b"\\n"}.  Subclasses override it to publish with another origin or
        to count what they read.
        """
        count = data.count(b"\n")
        stats = self.portStats
        stats.messages_in += count
        stats.bytes_in += len(data)
        backplane.publish_lines(data, count, origin=self)

    def _overlong(self, length: int) -> None:
        self.log.warn(
            "Disconnecting {peer}: a line of {length} bytes or more is longer than "
            "max_line_length ({limit}); it was not published",
            peer=self.peer, length=length, limit=self.limits.max_line_length,
        )
        self.portStats.overlong += 1
        self.close()

    # Subscribing: lines out (ILineSink).

    def deliver(self, data: bytes, count: int) -> None:
        """
        Write a chunk of lines to the client, or keep it while the
        transport's buffer is full, within C{max_pending}.
        """
        self._send(data, count)


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
    L{PortStats}.
    """

    log = Logger()
    protocol: type[Protocol] = BackplaneProtocol
    noisy = False

    def __init__(self, service: BackplaneService, *, publish_to: str | None = None,
                 subscribe_to: str | None = None, limits: Limits = Limits()) -> None:
        """
        @param service: the registry the backplanes are looked up in.
        @raise UnknownBackplane: a named backplane is not registered.
        @raise ValueError: neither C{publish_to} nor C{subscribe_to} is given.
        """
        if publish_to is None and subscribe_to is None:
            raise ValueError("a port needs publish_to, subscribe_to, or both")
        self.publishTo = None if publish_to is None else service.get(publish_to)
        self.subscribeTo = None if subscribe_to is None else service.get(subscribe_to)
        self.limits = limits
        self.protocols: set[Protocol] = set()
        self.stats = PortStats()
        self._emptied: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        """
        A protocol for a new client, or L{None} (which closes the connection
        at once) for a client not in C{allow} or past C{max_clients}.
        """
        if not isAllowed(addr, self.limits.allow):
            self.stats.disallowed += 1
            self.log.warn("Refusing {peer}: its address is not in allow",
                          peer=describePeer(addr) if addr else "?")
            return None
        maxClients = self.limits.max_clients
        if maxClients is not None and len(self.protocols) >= maxClients:
            self.stats.refused += 1
            self.log.warn(
                "Refusing {peer}: max_clients ({limit}) reached",
                peer=describePeer(addr) if addr else "?", limit=maxClients,
            )
            return None
        protocol: Any = self.makeProtocol()
        protocol.factory = self
        protocol.portStats = self.stats
        self.protocols.add(protocol)
        self.stats.accepted += 1
        return protocol

    @property
    def clients(self) -> int:
        """
        The number of clients connected now.
        """
        return len(self.protocols)

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

    def clientGone(self, protocol: Protocol) -> None:
        """
        A client built by this factory has disconnected.
        """
        self.protocols.discard(protocol)
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
                 subscribe_to: str | None = None, limits: Limits = Limits()) -> None:
        super().__init__(service, publish_to=name, subscribe_to=subscribe_to, limits=limits)

    def makeProtocol(self) -> PublishTo:
        assert self.publishTo is not None
        return PublishTo(self.publishTo, subscribe_to=self.subscribeTo, limits=self.limits)


class SubscribeToFactory(BackplaneFactory):
    """
    Serves L{SubscribeTo}: each client receives every line of backplane C{name}.
    """

    def __init__(self, service: BackplaneService, name: str, *,
                 publish_to: str | None = None, limits: Limits = Limits()) -> None:
        super().__init__(service, publish_to=publish_to, subscribe_to=name, limits=limits)

    def makeProtocol(self) -> SubscribeTo:
        assert self.subscribeTo is not None
        return SubscribeTo(self.subscribeTo, publish_to=self.publishTo, limits=self.limits)
