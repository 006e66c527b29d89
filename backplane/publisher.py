"""
L{Publisher}: a Twisted client for users' own publishers, which sends lines
to a backplane port with C{acks = true} (SPEC section 10) and loses none of
them: every line is kept until the server acknowledges it, in memory or in
a spool folder that survives the process, and resent after a cut
connection, a restart of the server or (with a spool) of the process; the
server skips what it already has.

It is a thin wrapper over the pieces a relay with C{acks} is made of: a
L{Relay} whose L{Outbox} keeps the lines, kept connected by a
L{RelayService} (Twisted's L{ClientService} with
L{backplane.retry.backoffPolicy}).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterable

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from zope.interface import implementer

from backplane.interfaces import IStatsSource
from backplane.outbox import DEFAULT_SPOOL_BYTES, DEFAULT_SPOOL_FSYNC_INTERVAL, Outbox
from backplane.relay import DEFAULT_BUFFER, Relay, RelayFactory, RelayService, RelayStats
from backplane.retry import DEFAULT_INITIAL_DELAY, DEFAULT_MAX_DELAY
from backplane.service import BackplaneService

# The name of the private backplane whose lines the relay sends.
_OUT = "publisher"


@implementer(IStatsSource)
class Publisher(MultiService):
    """
    Publishes lines to a port with C{acks = true}, keeping a connection to it
    and every line until it is acknowledged.  For example::

        publisher = Publisher(clientFromString(reactor, "tcp:host=h:port=1601"),
                              spool="/var/spool/myapp")
        publisher.setServiceParent(application)   # or publisher.startService()
        publisher.publish(b"one line")
        publisher.publishMany([b"two", b"three"])
        yield publisher.whenAcknowledged()        # all three are safe upstream

    Lines published before the service starts, or while the server is away,
    wait, oldest first.  Without a spool, at most C{buffer} lines not
    acknowledged are kept (past it the oldest are dropped, counted in
    C{stats.dropped} and logged), and they are lost with the process; with
    a spool, up to C{spoolBytes} of them are kept in its folder, and a
    process started again with the same folder goes on with the same
    publisher id, resending what was not acknowledged (after a SIGTERM or a
    C{kill -9} alike).  L{stopService} closes the connection and the spool.

    @ivar relay: the L{Relay} that does the work: its L{Outbox}
        (C{relay.outbox}), its state and statistics.
    @ivar connection: the L{RelayService} that keeps it connected.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        *,
        spool: str | None = None,
        buffer: int = DEFAULT_BUFFER,
        spoolBytes: int = DEFAULT_SPOOL_BYTES,
        spoolFsyncInterval: float = DEFAULT_SPOOL_FSYNC_INTERVAL,
        initialDelay: float = DEFAULT_INITIAL_DELAY,
        maxDelay: float = DEFAULT_MAX_DELAY,
        description: str | None = None,
        clock: IReactorTime | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        """
        @param endpoint: where the C{acks = true} port is, e.g. from
            L{clientFromString<twisted.internet.endpoints.clientFromString>}.
        @param spool: a folder (made if missing) to keep the lines in, so
            that they survive the process; L{None}: in memory.
        @param buffer: without a spool, the most lines kept that are not
            acknowledged (at least 1).
        @param spoolBytes: with a spool, the most bytes of its files.
        @param spoolFsyncInterval: with a spool, the most seconds between a
            write and its fsync.
        @param initialDelay: seconds before the first retry of a failed or
            lost connection; the waits double up to C{maxDelay}, with jitter.
        @param maxDelay: the longest wait between retries.
        @param description: the server's name in log lines until connected.
        @param clock: the reactor, for retries and the spool's fsyncs.
        @param random: the jitter's source of floats in [0, 1).
        @raise ValueError: an option out of range.
        @raise StoreError: the spool cannot be opened (another process has
            it, or the folder cannot be made).
        """
        super().__init__()
        registry = BackplaneService()
        registry.create(_OUT)
        factory = RelayFactory(registry, subscribe_to=_OUT, acks=True, buffer=buffer,
                               spool=spool, spool_bytes=spoolBytes,
                               spool_fsync_interval=spoolFsyncInterval,
                               initial_delay=initialDelay, max_delay=maxDelay, clock=clock)
        self.relay: Relay = factory.relay
        self._outbox: Outbox = _outboxOf(self.relay)
        self.connection = RelayService(endpoint, factory, description=description, clock=clock,
                                       random=random)
        self.connection.setServiceParent(self)

    def __repr__(self) -> str:
        return f"<Publisher {self.publisherId} to {self.relay.destination}>"

    # Publishing.

    def publish(self, line: bytes) -> None:
        """
        Publish one line (without its C{b"\\n"}): it is sent now if
        connected, else when connected, and kept until acknowledged.

        @raise TypeError: C{line} is not L{bytes}.
        @raise ValueError: C{line} holds a C{b"\\n"}.
        @raise StoreError: the spool was closed (the service stopped).
        """
        self.relay.deliver(_checked(line) + b"\n", 1)

    def publishMany(self, lines: Iterable[bytes]) -> None:
        """
        Publish many lines at once (one write, one append to the spool).

        @raise TypeError: a line is not L{bytes}; nothing is published.
        @raise ValueError: a line holds a C{b"\\n"}; nothing is published.
        @raise StoreError: the spool was closed (the service stopped).
        """
        checked = [_checked(line) for line in lines]
        if checked:
            self.relay.deliver(b"\n".join(checked) + b"\n", len(checked))

    # What is acknowledged.

    def whenAcknowledged(self) -> Deferred[None]:
        """
        A L{Deferred} that fires once every line published so far is
        acknowledged by the server; it fails with
        L{NotAcknowledged<backplane.errors.NotAcknowledged>} if some of them
        were dropped first (past C{buffer} or C{spoolBytes}), or if the
        service stopped first with a spool (the lines are in the spool, and
        are sent after the next start).
        """
        return self._outbox.whenAcknowledged()

    @property
    def unacknowledged(self) -> int:
        """
        The lines kept now that the server has not acknowledged.
        """
        return self._outbox.unacknowledged

    @property
    def publisherId(self) -> str:
        """
        The publisher id the server knows these lines by (kept in the spool
        across restarts; new with each process without one).
        """
        return self._outbox.publisherId

    @property
    def stats(self) -> RelayStats:
        """
        The statistics (L{RelayStats}): C{acknowledged}, C{resent},
        C{spooled}, C{dropped}, connections...
        """
        return self.relay.stats

    def report(self) -> dict[str, object]:
        """
        The statistics (L{IStatsSource}), kind C{"publisher"}.
        """
        report = self.connection.report()
        report["name"] = self.name or "publisher"
        report["kind"] = "publisher"
        report["info"] = {"endpoint": self.connection.description, "spool": self._outbox.path,
                          "publisher_id": self._outbox.publisherId}
        return report


def _outboxOf(relay: Relay) -> Outbox:
    outbox = relay.outbox
    assert outbox is not None
    return outbox


def _checked(line: bytes) -> bytes:
    if not isinstance(line, bytes):
        raise TypeError(f"a line is bytes, not {type(line).__name__}")
    if b"\n" in line:
        raise ValueError("a line holds no b'\\n': publish each line on its own")
    return line
