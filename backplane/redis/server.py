"""
A Redis-protocol port (SPEC section 12): C{[[listen]] protocol = "redis"}
speaks Redis pub/sub, RESP2 and RESP3, so that any Redis client is a
backplane client that chooses its backplanes by name (C{SUBSCRIBE},
C{PUBLISH}) and by pattern (C{PSUBSCRIBE}).

  - L{RedisFactory}: the port, with the backplanes it serves
    (C{backplanes}, names and glob patterns) and C{max_backplanes};
  - L{RedisClient}: one client, its requests parsed by C{hiredis.Reader},
    its replies and pushes written through one
    L{BoundedWriter<backplane.output.BoundedWriter>}.

Each subscription (a channel, or a backplane a pattern matched) is an
L{ILineSink} of its backplane: a chunk of N lines becomes N pushes in one
C{bytes.join}, their header made once when the client subscribed.  A
pattern is matched against a backplane's name once, when either is new
(L{BackplaneService.watch<backplane.service.BackplaneService.watch>}), never
when a message is published.
"""

from __future__ import annotations

import itertools
import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import hiredis
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from backplane._types import defaultReactor
from backplane.address import describePeer, peerCommonName
from backplane.auth.authority import Authority
from backplane.auth.gate import Gate
from backplane.auth.glob import compileGlob
from backplane.auth.identity import AccessDenied, Identity
from backplane.choice import DEFAULT_MAX_BACKPLANES, ChosenBackplanes
from backplane.errors import TooManyBackplanes
from backplane.framing import firstOverlong
from backplane.interfaces import ILineSink
from backplane.output import BoundedWriter, sendAtOnce
from backplane.protocols import BackplaneFactory, Limits
from backplane.redis import resp
from backplane.redis.resp import Pushes, bulk, error, integer, payloads, push
from backplane.service import Backplane, BackplaneService, Subscription, Watch

#: The most bytes of one request (a command and its arguments) a client may
#: send (C{max_request}); Redis's own bound is 512 MB a bulk string.
DEFAULT_MAX_REQUEST = 8 * 1024 * 1024
#: The longest inline command (one typed into C{nc} or C{telnet}), as Redis.
MAX_INLINE = 64 * 1024

#: What C{HELLO} says the server is: backplane, speaking the pub/sub of this
#: version of Redis (clients that read the version see a current one).
SERVER = b"backplane"
REDIS_VERSION = b"7.2.0"

_WRONGPASS = b"WRONGPASS invalid username-password pair or user is disabled."
_NOAUTH = b"NOAUTH Authentication required."
_GOT = re.compile(rb'got "(.)"')
# The type byte of a RESP value hiredis hands us in place of a bulk string.
_TYPES: dict[type, bytes] = {int: b":", list: b"*", float: b",", bool: b"#", dict: b"%"}


@dataclass
class RedisStats:
    """
    Counters of a Redis port, besides those every port has
    (L{PortStats<backplane.protocols.PortStats>}).

    @ivar commands: commands its clients sent.
    @ivar unknown_commands: commands answered C{-ERR unknown command}.
    @ivar errors: commands answered with any other error.
    @ivar created: backplanes it created on demand.
    @ivar outside: C{SUBSCRIBE} and C{PUBLISH} refused for a name outside
        C{backplanes}.
    @ivar over_max_backplanes: those refused because C{max_backplanes}
        backplanes created on demand existed.
    @ivar protocol_errors: clients disconnected for a malformed request.
    """

    commands: int = 0
    unknown_commands: int = 0
    errors: int = 0
    created: int = 0
    outside: int = 0
    over_max_backplanes: int = 0
    protocol_errors: int = 0


class RedisFactory(BackplaneFactory):
    """
    A Redis-protocol port: its clients subscribe and publish to the
    backplanes it serves, by name and by pattern, creating them on demand.

    @ivar service: the registry of backplanes.
    @ivar backplanes: the names and Redis glob patterns of the backplanes
        its clients may reach.
    @ivar maxBackplanes: the most backplanes this port created on demand
        that may exist at once.
    @ivar maxRequest: the most bytes of one request.
    @ivar redisStats: what its clients did (L{RedisStats}).
    """

    log = Logger()
    needsBackplane = False

    def __init__(self, service: BackplaneService, *, backplanes: Sequence[str],
                 max_backplanes: int = DEFAULT_MAX_BACKPLANES,
                 max_request: int = DEFAULT_MAX_REQUEST, limits: Limits = Limits(),
                 authority: Authority | None = None,
                 clock: IReactorTime | None = None) -> None:
        """
        @param backplanes: names and glob patterns (C{"chat.*"}).
        @param authority: with C{auth = true}, what checks the clients'
            C{AUTH}.
        """
        super().__init__(service, limits=limits, authority=authority, clock=clock)
        self.service = service
        self.choice = ChosenBackplanes(service, backplanes, max_backplanes=max_backplanes)
        self.backplanes = self.choice.patterns
        self.maxBackplanes = max_backplanes
        self.maxRequest = max_request
        self.redisStats = RedisStats()
        self._ids = itertools.count(1)

    def serves(self, name: str) -> bool:
        """
        Whether backplane C{name} is one this port's clients may reach.
        """
        return self.choice.serves(name)

    def nextId(self) -> int:
        """
        A client's C{CLIENT ID}: unique on this port.
        """
        return next(self._ids)

    def makeProtocol(self) -> RedisClient:
        return RedisClient(self)

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        protocol = super().buildProtocol(addr)
        if isinstance(protocol, RedisClient):
            protocol.portStats = self.stats
        return protocol

    def closeClient(self, protocol: Protocol) -> None:
        assert isinstance(protocol, RedisClient)
        protocol.close()

    def portReport(self) -> dict[str, Any]:
        """
        What a Redis port adds to its L{ListenService<backplane.ports.ListenService>}'s
        report: its counters, gauges and C{backplanes}.
        """
        subscriptions = patterns = 0
        for protocol in self.protocols:
            if isinstance(protocol, RedisClient):
                subscriptions += len(protocol.channels)
                patterns += len(protocol.patterns)
        return {
            "counters": asdict(self.redisStats),
            "gauges": {"subscriptions": subscriptions, "pattern_subscriptions": patterns,
                       "backplanes_on_demand": self.choice.onDemand},
            "info": {"protocol": "redis", "backplanes": ", ".join(self.backplanes),
                     "max_backplanes": self.maxBackplanes},
        }


@implementer(ILineSink)
class _Channel:
    """
    One subscription of a client to one backplane: the backplane's chunks
    become C{message} (or C{pmessage}) pushes to the client.
    """

    __slots__ = ("backplane", "client", "pushes", "subscription")

    def __init__(self, client: RedisClient, backplane: Backplane, pushes: Pushes) -> None:
        self.client = client
        self.backplane = backplane
        self.pushes = pushes
        self.subscription: Subscription | None = None

    def deliver(self, data: bytes, count: int) -> None:
        client = self.client
        client.send(self.pushes.encode(self.backplane.encoded(data, count, payloads),
                                       client.protocol), count)


class _Pattern:
    """
    One C{PSUBSCRIBE} of a client: a subscription to each backplane its
    pattern matches (that the client may reach), made when the pattern is
    subscribed or the backplane created.
    """

    __slots__ = ("channels", "client", "pattern", "watch")

    def __init__(self, client: RedisClient, pattern: bytes) -> None:
        self.client = client
        self.pattern = pattern
        self.channels: dict[str, Subscription] = {}
        self.watch: Watch | None = None

    def created(self, backplane: Backplane) -> None:
        """
        A backplane whose name the pattern matches: subscribe to it, if the
        client may.
        """
        name = backplane.name
        if name not in self.channels and self.client.mayReach(name):
            sink = _Channel(self.client, backplane,
                            Pushes(name.encode("utf-8"), self.pattern))
            self.channels[name] = backplane.attach(sink)

    def cancel(self) -> None:
        if self.watch is not None:
            self.watch.cancel()
            self.watch = None
        channels, self.channels = self.channels, {}
        for subscription in channels.values():
            subscription.cancel()


class _Publishes:
    """
    The messages of C{PUBLISH}es to one channel that came one after the
    other in a read, published together as one chunk (see
    L{RedisClient.redis_publish}).
    """

    __slots__ = ("channel", "count", "data", "name")

    def __init__(self, channel: bytes, name: str) -> None:
        self.channel = channel
        self.name = name
        self.data: list[bytes] = []
        self.count = 0

    def add(self, data: bytes, count: int) -> None:
        self.data.append(data)
        self.count += count


# The commands: name -> (arity as Redis counts it, allowed to a RESP2
# client in subscribe mode, allowed before AUTH on an auth port).
_COMMANDS: dict[bytes, tuple[int, bool, bool]] = {
    b"subscribe": (-2, True, False),
    b"unsubscribe": (-1, True, False),
    b"psubscribe": (-2, True, False),
    b"punsubscribe": (-1, True, False),
    b"publish": (3, False, False),
    b"ping": (-1, True, False),
    b"echo": (2, False, False),
    b"quit": (-1, True, True),
    b"reset": (1, True, True),
    b"hello": (-1, False, True),
    b"auth": (-2, False, True),
    b"client": (-2, False, False),
    b"select": (2, False, False),
    b"pubsub": (-2, False, False),
}
_SUBCOMMANDS: dict[bytes, dict[bytes, int]] = {
    b"client": {b"id": 2, b"getname": 2, b"setname": 3, b"setinfo": 4},
    b"pubsub": {b"channels": -2, b"numsub": -2, b"numpat": 2},
}


def _size(request: object) -> int:
    """
    The bytes of a request as a client sends it (an array of bulk strings,
    or an empty or null array), to know where the next one begins.
    """
    if not isinstance(request, list):
        return 5  # *-1\r\n
    size = len(str(len(request))) + 3
    for arg in request:
        length = len(arg) if isinstance(arg, bytes) else 0
        size += len(str(length)) + length + 5
    return size


def _arityOk(arity: int, count: int) -> bool:
    return count == arity if arity > 0 else count >= -arity


@implementer(IHandshakeListener, IPushProducer)
class RedisClient(Protocol):
    """
    One client of a Redis-protocol port.

    Requests are RESP arrays of bulk strings, parsed by C{hiredis.Reader},
    or inline commands (a line of words, as typed into C{nc}), read where a
    read from the connection begins between two requests.  The replies to the requests of
    one read, and the pushes they cause, go out in one write.  Everything
    the client is sent passes through its L{output}, a L{BoundedWriter}:
    past C{max_pending}, a subscriber that does not read is handled as
    C{slow} says; a client whose replies pile up (it sends commands without
    reading) is disconnected.

    @ivar protocol: 2 (RESP2) or 3 (RESP3, after C{HELLO 3}).
    @ivar channels: the client's C{SUBSCRIBE}s, by channel.
    @ivar patterns: its C{PSUBSCRIBE}s, by pattern.
    @ivar identity: who it authenticated as (C{AUTH}), on a port with C{auth}.
    """

    log = Logger()
    transport: Any

    def __init__(self, factory: RedisFactory) -> None:
        self.factory = factory
        self.service = factory.service
        self.limits = factory.limits
        self.gate: Gate = factory.gate
        self.portStats = factory.stats
        self.stats = factory.redisStats
        self.peer = "?"
        self.protocol = 2
        self.clientId = factory.nextId()
        self.name: bytes | None = None
        self.channels: dict[bytes, Subscription] = {}
        self.patterns: dict[bytes, _Pattern] = {}
        self.identity: Identity | None = None
        self.output: BoundedWriter | None = None
        self._reader = hiredis.Reader()
        # Bytes fed to the reader that are not yet a complete request: 0
        # between requests, where an inline command may begin.
        self._unparsed = 0
        self._inline: bytes | None = None  # a partial inline command
        self._batch: list[bytes] | None = None
        # PUBLISHes of the read being handled, to one channel, not yet published.
        self._publishing: _Publishes | None = None
        self._closing = False
        self._ready = False
        self._authTimer: IDelayedCall | None = None
        # Publishers' rights, decided once a name (auth ports only).
        self._mayPublish: dict[str, bool] = {}
        # What it holds on the service's bound on unfinished input.
        self._unfinished = 0

    @property
    def unfinished(self) -> int:
        """
        The bytes of an unfinished request the client holds on the
        service's bound on unfinished input, as of its last read.
        """
        return self._unfinished

    def _countUnfinished(self) -> None:
        held = 0 if self._closing else self._unparsed + len(self._inline or b"")
        before = self._unfinished
        if held != before:
            self._unfinished = held
            self.service.unfinished.update(self, before, held)

    def overUnfinished(self) -> None:
        """
        All clients together hold more than C{max_unfinished_total} of
        unfinished input, and this one holds the most: log it, forget its
        unfinished request (never handled, counted in C{discarded_bytes}),
        and close the connection.
        """
        length = self._unfinished
        self.log.warn(
            "Disconnecting {peer}: its unfinished request of {length} bytes is the longest, "
            "and all clients together hold more than max_unfinished_total ({limit} bytes) "
            "of unfinished input",
            peer=self.peer, length=length, limit=self.service.unfinished.limit)
        self.portStats.discarded_bytes += length
        self._forgetUnfinished()
        self.close()
        self._countUnfinished()

    def _discardUnfinished(self) -> None:
        """
        The connection is gone with part of a request read (the client
        reset or closed it, or the server closed it outside a read: the
        C{auth} timeout, the port stopping): forget it, never handled, and
        count its bytes in C{discarded_bytes}.  A request being handled is no longer part of
        what is unparsed; what a read left after the server decided to
        close (C{QUIT}, a protocol error) was forgotten at the end of that
        read, and what L{overUnfinished} cut was counted there.
        """
        discarded = self._unparsed + len(self._inline or b"")
        if discarded:
            self.portStats.discarded_bytes += discarded
        self._forgetUnfinished()

    def _forgetUnfinished(self) -> None:
        self._reader = hiredis.Reader()
        self._unparsed = 0
        self._inline = None

    # Connection.

    @property
    def authenticated(self) -> bool:
        """
        Whether the client may use the port: it has authenticated, or the
        port has no C{auth}.
        """
        return not self.gate.auth or self.identity is not None

    @property
    def subscriptions(self) -> int:
        """
        Its channels and patterns, as Redis counts them in its replies.
        """
        return len(self.channels) + len(self.patterns)

    def connectionMade(self) -> None:
        self.peer = describePeer(self.transport.getPeer())
        sendAtOnce(self.transport)
        self.output = BoundedWriter(self, self.transport, self.limits, name="redis",
                                    counters=(self.portStats,), budget=self.service.budget)
        self.transport.registerProducer(self, True)
        self._ready = not ISSLTransport.providedBy(self.transport)
        if self._ready and not self._handshakeDone():
            return
        if self.gate.auth:
            self._startAuthTimer()

    def _handshakeDone(self) -> bool:
        """
        Tell the port that the client's handshake (TLS, or none) is done, so
        that it counts against C{max_clients}, where the port keeps that
        account (C{handshakeDone}); abort the connection if it may not stay.
        """
        if self.factory.handshakeDone(self):
            return True
        self._closing = True
        self.transport.abortConnection()
        return False

    def _startAuthTimer(self) -> None:
        clock = self.gate.clock or defaultReactor()
        self._authTimer = clock.callLater(self.gate.timeout, self._authTimedOut)

    def _authTimedOut(self) -> None:
        """
        On a port with C{auth}: the client has not authenticated within the
        gate's timeout (as long as a line client has to send C{AUTH}).
        """
        self._authTimer = None
        if self.identity is not None or self._closing:
            return
        denied = AccessDenied(f"no AUTH within {self.gate.timeout:g} seconds", code="timeout")
        self.gate.refused(denied, peer=self.peer)
        self.send(error(b"ERR " + denied.reason.encode("ascii")))
        self.close()

    def _stopAuthTimer(self) -> None:
        timer, self._authTimer = self._authTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def handshakeCompleted(self) -> None:
        """
        The TLS handshake is done: read requests; on a port with C{auth}, a
        client certificate that names a user authenticates the client.
        """
        if self._closing or not self._handshakeDone():
            return
        self._ready = True
        if self.gate.auth and self.identity is None:
            try:
                self.identity = self.gate.certificate(peerCommonName(self.transport),
                                                      peer=self.peer)
            except AccessDenied:
                pass
            if self.identity is not None:
                self._stopAuthTimer()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._closing = True
        self._discardUnfinished()
        self._countUnfinished()
        self._stopAuthTimer()
        if self.output is not None:
            self.output.discard()
        self._unsubscribeAll()
        self.factory.clientGone(self)

    def close(self) -> None:
        """
        Close the connection once what is pending for the client is sent.
        """
        if self._closing:
            return
        self._flush()
        self._closing = True
        self._unsubscribeAll()
        if self.output is not None:
            self.output.flush()
        self.transport.unregisterProducer()
        self.transport.loseConnection()

    def _unsubscribeAll(self) -> None:
        channels, self.channels = self.channels, {}
        for subscription in channels.values():
            subscription.cancel()
        patterns, self.patterns = self.patterns, {}
        for pattern in patterns.values():
            pattern.cancel()

    # Output: replies and pushes, in order, through the bounded writer.

    def send(self, data: bytes, count: int = 0) -> None:
        """
        Send the client C{data}: C{count} messages' pushes, or replies
        (C{count} 0).  While the client's requests are being read, it waits
        to go out with their replies, in one write.
        """
        if not count and self._publishing is not None:
            self._flushPublishes()
        if self._batch is not None:
            self._batch.append(data)
        elif count:
            if self.output is not None and not self._closing:
                self.output.deliver(data, count)
        else:
            self._reply(data)

    def _reply(self, data: bytes) -> None:
        output = self.output
        if output is None or self._closing:
            return
        if output.paused and output.pending + len(data) > self.limits.max_pending:
            # Replies cannot be dropped (the client would lose its place):
            # a client that sends requests and does not read is slow.
            self.portStats.slow_disconnects += 1
            self.log.warn(
                "Disconnecting {peer}: more than max_pending ({limit} bytes) of replies "
                "and messages waiting to be sent", peer=self.peer,
                limit=self.limits.max_pending)
            self.outputTooSlow()
            output.discard()
            self.transport.abortConnection()
            return
        output.deliver(data, 0)

    def _flush(self) -> None:
        self._flushPublishes()
        batch, self._batch = self._batch, None
        if batch:
            # Replies, and the pushes they caused: none may be dropped.
            self._reply(b"".join(batch))

    def outputTooSlow(self) -> None:
        """
        Past C{max_pending}: hand the client nothing more (the connection
        is aborted).
        """
        self._closing = True
        self._unsubscribeAll()

    def outputCaughtUp(self, missed: int) -> None:
        """
        The client caught up after missing C{missed} messages (its writer
        logged it).
        """

    def pauseProducing(self) -> None:
        if self.output is not None:
            self.output.pauseProducing()

    def resumeProducing(self) -> None:
        if self.output is not None:
            self.output.resumeProducing()

    def stopProducing(self) -> None:
        pass

    # Input: requests.

    def dataReceived(self, data: bytes) -> None:
        if self._closing or not self._ready:
            return
        self._batch = []
        try:
            self._requests(data)
        finally:
            self._flush()
        if self._closing:
            # Closed by this read (QUIT, a protocol error, replies past
            # max_pending): what follows is never read, and not a request
            # cut short.
            self._forgetUnfinished()
        self._countUnfinished()

    def _requests(self, data: bytes) -> None:
        reader = self._reader
        while data and not self._closing:
            if self._inline is not None or (not self._unparsed and data[:1] != b"*"):
                data = self._inlineRequests(data)
                continue
            reader.feed(data)
            self._unparsed += len(data)
            data = b""
            while not self._closing:
                try:
                    request = reader.gets()
                except hiredis.ProtocolError as e:
                    got = _GOT.search(str(e).encode("utf-8", "replace"))
                    self._protocolError(b"expected '$', got '" + got.group(1) + b"'"
                                        if got else b"invalid request")
                    return
                if request is False:
                    break
                self._unparsed = max(0, self._unparsed - _size(request))
                self._request(request)
            if self._unparsed > self.factory.maxRequest and not self._closing:
                self._protocolError(b"request longer than max_request (%d bytes)"
                                    % self.factory.maxRequest)

    def _inlineRequests(self, data: bytes) -> bytes:
        """
        Read inline commands (a line of words) until a RESP request begins;
        return what is left.
        """
        while data:
            if self._inline is None and data[:1] == b"*":
                return data
            end = data.find(b"\n")
            if end < 0:
                self._inline = (self._inline or b"") + data
                if len(self._inline) > MAX_INLINE:
                    self._protocolError(b"too big inline request")
                return b""
            line, data = (self._inline or b"") + data[:end], data[end + 1:]
            self._inline = None
            try:
                words = [word.encode("latin-1")
                         for word in shlex.split(line.decode("latin-1"))]
            except ValueError:
                self._protocolError(b"unbalanced quotes in request")
                return b""
            if words:
                self._request(words)
            if self._closing:
                return b""
        return b""

    def _protocolError(self, reason: bytes) -> None:
        self.stats.protocol_errors += 1
        self.log.info("Disconnecting {peer}: protocol error", peer=self.peer)
        self.send(error(b"ERR Protocol error: " + reason))
        self.close()

    def _request(self, request: object) -> None:
        if not isinstance(request, list) or not request:
            return  # an empty or null array: nothing, as Redis
        for arg in request:
            if not isinstance(arg, bytes):
                kind = _TYPES.get(type(arg), b"$" if arg is None else b"-")
                if arg is None:
                    self._protocolError(b"invalid bulk length")
                else:
                    self._protocolError(b"expected '$', got '" + kind + b"'")
                return
        self.stats.commands += 1
        args: list[bytes] = request
        name = args[0].lower()
        if self._publishing is not None and name != b"publish":
            self._flushPublishes()
        spec = _COMMANDS.get(name)
        if spec is None:
            self.stats.unknown_commands += 1
            self.send(resp.unknownCommand(args))
            return
        arity, inSubscribeMode, beforeAuth = spec
        subcommands = _SUBCOMMANDS.get(name)
        if subcommands is not None and len(args) >= 2:
            sub = args[1].lower()
            subArity = subcommands.get(sub)
            if subArity is None:
                self._error(resp.unknownSubcommand(name, args[1]))
                return
            if not _arityOk(subArity, len(args)):
                self._error(resp.wrongArity(name + b"|" + sub))
                return
            fullName = name + b"|" + sub
        else:
            fullName = name
        if not _arityOk(arity, len(args)):
            self._error(resp.wrongArity(name))
            return
        if not beforeAuth and not self.authenticated:
            self._error(error(_NOAUTH))
            return
        if self.protocol == 2 and self.subscriptions and not inSubscribeMode:
            self._error(error(b"ERR " + resp.SUBSCRIBE_CONTEXT % fullName))
            return
        handler: Callable[[list[bytes]], None] = getattr(self, "redis_" + name.decode())
        handler(args)

    def _error(self, reply: bytes) -> None:
        self.stats.errors += 1
        self.send(reply)

    # Which backplanes.

    def _backplaneName(self, channel: bytes) -> str | None:
        """
        The backplane a channel names, if the port serves it; L{None} and
        an error sent to the client otherwise.
        """
        try:
            name = channel.decode("utf-8")
        except UnicodeDecodeError:
            name = None
        if name is None or not self.factory.serves(name):
            self.stats.outside += 1
            self._error(error(b"ERR backplane '" + channel[:resp.QUOTED]
                              + b"' is not served by this port"))
            return None
        return name

    def mayReach(self, name: str) -> bool:
        """
        Whether this client may subscribe to backplane C{name}: the port
        serves it, and the client's user may (on a port with C{auth}).
        """
        if not self.factory.serves(name):
            return False
        identity = self.identity
        return identity is None or identity.permissions.maySubscribe(name)

    def _refused(self, denied: AccessDenied) -> None:
        self._error(error(b"NOPERM " + denied.reason.encode("utf-8", "backslashreplace")))

    # Pub/sub commands.

    def redis_subscribe(self, args: list[bytes]) -> None:
        names = []
        for channel in args[1:]:
            name = self._backplaneName(channel)
            if name is None:
                return
            try:
                self.gate.authorize(self.identity, subscribe=name, peer=self.peer)
            except AccessDenied as denied:
                self._refused(denied)
                return
            names.append((channel, name))
        for channel, name in names:
            if channel not in self.channels:
                try:
                    backplane = self._ensure(name)
                except TooManyBackplanes as e:
                    self._tooMany(e)
                    return
                self.send(push([bulk(b"subscribe"), bulk(channel),
                                integer(self.subscriptions + 1)], self.protocol))
                sink = _Channel(self, backplane, Pushes(channel))
                self.channels[channel] = backplane.attach(sink)
            else:
                self.send(push([bulk(b"subscribe"), bulk(channel),
                                integer(self.subscriptions)], self.protocol))

    def _ensure(self, name: str) -> Backplane:
        created = name not in self.service
        backplane: Backplane = self.factory.choice.ensure(name)
        if created:
            self.stats.created += 1
        return backplane

    def _tooMany(self, e: TooManyBackplanes, reply: bool = True) -> None:
        self.stats.over_max_backplanes += 1
        self.log.warn("Refusing to create backplane {name} for {peer}: max_backplanes "
                      "({limit}) reached", name=e.name, peer=self.peer, limit=e.limit)
        if reply:
            self._error(error(b"ERR " + str(e).encode("utf-8", "backslashreplace")))
        else:
            self.stats.errors += 1

    def redis_unsubscribe(self, args: list[bytes]) -> None:
        channels = args[1:] or list(self.channels)
        if not channels:
            self.send(push([bulk(b"unsubscribe"), resp.null(self.protocol),
                            integer(self.subscriptions)], self.protocol))
        for channel in channels:
            subscription = self.channels.pop(channel, None)
            if subscription is not None:
                subscription.cancel()
            self.send(push([bulk(b"unsubscribe"), bulk(channel), integer(self.subscriptions)],
                           self.protocol))

    def redis_psubscribe(self, args: list[bytes]) -> None:
        for pattern in args[1:]:
            if pattern in self.patterns:
                self.send(push([bulk(b"psubscribe"), bulk(pattern),
                                integer(self.subscriptions)], self.protocol))
                continue
            subscription = self.patterns[pattern] = _Pattern(self, pattern)
            self.send(push([bulk(b"psubscribe"), bulk(pattern), integer(self.subscriptions)],
                           self.protocol))
            text = pattern.decode("utf-8", "surrogateescape")
            subscription.watch = self.service.watch(text, subscription.created)
            glob = compileGlob(pattern)
            for backplane in self.service.backplanes():
                if glob.match(backplane.name):
                    subscription.created(backplane)

    def redis_punsubscribe(self, args: list[bytes]) -> None:
        patterns = args[1:] or list(self.patterns)
        if not patterns:
            self.send(push([bulk(b"punsubscribe"), resp.null(self.protocol),
                            integer(self.subscriptions)], self.protocol))
        for pattern in patterns:
            subscription = self.patterns.pop(pattern, None)
            if subscription is not None:
                subscription.cancel()
            self.send(push([bulk(b"punsubscribe"), bulk(pattern), integer(self.subscriptions)],
                           self.protocol))

    def redis_publish(self, args: list[bytes]) -> None:
        channel = args[1]
        pending = self._publishing
        if pending is not None and pending.channel == channel:
            name = pending.name
        else:
            self._flushPublishes()
            pending = None
            checked = self._backplaneName(channel)
            if checked is None or not self._mayPublishTo(checked):
                return
            name = checked
        data = args[2]
        if data[-1:] != b"\n":
            data += b"\n"
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        limit = self.limits.max_line_length
        if firstOverlong(data, limit) >= 0:
            self.portStats.overlong += 1
            self._error(error(b"ERR a line of the message is longer than max_line_length "
                              b"(%d bytes): nothing of it was published" % limit))
            return
        count = data.count(b"\n")
        stats = self.portStats
        stats.messages_in += count
        stats.bytes_in += len(data)
        if self._batch is None or self.subscriptions:
            # Not reading a batch of requests, or the client hears itself
            # (RESP3): its pushes come before the reply, as from Redis.
            self.send(self._publish(name, data, count, 1))
            return
        if pending is None:
            pending = self._publishing = _Publishes(channel, name)
        pending.add(data, count)

    def _mayPublishTo(self, name: str) -> bool:
        """
        Whether the client may publish to backplane C{name} (decided once a
        name, on a port with C{auth}); a refusal is sent.
        """
        if self.identity is None:
            return True
        allowed = self._mayPublish.get(name)
        if allowed is None:
            try:
                self.gate.authorize(self.identity, publish=name, peer=self.peer)
                allowed = True
            except AccessDenied as denied:
                self._refused(denied)
                allowed = False
            if len(self._mayPublish) >= 1000:
                self._mayPublish.clear()
            self._mayPublish[name] = allowed
        elif not allowed:
            self._error(error(b"NOPERM may not publish to this backplane"))
        return allowed

    def _flushPublishes(self) -> None:
        """
        Publish the messages of the C{PUBLISH}es to one channel that came
        one after the other in a read, as one chunk, and reply to each.
        """
        pending, self._publishing = self._publishing, None
        if pending is not None:
            self.send(self._publish(pending.name, b"".join(pending.data), pending.count,
                                    len(pending.data)))

    def _publish(self, name: str, data: bytes, count: int, publishes: int) -> bytes:
        """
        Publish a chunk of C{count} lines, the messages of C{publishes}
        C{PUBLISH}es, to backplane C{name}; return the replies.
        """
        service = self.service
        if name in service:
            backplane = service.get(name)
        elif service.watched(name):
            try:
                backplane = self._ensure(name)
            except TooManyBackplanes as e:
                self._tooMany(e, reply=False)
                self.stats.errors += publishes - 1
                return error(b"ERR " + str(e).encode("utf-8", "backslashreplace")) * publishes
        else:
            return integer(0) * publishes
        reached = backplane.publishLines(data, count)
        service.release(backplane)
        return integer(reached) * publishes

    def redis_ping(self, args: list[bytes]) -> None:
        if len(args) > 2:
            self._error(resp.wrongArity(b"ping"))
        elif self.protocol == 2 and self.subscriptions:
            self.send(b"*2\r\n$4\r\npong\r\n" + bulk(args[1] if len(args) > 1 else b""))
        else:
            self.send(bulk(args[1]) if len(args) > 1 else resp.PONG)

    def redis_echo(self, args: list[bytes]) -> None:
        self.send(bulk(args[1]))

    def redis_quit(self, args: list[bytes]) -> None:
        self.send(resp.OK)
        self.close()

    def redis_reset(self, args: list[bytes]) -> None:
        self._unsubscribeAll()
        self.protocol = 2
        self.name = None
        self._mayPublish.clear()
        if self.identity is not None:
            # Unauthenticated again, with the time a new client has.
            self.identity = None
            self._startAuthTimer()
        self.send(resp.RESET)

    # Connection commands.

    def _authenticate(self, user: bytes | None, token: bytes) -> bool:
        """
        Check C{AUTH [user] token}: on a port with C{auth}, the token of a
        user (or a signed token); C{user}, if given, must be its name or
        C{default}.  A refusal is sent, counted and logged.
        """
        if not self.gate.auth:
            if user is None:
                self._error(error(b"ERR AUTH <password> called without any password configured "
                                  b"for the default user. Are you sure your configuration is "
                                  b"correct?"))
            else:
                self._error(error(_WRONGPASS))
            return False
        try:
            identity = self.gate.admit(token, peer=self.peer)
        except AccessDenied:
            self._error(error(_WRONGPASS))
            return False
        assert identity is not None
        if user is not None and user not in (b"default", identity.name.encode("utf-8")):
            self._error(error(_WRONGPASS))
            return False
        self.identity = identity
        self._mayPublish.clear()
        self._stopAuthTimer()
        return True

    def redis_auth(self, args: list[bytes]) -> None:
        if len(args) > 3:
            self._error(error(b"ERR syntax error"))
        elif self._authenticate(args[1] if len(args) == 3 else None, args[-1]):
            self.send(resp.OK)

    def redis_hello(self, args: list[bytes]) -> None:
        protocol = self.protocol
        if len(args) > 1:
            try:
                protocol = int(args[1])
            except ValueError:
                self._error(error(b"ERR Protocol version is not an integer or out of range"))
                return
            if protocol not in (2, 3):
                self._error(error(b"NOPROTO unsupported protocol version"))
                return
        auth: tuple[bytes, bytes] | None = None
        setName: bytes | None = None
        i = 2
        while i < len(args):
            option = args[i].lower()
            if option == b"auth" and i + 2 < len(args):
                auth = (args[i + 1], args[i + 2])
                i += 3
            elif option == b"setname" and i + 1 < len(args):
                setName = args[i + 1]
                i += 2
            else:
                self._error(error(b"ERR Syntax error in HELLO option '" + args[i][:resp.QUOTED]
                                  + b"'"))
                return
        if auth is not None and not self._authenticate(*auth):
            return
        if not self.authenticated:
            self._error(error(b"NOAUTH HELLO must be called with the client already "
                              b"authenticated, otherwise the HELLO <proto> AUTH <user> <pass> "
                              b"option can be used to authenticate the client and select the "
                              b"RESP protocol version at the same time"))
            return
        if setName is not None and not self._setName(setName):
            return
        self.protocol = protocol
        self.send(resp.mapping([
            (bulk(b"server"), bulk(SERVER)),
            (bulk(b"version"), bulk(REDIS_VERSION)),
            (bulk(b"proto"), integer(protocol)),
            (bulk(b"id"), integer(self.clientId)),
            (bulk(b"mode"), bulk(b"standalone")),
            (bulk(b"role"), bulk(b"master")),
            (bulk(b"modules"), b"*0\r\n"),
        ], protocol))

    def _setName(self, name: bytes) -> bool:
        if any(byte < 0x21 or byte > 0x7E for byte in name):
            self._error(error(b"ERR Client names cannot contain spaces, newlines or special "
                              b"characters."))
            return False
        self.name = name or None
        return True

    def redis_client(self, args: list[bytes]) -> None:
        sub = args[1].lower()
        if sub == b"id":
            self.send(integer(self.clientId))
        elif sub == b"getname":
            self.send(resp.null(self.protocol) if self.name is None else bulk(self.name))
        elif sub == b"setname":
            if self._setName(args[2]):
                self.send(resp.OK)
        elif args[2].lower() in (b"lib-name", b"lib-ver"):
            self.send(resp.OK)
        else:
            self._error(error(b"ERR Unrecognized option '" + args[2][:resp.QUOTED] + b"'"))

    def redis_select(self, args: list[bytes]) -> None:
        try:
            index = int(args[1])
        except ValueError:
            self._error(error(b"ERR value is not an integer or out of range"))
            return
        if index != 0:
            self._error(error(b"ERR DB index is out of range"))
        else:
            self.send(resp.OK)

    def redis_pubsub(self, args: list[bytes]) -> None:
        sub = args[1].lower()
        service = self.service
        if sub == b"numpat":
            self.send(integer(service.patterns))
        elif sub == b"numsub":
            items = []
            for channel in args[2:]:
                name = channel.decode("utf-8", "surrogateescape")
                reached = len(service.get(name)) \
                    if name in service and self.factory.serves(name) else 0
                items += [bulk(channel), integer(reached)]
            self.send(resp.array(items))
        else:
            glob = compileGlob(args[2]) if len(args) > 2 else None
            self.send(resp.array([
                bulk(backplane.name.encode("utf-8")) for backplane in service.backplanes()
                if len(backplane) and self.factory.serves(backplane.name)
                and (glob is None or glob.match(backplane.name))
            ]))
