"""
The line protocols: a client's lines go onto a backplane (L{PublishTo}), a
backplane's lines go to a client (L{SubscribeTo}), or both at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IAddress, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

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
    @ivar max_pending: bytes a subscriber may fall behind (beyond what its
        transport buffers anyway) before C{slow} applies.
    @ivar slow: C{"disconnect"} a subscriber past C{max_pending}, or
        C{"drop"} messages for it until it catches up.
    @ivar max_clients: connections a port accepts at once (L{None}: no limit).
    """

    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    max_pending: int = DEFAULT_MAX_PENDING
    slow: SlowPolicy = "disconnect"
    max_clients: int | None = None

    def __post_init__(self) -> None:
        if self.max_line_length < 1:
            raise ValueError("max_line_length must be at least 1")
        if self.max_pending < 0:
            raise ValueError("max_pending must be 0 or more")
        if self.slow not in ("disconnect", "drop"):
            raise ValueError(f"slow must be 'disconnect' or 'drop', not {self.slow!r}")
        if self.max_clients is not None and self.max_clients < 0:
            raise ValueError("max_clients must be 0 or more")


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


def describePeer(address: IAddress) -> str:
    """
    A short form of an address for log lines: C{host:port} where it has them.
    """
    host, port = getattr(address, "host", None), getattr(address, "port", None)
    if host is not None and port is not None:
        return f"{host}:{port}"
    name = getattr(address, "name", None)
    return str(name) if name else str(address)


@implementer(IPushProducer)
class BoundedOutput:
    """
    The output side of a network subscriber, kept within C{max_pending}: a
    mixin for a protocol that registers itself as its transport's streaming
    producer.

    The transport calls L{pauseProducing} when its buffer is full (on every
    write while it stays full) and L{resumeProducing} once it has drained.
    From the first pause, every byte written for the subscriber counts
    against C{limits.max_pending}; past it, C{limits.slow} applies: the
    subscriber is aborted, or it misses whole chunks until it catches up.

    The protocol provides C{transport}, C{log}, C{limits} (L{Limits}),
    C{subscribeTo} (its L{Backplane}), C{peer} (for the log) and
    C{_subscription}, and asks L{_admit} before each write while C{_paused}.

    @ivar dropped: messages this subscriber missed, all told.
    """

    transport: Any
    log: Any
    limits: Limits
    subscribeTo: Backplane | None
    peer: str
    _subscription: Subscription | None
    _closing: bool

    dropped = 0
    # Set while the transport's buffer is full; then counts the bytes
    # written since, which is what max_pending bounds.
    _paused = False
    _backlog = 0
    _missed = 0  # messages dropped since the subscriber fell behind

    def _admit(self, size: int, count: int) -> bool:
        """
        Count C{size} more bytes (C{count} messages) against C{max_pending}
        while the transport is full.

        @return: whether they may be written; if not, C{slow} has been
            applied (the chunk is dropped, or the subscriber aborted).
        """
        if self._backlog + size > self.limits.max_pending:
            self._tooSlow(count)
            return False
        self._backlog += size
        return True

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
            return
        backplane.stats.slow_disconnects += 1
        self.log.warn(
            "Disconnecting slow subscriber {peer} of backplane {name}: more than "
            "max_pending ({limit} bytes) waiting to be sent",
            peer=self.peer, name=backplane.name, limit=self.limits.max_pending,
        )
        self._closing = True
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        # Not loseConnection: that would wait, holding the backlog, for a
        # client that is not reading.
        self.transport.abortConnection()

    # IPushProducer: the transport tells us when its buffer is full.

    def pauseProducing(self) -> None:
        # The transport calls this on every write while its buffer is full:
        # only the first call starts counting the backlog.
        if not self._paused:
            self._paused = True
            self._backlog = 0

    def resumeProducing(self) -> None:
        self._paused = False
        self._backlog = 0
        if self._missed:
            self.log.info(
                "Subscriber {peer} of backplane {name} caught up, having missed {missed} "
                "messages", peer=self.peer, name=self.subscribeTo.name if self.subscribeTo
                else "?", missed=self._missed,
            )
            self._missed = 0

    def stopProducing(self) -> None:
        pass


@implementer(ILineSink, IPushProducer)
class BackplaneProtocol(BoundedOutput, Protocol):
    """
    A line client of a backplane port: it may publish, subscribe, or both.

    Lines are delimited by C{b"\\n"}; one trailing C{b"\\r"} is stripped; any
    other byte passes through unchanged, and an empty line is a message.  The
    complete lines of each chunk read are published together, and a
    subscriber receives each published chunk in one write.

    A client that publishes to and subscribes to one backplane does not get
    its own lines back.  Data from a client that does not publish is read and
    discarded.
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
        self._buffer = b""
        self._subscription: Subscription | None = None
        self._closing = False

    def connectionMade(self) -> None:
        self.peer = describePeer(self.transport.getPeer())
        if self.publishTo is not None:
            self.publishTo.stats.publishers += 1
        if self.subscribeTo is not None:
            # Each chunk is sent as soon as it is written, as Redis does:
            # Nagle's algorithm would hold it back for the peer's ACK.
            setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
            if setNoDelay is not None:
                setNoDelay(True)
            self.transport.registerProducer(self, True)
            self._subscription = self.subscribeTo.attach(self, origin=self)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        self._buffer = b""
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self.publishTo is not None:
            self.publishTo.stats.publishers -= 1
            self.publishTo = None
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
        backplane.publish_lines(data, origin=self)

    def _overlong(self, length: int) -> None:
        self.log.warn(
            "Disconnecting {peer}: a line of {length} bytes or more is longer than "
            "max_line_length ({limit}); it was not published",
            peer=self.peer, length=length, limit=self.limits.max_line_length,
        )
        self._buffer = b""
        self._closing = True
        self.transport.loseConnection()

    # Subscribing: lines out (ILineSink).

    def deliver(self, data: bytes, count: int) -> None:
        """
        Write a chunk of lines to the client, within C{max_pending}.
        """
        if self._paused and not self._admit(len(data), count):
            return
        self.transport.write(data)


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
    backplanes, enforcing L{Limits} (C{max_clients} here, the rest in each
    protocol).
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
        self.refused = 0
        self._emptied: list[Deferred[None]] = []

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        maxClients = self.limits.max_clients
        if maxClients is not None and len(self.protocols) >= maxClients:
            self.refused += 1
            self.log.warn(
                "Refusing {peer}: max_clients ({limit}) reached",
                peer=describePeer(addr) if addr else "?", limit=maxClients,
            )
            return None
        protocol = self.makeProtocol()
        protocol.factory = self
        self.protocols.add(protocol)
        return protocol

    @property
    def clients(self) -> int:
        """
        The number of clients connected now.
        """
        return len(self.protocols)

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
        transport: Any = protocol.transport
        transport.loseConnection()

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
