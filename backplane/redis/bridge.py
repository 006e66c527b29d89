"""
Backplanes shared between nodes through Redis pub/sub.

A L{RedisBridge} is a child service of a L{BackplaneService}.  For each
shared backplane C{NAME} it publishes what local publishers put on the
backplane to the Redis channel C{prefix + NAME}, and republishes on the
backplane what other nodes (or any Redis client) publish on that channel, so a
message published on any node reaches the subscribers of every node, once.

The wire format (L{backplane.redis.wire}, docs/scaling.md) is plain lines,
so that any Redis client can take part.

Connections: one to publish, one to subscribe (a subscribed Redis connection
takes no other command), each a L{backplane.redis.link.Link}: kept up by a
L{ClientService<twisted.application.internet.ClientService>} with the
project's backoff policy (L{backplane.retry.backoffPolicy}).
"""

from __future__ import annotations

import random as _random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IDelayedCall, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from backplane.interfaces import ILineSink, IStatsSource
from backplane.redis.address import parseURL
from backplane.redis.link import Link, Publisher, Subscriber
from backplane.redis.wire import decode, defaultNodeId, encodeTag
from backplane.retry import backoffPolicy
from backplane.service import Backplane, BackplaneService, Subscription

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "backplane:"
DEFAULT_QUEUE = 8 * 1024 * 1024
"""Bytes of chunks that may wait to be published to Redis (8 MiB)."""

COALESCE = 64 * 1024
"""Chunks waiting for the same channel are joined into one PUBLISH up to this
many bytes (a larger chunk still travels whole, in one PUBLISH)."""


@dataclass
class BridgeStats:
    """
    Counters of a L{RedisBridge}, for monitoring.  They only grow, except
    C{connected}, C{queued} and C{last_outage}.

    @ivar connected: both connections to Redis are up (and subscribed).
    @ivar chunks_out: payloads published to Redis and acknowledged by it.
    @ivar messages_out: the messages (lines) in them.
    @ivar bytes_out: their bytes, tag lines included.
    @ivar chunks_in: payloads received from other nodes or Redis clients.
    @ivar messages_in: the messages in them, republished here.
    @ivar bytes_in: their bytes, tag lines included.
    @ivar echoes: this node's own payloads that came back and were skipped.
    @ivar rejected: payloads tagged with an unknown wire format version.
    @ivar dropped: messages published here that did not reach the other
        nodes: published while Redis was unreachable, dropped from a full
        queue (oldest first), or published to Redis during an outage or
        after it while fewer nodes were subscribed than before it (the
        number of receivers Redis answers each PUBLISH with tells).
    @ivar unconfirmed: messages sent to Redis whose PUBLISH was never
        answered because the connection broke: they may have reached the
        other nodes or not (not counted in C{dropped}).
    @ivar queued: bytes waiting to be published now.
    @ivar outages: how many times Redis became unreachable.
    @ivar last_outage: how long the last finished outage lasted, in seconds.
    @ivar last_outage_dropped: C{dropped} during the last finished outage.
    @ivar last_outage_unconfirmed: C{unconfirmed} during the last finished
        outage.
    """

    connected: bool = False
    chunks_out: int = 0
    messages_out: int = 0
    bytes_out: int = 0
    chunks_in: int = 0
    messages_in: int = 0
    bytes_in: int = 0
    echoes: int = 0
    rejected: int = 0
    dropped: int = 0
    unconfirmed: int = 0
    queued: int = 0
    outages: int = 0
    last_outage: float | None = None
    last_outage_dropped: int = 0
    last_outage_unconfirmed: int = 0


@implementer(ILineSink)
class _Outbound:
    """
    The bridge's subscription to one shared backplane: what is published on
    it goes to the backplane's Redis channel.
    """

    __slots__ = ("bridge", "channel")

    def __init__(self, bridge: RedisBridge, channel: bytes) -> None:
        self.bridge = bridge
        self.channel = channel

    def deliver(self, data: bytes, count: int) -> None:
        self.bridge._outbound(self.channel, data, count)


@implementer(IStatsSource)
class RedisBridge(Service):
    """
    Shares backplanes between nodes through Redis pub/sub channels.

    For each backplane named in C{names}, what local publishers publish goes
    to the Redis channel C{prefix + name}, and what arrives on that channel
    from other nodes or Redis clients is published on the backplane.  A
    message thus reaches every subscriber of every node once: local ones
    directly, the others through Redis; a node skips its own payloads when
    Redis sends them back, and never sends on what came from Redis.

    While Redis is unreachable each node goes on serving its own publishers
    and subscribers; what is published meanwhile does not cross (it is
    counted in C{stats.dropped}).  The bridge reconnects with jittered
    exponential backoff (L{backplane.retry.backoffPolicy}), subscribes again,
    and logs each outage once when it begins and once when it ends.

    The publishing node counts what did not cross: Redis answers each
    PUBLISH with the number of connections it reached, so once Redis is
    back, what this node publishes before every node that was subscribed
    before the outage has subscribed again is counted too.  The outage ends
    (and is logged, with its figures) once they all have, or
    C{max_delay + timeout} seconds after this node is connected again
    (nodes that have not come back by then are taken to be gone).

    Make it a child of the service whose backplanes it shares::

        bridge = RedisBridge(service, "redis://10.0.0.5:6379/0", names=["NEWS"])
        bridge.setServiceParent(service)

    @ivar nodeId: this node's id in the tag of every payload it publishes.
    @ivar stats: the bridge's L{BridgeStats}.
    """

    log = Logger()

    def __init__(
        self,
        service: BackplaneService,
        url: str = DEFAULT_URL,
        *,
        names: Iterable[str],
        prefix: str = DEFAULT_PREFIX,
        initial_delay: float = 0.5,
        max_delay: float = 30.0,
        queue: int = DEFAULT_QUEUE,
        node_id: str | None = None,
        timeout: float = 10.0,
        endpoint: IStreamClientEndpoint | None = None,
        reactor: Any = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        """
        @param service: the registry of the backplanes to share.
        @param url: the Redis server, C{redis://[[username]:password@]host[:port][/db]}
            (the database number does not matter to pub/sub).
        @param names: the names of the backplanes to share.
        @param prefix: the prefix of their channel names.
        @param initial_delay: seconds before the first reconnection attempt
            (less up to 10% of jitter); the wait doubles after each failure.
        @param max_delay: the longest wait between attempts, in seconds.
        @param queue: bytes of chunks that may wait to be published while
            Redis is slower than the publishers; past it the oldest waiting
            chunks are dropped and counted (as many bytes again may be in
            flight, sent but not yet acknowledged).
        @param node_id: this node's id (default: L{defaultNodeId}); it must
            differ from every other node's.
        @param timeout: seconds Redis has to accept a connection, answer the
            handshake, and answer each PING sent every C{timeout} seconds,
            before the connection is taken for dead and made again.
        @param endpoint: connect through this client endpoint instead of
            C{url}'s host and port (TLS, a UNIX socket...); C{url} still gives
            the username and password.
        @param reactor: the reactor (default: the global one).
        @param random: the source of the retry delays' jitter: floats in
            [0, 1).
        @raise ValueError: a bad URL, node id, delay, timeout or queue size.
        @raise UnknownBackplane: a name that C{service} does not know.
        """
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as globalReactor

            reactor = globalReactor
        if not 0 < initial_delay <= max_delay:
            raise ValueError(
                f"initial_delay ({initial_delay}) must be more than 0 and at most "
                f"max_delay ({max_delay})"
            )
        if queue < 1:
            raise ValueError(f"queue must be at least 1 byte, not {queue}")
        if timeout <= 0:
            raise ValueError(f"timeout must be more than 0, not {timeout}")
        self.address = parseURL(url)
        self.nodeId = defaultNodeId() if node_id is None else node_id
        self._tag = encodeTag(self.nodeId)
        self._node = self.nodeId.encode("ascii")
        self.prefix = prefix
        self.queue = queue
        self.stats = BridgeStats()
        self._reactor = reactor
        self._backplanes: dict[bytes, Backplane] = {}
        for name in names:
            self._backplanes[(prefix + name).encode("utf-8")] = service.get(name)
        self.names = [b.name for b in self._backplanes.values()]
        self._subscriptions: list[Subscription] = []

        self._waiting: deque[tuple[bytes, bytes, int]] = deque()
        self._inflight = 0
        self._flushing: IDelayedCall | None = None
        self._drained: list[Deferred[None]] = []
        self._outageStart: float | None = None
        self._outageLost = 0
        self._outageUnconfirmed = 0
        self._outageDuration = 0.0
        # Other nodes' subscribed connections on each channel, as Redis
        # answered PUBLISH before an outage; and, from an outage's start to
        # its end, the channels on which they have not all come back (None
        # otherwise).
        self._receivers: dict[bytes, int] = {}
        self._awaiting: set[bytes] | None = None
        self._settle: IDelayedCall | None = None
        self._bridged = False
        self._warnedRejected = False

        if endpoint is None:
            endpoint = HostnameEndpoint(reactor, self.address.host, self.address.port,
                                        timeout=timeout)

        self.initialDelay = initial_delay
        self.maxDelay = max_delay
        policy = backoffPolicy(initial_delay, max_delay, random=random)
        self._publisher = Link(
            "publisher", endpoint, Publisher, prepare=self._preparePublisher,
            ready=self._linkReady, down=self._linkDown, retryPolicy=policy, timeout=timeout,
            clock=reactor,
        )
        self._subscriber = Link(
            "subscriber", endpoint, self._buildSubscriber, prepare=self._prepareSubscriber,
            ready=self._linkReady, down=self._linkDown, retryPolicy=policy, timeout=timeout,
            clock=reactor,
        )

    def __repr__(self) -> str:
        return f"<RedisBridge {self.address} node={self.nodeId} names={self.names}>"

    @property
    def connected(self) -> bool:
        """
        Whether both connections to Redis are up and subscribed.
        """
        return self.stats.connected

    def report(self) -> dict[str, object]:
        """
        The bridge's statistics (L{IStatsSource}): the counters of
        L{BridgeStats}; its state is C{"connected"}, C{"unreachable"} or
        C{"stopped"}.
        """
        counters = asdict(self.stats)
        gauges = {key: counters.pop(key) for key in ("connected", "queued", "last_outage",
                                                     "last_outage_dropped",
                                                     "last_outage_unconfirmed")}
        gauges["connected"] = int(gauges["connected"])
        gauges["last_outage"] = gauges["last_outage"] or 0.0
        state = ("stopped" if not self.running
                 else "connected" if self.stats.connected else "unreachable")
        return {
            "name": self.name or "redis",
            "kind": "redis",
            "state": state,
            "counters": counters,
            "gauges": gauges,
            "info": {"url": str(self.address), "prefix": self.prefix, "node": self.nodeId,
                     "shared": ",".join(self.names)},
        }

    # Starting and stopping.

    def startService(self) -> None:
        """
        Subscribe to the shared backplanes and connect to Redis.
        """
        super().startService()
        for channel, backplane in self._backplanes.items():
            self._subscriptions.append(backplane.attach(_Outbound(self, channel), origin=self))
        self._publisher.start()
        self._subscriber.start()

    def stopService(self) -> Deferred[None]:
        """
        Stop bridging: unsubscribe from the backplanes, publish what waits
        (giving Redis up to C{timeout} seconds to acknowledge it), stop
        retrying and close both connections.

        @return: a L{Deferred} that fires once both connections are closed.
        """
        super().stopService()
        if self._settle is not None and self._settle.active():
            self._settle.cancel()
        self._settle = None
        for subscription in self._subscriptions:
            subscription.cancel()
        self._subscriptions = []
        self._flush(everything=True)
        self._dropWaiting()
        if self._inflight:
            drained: Deferred[None] = Deferred()
            self._drained.append(drained)
            drained.addTimeout(self._publisher.timeout, self._reactor)
            drained.addErrback(lambda _: None)
        else:
            drained = succeed(None)

        def close(_: object) -> Deferred[list[None]]:
            return gatherResults([self._publisher.stop(), self._subscriber.stop()])

        return drained.addCallback(close).addCallback(lambda _: None)

    # Publishing to Redis.

    def _outbound(self, channel: bytes, data: bytes, count: int) -> None:
        if not self._publisher.ready:
            self._lose(count)
            return
        self._waiting.append((channel, data, count))
        self.stats.queued += len(data)
        while self.stats.queued > self.queue:
            _, old, lost = self._waiting.popleft()
            self.stats.queued -= len(old)
            self._lose(lost)
        if self._waiting and self._flushing is None:
            # Published on the next turn of the reactor: the chunks that
            # arrive meanwhile join the same PUBLISH.
            self._flushing = self._reactor.callLater(0, self._flush)

    def _flush(self, everything: bool = False) -> None:
        if self._flushing is not None:
            if self._flushing.active():
                self._flushing.cancel()
            self._flushing = None
        protocol = self._publisher.protocol
        if not self._publisher.ready or protocol is None:
            return
        waiting = self._waiting
        # Whether this node's own subscribed connection counts among the
        # receivers Redis answers with.
        selfSubscribed = self._subscriber.ready
        while waiting and (everything or self._inflight < self.queue):
            channel, data, count = waiting.popleft()
            parts, size = [data], len(data)
            while waiting and waiting[0][0] == channel and size + len(waiting[0][1]) <= COALESCE:
                _, more, moreCount = waiting.popleft()
                parts.append(more)
                size += len(more)
                count += moreCount
            self.stats.queued -= size
            payload = self._tag + (data if len(parts) == 1 else b"".join(parts))
            self._inflight += len(payload)
            published = protocol.publish(channel, payload)
            published.addCallbacks(self._published, self._notPublished,
                                   callbackArgs=(len(payload), count, channel, selfSubscribed),
                                   errbackArgs=(len(payload), count))

    def _published(self, receivers: object, size: int, count: int, channel: bytes,
                   selfSubscribed: bool) -> None:
        stats = self.stats
        stats.chunks_out += 1
        stats.messages_out += count
        stats.bytes_out += size
        try:
            reached = int(cast(Any, receivers))
        except (TypeError, ValueError):  # pragma: no cover - Redis answers an integer
            reached = -1
        if reached >= 0:
            self._reached(channel, reached, count, selfSubscribed)
        self._sent(size)

    def _reached(self, channel: bytes, reached: int, count: int, selfSubscribed: bool) -> None:
        """
        Redis gave C{count} messages to C{reached} connections: count them
        as not crossed if, since an outage began, fewer other nodes got them
        than before it; otherwise, learn how many there are.
        """
        # The other nodes: all but this node's own subscribed connection,
        # which may or may not have been subscribed when Redis published if
        # it was not when the PUBLISH was sent.
        fewest = max(reached - 1, 0)
        most = fewest if selfSubscribed else reached
        expected = self._receivers.get(channel)
        if self._outageStart is None and self._awaiting is None:
            if selfSubscribed:
                self._receivers[channel] = fewest
            return
        if expected is None:
            return
        if most < expected:
            self._lose(count)
        elif fewest < expected:
            self._unconfirmed(count)
        elif self._awaiting is not None and self._outageStart is None:
            # Every node is back on this channel.
            self._receivers[channel] = fewest
            self._awaiting.discard(channel)
            if not self._awaiting:
                self._outageOver()

    def _notPublished(self, failure: Failure, size: int, count: int) -> None:
        if self._publisher.ready:
            # Not a lost connection: Redis refused the command.
            self._lose(count)
            self.log.error("Redis at {address} refused to publish: {error}",
                           address=self.address, error=failure.getErrorMessage())
        else:
            # Sent, but the connection broke before Redis answered.
            self._unconfirmed(count)
        self._sent(size)

    def _sent(self, size: int) -> None:
        self._inflight -= size
        if self._waiting and self._flushing is None and self.running:
            self._flush()
        if not self._inflight and self._drained:
            drained, self._drained = self._drained, []
            for d in drained:
                d.callback(None)

    def _lose(self, count: int) -> None:
        self.stats.dropped += count
        self._outageLost += count

    def _unconfirmed(self, count: int) -> None:
        self.stats.unconfirmed += count
        self._outageUnconfirmed += count

    def _dropWaiting(self) -> None:
        while self._waiting:
            self._lose(self._waiting.popleft()[2])
        self.stats.queued = 0

    # Receiving from Redis.

    def _received(self, channel: bytes, payload: bytes) -> None:
        backplane = self._backplanes.get(channel)
        if backplane is None or not self.running:
            return
        stats = self.stats
        decoded = decode(payload)
        if decoded is None:
            stats.rejected += 1
            if not self._warnedRejected:
                self._warnedRejected = True
                self.log.warn(
                    "Ignoring a payload on Redis channel {channel} tagged with an unknown "
                    "wire format: {head!r} (the next ones are only counted, in "
                    "stats.rejected)",
                    channel=channel.decode("utf-8", "replace"), head=payload[:60],
                )
            return
        if decoded.node == self._node:
            stats.echoes += 1
            return
        if not decoded.count:
            return
        stats.chunks_in += 1
        stats.messages_in += decoded.count
        stats.bytes_in += len(payload)
        try:
            backplane.publishLines(decoded.data, decoded.count, origin=self)
        except Exception:
            self.log.failure("Republishing from Redis channel {channel} failed",
                             channel=channel.decode("utf-8", "replace"))

    # The connections.

    def _buildSubscriber(self, **kwargs: Any) -> Subscriber:
        protocol = Subscriber(**kwargs)
        protocol.received = self._received
        return protocol

    def _login(self, protocol: Any) -> Deferred[object]:
        address = self.address
        if address.password is None:
            return succeed(None)
        # txredisapi is untyped: its commands return Deferreds of Any.
        if address.username:
            return cast(Deferred[object],
                        protocol.execute_command("AUTH", address.username, address.password))
        return cast(Deferred[object], protocol.execute_command("AUTH", address.password))

    def _preparePublisher(self, protocol: Any) -> Deferred[object]:
        return self._login(protocol).addCallback(lambda _: protocol.ping())

    def _prepareSubscriber(self, protocol: Any) -> Deferred[object]:
        channels = list(self._backplanes)
        if not channels:
            return self._login(protocol).addCallback(lambda _: protocol.ping())
        # Every (re)connection subscribes again: a new connection has no
        # subscriptions.
        return self._login(protocol).addCallback(lambda _: protocol.subscribe(channels))

    def _linkReady(self, link: Link) -> None:
        if not (self._publisher.ready and self._subscriber.ready):
            return
        self.stats.connected = True
        if self._outageStart is not None:
            self._outageDuration = self._reactor.seconds() - self._outageStart
            self._outageStart = None
            # The outage is over for this node; for the others, once Redis
            # says they are all subscribed again.
            awaiting = {channel for channel, others in self._receivers.items() if others}
            if awaiting:
                self._awaiting = awaiting
                self.log.info(
                    "Redis at {address} is back after {duration:.1f} s: backplanes {names} "
                    "are shared again; what this node publishes is counted until the other "
                    "nodes have subscribed again", address=self.address,
                    duration=self._outageDuration, names=self.names)
                self._settle = self._reactor.callLater(
                    self.maxDelay + self._publisher.timeout, self._outageOver)
            else:
                self._outageOver()
        elif not self._bridged:
            self.log.info(
                "Sharing backplanes {names} through Redis at {address} as node {node}",
                names=self.names, address=self.address, node=self.nodeId,
            )
        self._bridged = True

    def _outageOver(self) -> None:
        """
        Every node subscribed before the outage is back (or the time to wait
        for them is over): log the outage with what did not cross.
        """
        if self._settle is not None and self._settle.active():
            self._settle.cancel()
        self._settle = None
        awaited, self._awaiting = self._awaiting, None
        duration = self._outageDuration
        stats = self.stats
        stats.last_outage = duration
        stats.last_outage_dropped = self._outageLost
        stats.last_outage_unconfirmed = self._outageUnconfirmed
        if awaited is None:
            self.log.info(
                "Redis at {address} is back after {duration:.1f} s: backplanes {names} "
                "are shared again; {lost} messages published on this node meanwhile "
                "did not reach the other nodes ({unconfirmed} more were sent as it went "
                "and may not have)",
                address=self.address, duration=duration, lost=self._outageLost,
                unconfirmed=self._outageUnconfirmed, names=self.names,
            )
        else:
            self.log.info(
                "{every} back on Redis at {address} after its outage of {duration:.1f} s: "
                "{lost} messages published on this node meanwhile did not reach the other "
                "nodes ({unconfirmed} more were sent as it went and may not have)",
                every="Every node is" if not awaited else "Not every node is",
                address=self.address, duration=duration, lost=self._outageLost,
                unconfirmed=self._outageUnconfirmed,
            )
        self._outageLost = self._outageUnconfirmed = 0

    def _linkDown(self, link: Link, why: str) -> None:
        self.stats.connected = False
        if self._awaiting is not None:
            # A new outage before the others were all back from the last.
            self._outageOver()
        if self._outageStart is None:
            self._outageStart = self._reactor.seconds()
            self._outageLost = self._outageUnconfirmed = 0
            self.stats.outages += 1
            self.log.warn(
                "Redis at {address} is unreachable ({why}): backplanes {names} reach "
                "this node's subscribers only until it is back; retrying every "
                "{initial:g} to {maximum:g} s",
                address=self.address, why=why, names=self.names,
                initial=self.initialDelay, maximum=self.maxDelay,
            )
        if link is self._publisher:
            # Counted in this outage: what waited will never be sent.
            self._dropWaiting()
