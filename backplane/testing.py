"""
Helpers for testing your own code against a backplane, under trial or pytest::

    from backplane import BackplaneService
    from backplane.testing import Recorder

    service = BackplaneService()
    news = service.create("NEWS")
    recorder = Recorder.on(news)
    your_code_that_publishes(news)
    assert recorder.messages == [b"hello"]

Everything here is synchronous and deterministic: no reactor runs.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from backplane.service import Backplane, Subscription
from backplane.sources import TimeSource


class Recorder:
    """
    A subscriber that records every message it receives.

    Use it as any callback (C{backplane.subscribe(recorder)}) or attach it
    with L{Recorder.on}.  L{waitFor} gives a L{Deferred} for code that
    publishes asynchronously.

    @ivar messages: the messages received, in order.
    """

    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.subscription: Subscription | None = None
        self._waiters: list[tuple[int, Deferred[list[bytes]]]] = []

    @classmethod
    def on(cls, backplane: Backplane) -> Recorder:
        """
        A new recorder, subscribed to C{backplane}.
        """
        recorder = cls()
        recorder.subscription = backplane.subscribe(recorder)
        return recorder

    def __call__(self, message: bytes) -> None:
        self.messages.append(message)
        ready = [w for w in self._waiters if len(self.messages) >= w[0]]
        for waiter in ready:
            self._waiters.remove(waiter)
            waiter[1].callback(self.messages[: waiter[0]])

    def waitFor(self, count: int) -> Deferred[list[bytes]]:
        """
        A L{Deferred} that fires with the first C{count} messages once they
        have arrived (at once if they already have).
        """
        if len(self.messages) >= count:
            return succeed(self.messages[:count])
        waiter: Deferred[list[bytes]] = Deferred()
        self._waiters.append((count, waiter))
        return waiter

    def clear(self) -> None:
        """
        Forget the messages recorded so far.
        """
        del self.messages[:]

    def cancel(self) -> None:
        """
        Unsubscribe, if L{on} subscribed this recorder.
        """
        if self.subscription is not None:
            self.subscription.cancel()


class IdRecorder:
    """
    A subscriber of a backplane with a history that records each message
    with its id, and each gap: for testing code that resumes::

        history = MemoryHistory(100)
        news = service.create("NEWS", history=history)
        first = IdRecorder.on(news)
        news.publish(b"a")
        last = first.ids[-1]
        first.cancel()
        news.publish(b"b")
        again = IdRecorder.on(news, after=last)
        assert again.messages == [b"b"] and again.gaps == []

    @ivar ids: the ids of the messages received (C{b"EPOCH:SEQ"}), in order.
    @ivar messages: the messages received, in order.
    @ivar gaps: the gaps reported, each C{b"GAP ASKED NEXT"}.
    """

    def __init__(self) -> None:
        self.ids: list[bytes] = []
        self.messages: list[bytes] = []
        self.gaps: list[bytes] = []
        self.subscription: Subscription | None = None

    @classmethod
    def on(cls, backplane: Backplane, after: bytes | str | None = None) -> IdRecorder:
        """
        A new recorder, subscribed to C{backplane} with ids: from the
        history after C{after} (an id, or C{"0"} for everything kept), then
        live; or live only.

        @raise ValueError: the backplane keeps no history, or C{after} is
            not an id.
        """
        recorder = cls()
        recorder.subscription = backplane.subscribe(recorder, ids=True, after=after)
        return recorder

    def __call__(self, id: bytes | None, message: bytes) -> None:
        if id is None:
            self.gaps.append(message)
        else:
            self.ids.append(id)
            self.messages.append(message)

    def cancel(self) -> None:
        """
        Unsubscribe, if L{on} subscribed this recorder.
        """
        if self.subscription is not None:
            self.subscription.cancel()


class AsyncRecorder(Recorder):
    """
    A recorder that acts as a slow, asynchronous consumer: each call returns a
    L{Deferred} that fires only when the test calls L{release}.
    """

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Deferred[None]] = []

    def __call__(self, message: bytes) -> Deferred[None]:  # type: ignore[override]
        super().__call__(message)
        d: Deferred[None] = Deferred()
        self.pending.append(d)
        return d

    def release(self) -> None:
        """
        Fire every Deferred handed out so far.
        """
        pending, self.pending = self.pending, []
        for d in pending:
            d.callback(None)


def connect(
    factory: IProtocolFactory,
    peer: tuple[str, int] = ("127.0.0.1", 40000),
) -> tuple[IProtocol, StringTransport]:
    """
    Build a protocol from a server factory and connect it to a
    L{StringTransport}, as a client at C{peer} would.

    @return: the protocol (feed it with C{dataReceived}) and the transport
        (read what was sent with C{value()}); L{None} is never returned for
        the protocol: a refused connection raises L{AssertionError}.
    """
    address = IPv4Address("TCP", *peer)
    protocol = factory.buildProtocol(address)
    if protocol is None:
        raise AssertionError("the factory refused the connection")
    transport = StringTransport(peerAddress=address)
    protocol.makeConnection(transport)
    return protocol, transport


def sentLines(transport: StringTransport) -> list[bytes]:
    """
    The complete lines written to C{transport} so far, without delimiters.
    """
    data = cast(bytes, transport.value())  # StringTransport.value is unannotated.
    return data.split(b"\n")[:-1]


def disconnect(protocol: IProtocol, transport: StringTransport) -> None:
    """
    Close a connection made by L{connect}, as the client going away would.
    """
    transport.disconnecting = True
    protocol.connectionLost(Failure(ConnectionDone()))



def timeSource(backplane: Backplane, interval: float = 1.0,
               start: float = 0.0) -> tuple[TimeSource, Clock]:
    """
    A started L{TimeSource} driven by a L{Clock} set to C{start} (seconds
    since the epoch): C{clock.advance(interval)} makes it publish the next
    time, and nothing happens unless the test advances the clock.
    """
    clock = Clock()
    clock.advance(start)
    source = TimeSource(backplane, interval, clock=clock)
    source.startService()
    return source, clock
