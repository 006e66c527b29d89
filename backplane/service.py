"""
The registry of named backplanes, and the backplane itself: a fan-out point.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, overload

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from backplane.errors import BackplaneExists, UnknownBackplane
from backplane.interfaces import ILineSink

Callback = Callable[[bytes], Any]
T = TypeVar("T")


@dataclass
class BackplaneStats:
    """
    Counters of one backplane, for monitoring.  They only ever grow, except
    C{publishers}, which counts the network publishers connected now.
    """

    messages_in: int = 0
    bytes_in: int = 0
    deliveries: int = 0
    dropped: int = 0
    slow_disconnects: int = 0
    errors: int = 0
    publishers: int = 0


class Subscription:
    """
    One subscriber's place on a backplane; L{cancel} removes it.
    """

    __slots__ = ("_backplane", "deliver", "origin")

    def __init__(
        self, backplane: Backplane, deliver: Callable[..., Any], origin: object
    ) -> None:
        self._backplane: Backplane | None = backplane
        self.deliver = deliver
        self.origin = origin

    @property
    def active(self) -> bool:
        """
        C{True} until L{cancel} is called.
        """
        return self._backplane is not None

    def cancel(self) -> None:
        """
        Stop receiving messages.  Calling it again does nothing.
        """
        backplane, self._backplane = self._backplane, None
        if backplane is not None:
            backplane._remove(self)


class Backplane:
    """
    A named fan-out point: every message published reaches every subscriber
    that is subscribed at the time, once, whole, in the order published.

    Two kinds of subscriber share it: a callback, called once per message
    (L{subscribe}), and an L{ILineSink}, handed whole chunks of lines at once
    (L{attach}), which is how network subscribers get one write per chunk.
    """

    log = Logger()

    def __init__(self, name: str, *, retain: int = 0) -> None:
        """
        @param name: the backplane's name in its registry.
        @param retain: how many of the latest messages to replay to each new
            subscriber before live ones (0: none).
        """
        if retain < 0:
            raise ValueError(f"retain must be 0 or more, not {retain}")
        self.name = name
        self.stats = BackplaneStats()
        self._retained: deque[bytes] | None = deque(maxlen=retain) if retain else None
        self._sinks: dict[Subscription, None] = {}
        self._callbacks: dict[Subscription, None] = {}
        # Snapshots iterated by the fan-out, so that a subscriber may cancel
        # (itself or another) while a message is being delivered; rebuilt by
        # the next publish after a change (None), so that subscribing is O(1).
        self._sinkList: tuple[Subscription, ...] | None = ()
        self._callbackList: tuple[Subscription, ...] | None = ()
        # encoded(): each encoder's result for the chunk being handed out.
        self._encoded: dict[Callable[[bytes, int], Any], tuple[bytes, Any]] = {}

    def __repr__(self) -> str:
        return f"<Backplane {self.name!r} subscribers={len(self)}>"

    def __len__(self) -> int:
        """
        The number of subscribers now.
        """
        return len(self._sinks) + len(self._callbacks)

    @property
    def retain(self) -> int:
        """
        How many messages are replayed to a new subscriber.
        """
        return 0 if self._retained is None else self._retained.maxlen or 0

    # Subscribing.

    def subscribe(self, callback: Callback, *, origin: object = None) -> Subscription:
        """
        Call C{callback(message)} for every message published from now on.

        The callback may return a L{Deferred}; L{publish}'s result waits for it.
        A callback that raises (or whose Deferred fails) is logged and stays
        subscribed; the other subscribers are not disturbed.

        @param origin: messages published with this same origin are not
            delivered to this subscriber (a client does not hear itself).
        """
        subscription = Subscription(self, callback, _originOf(origin))
        if self._retained:
            for message in tuple(self._retained):
                self._call(subscription, message)
        self._callbacks[subscription] = None
        self._callbackList = None
        return subscription

    def attach(self, sink: ILineSink, *, origin: object = None) -> Subscription:
        """
        Hand every chunk of messages published from now on to C{sink.deliver}.

        @param origin: chunks published with this same origin are not handed
            to this sink (a client does not hear itself).
        """
        subscription = Subscription(self, ILineSink(sink).deliver, _originOf(origin))
        if self._retained:
            self._hand(subscription, b"".join(m + b"\n" for m in self._retained),
                       len(self._retained))
            self._encoded.clear()
        self._sinks[subscription] = None
        self._sinkList = None
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        if subscription in self._sinks:
            del self._sinks[subscription]
            self._sinkList = None
        else:
            del self._callbacks[subscription]
            self._callbackList = None

    # Publishing.

    def publish(self, message: bytes) -> Deferred[int]:
        """
        Deliver one message to every current subscriber.

        @param message: a line, without its C{b"\\n"} delimiter.
        @return: a L{Deferred} firing with the number of subscribers the
            message was handed to, once every Deferred a subscriber callback
            returned has fired.
        @raise TypeError: C{message} is not L{bytes}.
        @raise ValueError: C{message} contains C{b"\\n"}.
        """
        _check(message)
        return self._fanout(message + b"\n", 1, None, [message], wait=True)

    def publishMany(self, messages: Iterable[bytes]) -> Deferred[int]:
        """
        Deliver many messages at once, in order: the fast path for a batch.

        Each network subscriber receives the whole batch in one write.

        @return: a L{Deferred} firing, once every Deferred a subscriber
            callback returned has fired, with the number of subscribers the
            batch was handed to.
        @raise TypeError: a message is not L{bytes}.
        @raise ValueError: a message contains C{b"\\n"}.
        """
        batch = list(messages)
        for message in batch:
            _check(message)
        if not batch:
            return succeed(0)
        data = b"\n".join(batch) + b"\n"
        return self._fanout(data, len(batch), None, batch, wait=True)

    def publishLines(self, data: bytes, count: int | None = None, *,
                     origin: object = None) -> int:
        """
        Deliver a chunk of complete lines, as read from the network.

        This is the fast path used by protocols and relays: C{data} is handed
        unchanged to every line sink, and split into messages only if a
        callback subscriber or C{retain} needs them.  Nothing waits for
        callbacks' Deferreds (their failures are logged).

        @param data: one or more messages, each followed by C{b"\\n"}.
        @param count: the number of messages in C{data}, if the caller knows.
        @param origin: the publisher; subscribers with the same origin are
            skipped.
        @return: the number of subscribers the chunk was handed to.
        """
        if not data:
            return 0
        if data[-1:] != b"\n":
            raise ValueError("publishLines takes complete lines, each ending with b'\\n'")
        if count is None:
            count = data.count(b"\n")
        return self._fanout(data, count, origin, None, wait=False)

    @overload
    def _fanout(self, data: bytes, count: int, origin: object,
                lines: list[bytes] | None, wait: Literal[True]) -> Deferred[int]: ...

    @overload
    def _fanout(self, data: bytes, count: int, origin: object,
                lines: list[bytes] | None, wait: Literal[False]) -> int: ...

    def _fanout(self, data: bytes, count: int, origin: object,
                lines: list[bytes] | None, wait: bool) -> Deferred[int] | int:
        stats = self.stats
        stats.messages_in += count
        stats.bytes_in += len(data)
        reached = 0
        sinks = self._sinkList
        if sinks is None:
            sinks = self._sinkList = tuple(self._sinks)
        callbacks = self._callbackList
        if callbacks is None:
            callbacks = self._callbackList = tuple(self._callbacks)
        for subscription in sinks:
            if subscription.origin is not origin:
                reached += 1
                try:
                    subscription.deliver(data, count)
                except Exception:
                    self._failed(Failure(), subscription)
        if self._encoded:
            self._encoded.clear()
        waiting: list[Deferred[object]] = []
        if callbacks or self._retained is not None:
            if lines is None:
                lines = data.split(b"\n")
                lines.pop()
            if self._retained is not None:
                self._retained.extend(lines[-self._retained.maxlen:])  # type: ignore[operator]
            for subscription in callbacks:
                if subscription.origin is not origin:
                    reached += 1
                    for message in lines:
                        result = self._call(subscription, message)
                        if result is not None and wait:
                            waiting.append(result)
        stats.deliveries += reached * count
        if not wait:
            return reached
        if not waiting:
            return succeed(reached)
        return gatherResults(waiting).addCallback(lambda _: reached)

    #: Aliases: the snake_case spellings of earlier releases, kept for the
    #: code that calls them.
    publish_many = publishMany
    publish_lines = publishLines

    def encoded(self, data: bytes, count: int, encoder: Callable[[bytes, int], T]) -> T:
        """
        C{encoder(data, count)}, computed once per chunk however many line
        sinks ask for it.

        For sinks that send every chunk in another form, the same for all
        of them (WebSocket frames, for instance): the first sink handed a
        chunk encodes it, the others handed that same chunk get the same
        result.  Results are keyed by the encoder and the chunk object's
        identity, and forgotten once the chunk has been handed to every sink.

        @param data: the chunk a sink's C{deliver} was handed.
        @param count: its number of messages.
        @param encoder: a function of C{(data, count)}, and the key: pass
            the same one (e.g. a module-level function) every time.
        """
        cached = self._encoded.get(encoder)
        if cached is not None and cached[0] is data:
            result: T = cached[1]
            return result
        result = encoder(data, count)
        self._encoded[encoder] = (data, result)
        return result

    def _hand(self, subscription: Subscription, data: bytes, count: int) -> None:
        try:
            subscription.deliver(data, count)
        except Exception:
            self._failed(Failure(), subscription)

    def _call(self, subscription: Subscription, message: bytes) -> Deferred[object] | None:
        """
        Call one callback subscriber, isolating its failure.

        @return: a Deferred that fires (never fails) when the callback's own
            Deferred does, or L{None} if the callback was synchronous.
        """
        try:
            result = subscription.deliver(message)
        except Exception:
            self._failed(Failure(), subscription)
            return None
        if isinstance(result, Deferred):
            return result.addErrback(self._failed, subscription)
        return None

    def _failed(self, failure: Failure, subscription: Subscription) -> None:
        self.stats.errors += 1
        self.log.failure(
            "Subscriber {subscriber!r} of backplane {name} failed",
            failure, subscriber=subscription.deliver, name=self.name,
        )


def _check(message: object) -> None:
    if not isinstance(message, bytes):
        raise TypeError(f"a message must be bytes, not {type(message).__name__}")
    if b"\n" in message:
        raise ValueError("a message is one line: it must not contain b'\\n'")


def _originOf(origin: object) -> object:
    # A subscriber without an origin gets one of its own, so that no publisher
    # (not even one publishing with origin=None) is mistaken for it.
    return object() if origin is None else origin


class BackplaneService(MultiService):
    """
    The registry of named backplanes, and the parent service of every port,
    source, sink and relay that uses them.

    C{name in service} and L{names} speak of backplanes; iterating the service
    yields its child services, as for any L{MultiService}.
    """

    log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self._backplanes: dict[str, Backplane] = {}

    def stopService(self) -> Deferred[None]:
        """
        Stop the child services one after the other, the last added first.

        Unlike L{MultiService}, which stops its children all at once, this
        lets the inputs (ports, relays, clocks, added last) stop before the
        outputs (file sinks, added first) flush and close.
        """
        Service.stopService(self)
        return Deferred.fromCoroutine(self._stopChildren())

    async def _stopChildren(self) -> None:
        for child in reversed(list(self)):
            try:
                await maybeDeferred(child.stopService)
            except Exception:
                self.log.failure("Error stopping {service}", service=child)

    def create(self, name: str, *, retain: int = 0) -> Backplane:
        """
        Register and return a new backplane.

        @raise BackplaneExists: a backplane of that name exists already.
        """
        if name in self._backplanes:
            raise BackplaneExists(f"a backplane named {name!r} exists already")
        backplane = self._backplanes[name] = Backplane(name, retain=retain)
        return backplane

    def get(self, name: str) -> Backplane:
        """
        Return the backplane registered under C{name}.

        @raise UnknownBackplane: there is none (a L{KeyError}).
        """
        try:
            return self._backplanes[name]
        except KeyError:
            raise UnknownBackplane(name, self._backplanes) from None

    def __contains__(self, name: object) -> bool:
        return name in self._backplanes

    def names(self) -> list[str]:
        """
        The names of every backplane, sorted.
        """
        return sorted(self._backplanes)

    def backplanes(self) -> list[Backplane]:
        """
        Every backplane, sorted by name.
        """
        return [self._backplanes[name] for name in self.names()]
