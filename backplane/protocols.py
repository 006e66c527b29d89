"""
The line protocols: a client's lines go onto a backplane (L{PublishTo}), a
backplane's lines go to a client (L{SubscribeTo}), or both at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from backplane.address import Network, describePeer, isAllowed, peerCommonName
from backplane.auth.authority import Authority
from backplane.auth.gate import Gate
from backplane.auth.identity import AccessDenied, Identity
from backplane.auth.lines import LineAdmission
from backplane.framing import DEFAULT_MAX_LINE_LENGTH as DEFAULT_MAX_LINE_LENGTH
from backplane.framing import LineFramer
from backplane.framing import firstOverlong as firstOverlong
from backplane.interfaces import ILineSink
from backplane.output import BoundedWriter, Linger
from backplane.service import Backplane, BackplaneService, Subscription

SlowPolicy = Literal["disconnect", "drop"]

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
    @ivar linger: seconds a subscriber's chunks may be held back to be
        written together (0: each is written at once); see L{Linger}.
    """

    max_line_length: int = DEFAULT_MAX_LINE_LENGTH
    max_pending: int = DEFAULT_MAX_PENDING
    slow: SlowPolicy = "disconnect"
    max_clients: int | None = None
    allow: tuple[Network, ...] | None = None
    linger: float = 0.0

    def __post_init__(self) -> None:
        if self.max_line_length < 1:
            raise ValueError("max_line_length must be at least 1")
        if self.max_pending < 0:
            raise ValueError("max_pending must be 0 or more")
        if self.slow not in ("disconnect", "drop"):
            raise ValueError(f"slow must be 'disconnect' or 'drop', not {self.slow!r}")
        if self.max_clients is not None and self.max_clients < 0:
            raise ValueError("max_clients must be 0 or more")
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


@implementer(ILineSink, IHandshakeListener, IPushProducer)
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
    @ivar linger: the port's write coalescer (its factory sets it), or
        L{None}: every chunk is written at once.
    """

    log = Logger()
    # Once connected: an ITransport that is also an IConsumer and can
    # abortConnection (TCP, TLS, UNIX and StringTransport all are).
    transport: Any
    gate: Gate | None = None
    linger: Linger | None = None

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
        self.framer = LineFramer(self, limits.max_line_length)
        self.output: BoundedWriter | None = None
        self._subscription: Subscription | None = None
        self._closing = False
        self._joined = False
        self._handshaking = False
        self._producing = False
        self.admission: LineAdmission | None = None
        self.identity: Identity | None = None

    @property
    def dropped(self) -> int:
        """
        Messages this client missed as a slow subscriber (C{slow = "drop"}).
        """
        return 0 if self.output is None else self.output.dropped

    def connectionMade(self) -> None:
        self.peer = describePeer(self.transport.getPeer())
        gate = self.gate
        if gate is not None and gate.auth:
            self.admission = LineAdmission(self, self.framer, gate, peer=self.peer)
            self.admission.start()
        if ISSLTransport.providedBy(self.transport):
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
            if self.admission is not None:
                self.admission.certificate(peerCommonName(self.transport))
            else:
                self._join()

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
            # Each chunk is sent as soon as it is written, as Redis does:
            # Nagle's algorithm would hold it back for the peer's ACK.
            setNoDelay = getattr(self.transport, "setTcpNoDelay", None)
            if setNoDelay is not None:
                setNoDelay(True)
            self.output = BoundedWriter(self, self.transport, self.limits, name=backplane.name,
                                        counters=(self.portStats, backplane.stats),
                                        linger=self.linger)
            self.transport.registerProducer(self, True)
            self._producing = True
            self.subscribe(backplane)

    def subscribe(self, backplane: Backplane) -> None:
        """
        Start handing the client the messages of C{backplane}, its
        C{subscribe_to}, once it has joined and its writer is ready.
        Subclasses override it to subscribe another way (with ids, say).
        """
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
        self.framer.discard()
        self._unsubscribe()
        if self.output is not None:
            self.output.flush()
        if self._producing:
            # A transport closes only once its producer is gone (a paused
            # one would hold it open for ever).
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.admission is not None:
            self.admission.cancel()
            self.admission = None
        if self._handshaking:
            self._handshaking = False
            self.portStats.tls_failures += 1
        self._closing = True
        self.framer.discard()
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

    def _unsubscribe(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    # Publishing: lines in, through the framer (a LinesReceiver).

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        if self.admission is not None:
            self.admission.dataReceived(data)
        else:
            self.readData(data)

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
        if publish_to is None and subscribe_to is None:
            raise ValueError("a port needs publish_to, subscribe_to, or both")
        self.publishTo = None if publish_to is None else service.get(publish_to)
        self.subscribeTo = None if subscribe_to is None else service.get(subscribe_to)
        self.limits = limits
        self.gate = Gate(authority, publish=publish_to, subscribe=subscribe_to, clock=clock)
        self.linger = Linger(limits.linger, clock) if limits.linger > 0 else None
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
        protocol = self.makeProtocol()
        protocol.factory = self
        if isinstance(protocol, BackplaneProtocol):
            protocol.gate = self.gate
            protocol.linger = self.linger
        # Its clients (BackplaneProtocol, WebSocketClient) count in this
        # port's stats: an attribute they have, and Protocol has not.
        counted: Any = protocol
        counted.portStats = self.stats
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
