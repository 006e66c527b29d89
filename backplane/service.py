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

from backplane.auth.glob import Glob, compileGlob
from backplane.budget import (
    DEFAULT_MAX_PENDING_TOTAL,
    DEFAULT_MAX_UNFINISHED_TOTAL,
    PendingBudget,
    UnfinishedBudget,
)
from backplane.errors import BackplaneExists, TooManyBackplanes, UnknownBackplane
from backplane.history import History, formatId, resume, withIds
from backplane.interfaces import ILineSink

Callback = Callable[[bytes], Any]
T = TypeVar("T")

#: The most publisher ids whose marks a backplane without a history keeps.
MAX_MARKS = 100_000

# The most bytes of history a callback subscriber's replay reads at once.
_REPLAY_CHUNK = 256 * 1024


@dataclass
class BackplaneStats:
    """
    Counters of one backplane, for monitoring.  They only ever grow, except
    C{publishers}, which counts the network publishers connected now.

    C{resumes} counts subscribers that resumed from the history,
    C{replayed} the messages handed to them from it, and C{gaps} the times
    one was told that messages it asked for are missing.
    """

    messages_in: int = 0
    bytes_in: int = 0
    deliveries: int = 0
    dropped: int = 0
    slow_disconnects: int = 0
    errors: int = 0
    publishers: int = 0
    resumes: int = 0
    replayed: int = 0
    gaps: int = 0


@dataclass(frozen=True)
class Gap:
    """
    Messages a subscriber asked for are missing: it gets C{next} next.

    @ivar asked: the position the subscriber had, as it gave it (an id, or
        an id it had reached when the history lost what followed).
    @ivar next: the id of the next message it gets (C{EPOCH:SEQ}).
    """

    asked: bytes
    next: bytes


class Subscription:
    """
    One subscriber's place on a backplane; L{cancel} removes it.

    @ivar ids: whether it is handed messages with their ids.
    @ivar cursor: while a subscriber with ids catches up from the history,
        the SEQ of the last message it was handed; L{None} once it gets live
        messages.
    """

    __slots__ = ("_backplane", "cursor", "deliver", "ids", "origin")

    def __init__(
        self, backplane: Backplane, deliver: Callable[..., Any], origin: object,
        ids: bool = False,
    ) -> None:
        self._backplane: Backplane | None = backplane
        self.deliver = deliver
        self.origin = origin
        self.ids = ids
        self.cursor: int | None = None

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

    def pull(self, maxBytes: int) -> tuple[bytes, int] | Gap | None:
        """
        The next chunk of history for a subscriber that catches up (see
        L{Backplane.follow}): C{(data, count)}, messages with their ids, at
        most C{maxBytes} (or one message, if it is longer); a L{Gap} if the
        history has lost messages it had not reached yet; or L{None} once
        it has caught up, and is live from now on.
        """
        backplane = self._backplane
        if backplane is None or self.cursor is None:
            return None
        return backplane._pull(self, maxBytes)


class Backplane:
    """
    A named fan-out point: every message published reaches every subscriber
    that is subscribed at the time, once, whole, in the order published.

    Two kinds of subscriber share it: a callback, called once per message
    (L{subscribe}), and an L{ILineSink}, handed whole chunks of lines at once
    (L{attach}), which is how network subscribers get one write per chunk.

    @ivar budget: the service's bound on what waits for all subscribers
        together (a L{PendingBudget}), on which network subscribers' writers
        count what waits for them.
    """

    log = Logger()

    #: Called with the backplane when its last subscriber leaves, for one
    #: its registry created on demand (L{BackplaneService.ensure}), which is
    #: then forgotten; L{None} for any other.
    onEmpty: Callable[[Backplane], None] | None = None

    def __init__(self, name: str, *, retain: int = 0, history: History | None = None,
                 budget: PendingBudget | None = None) -> None:
        """
        @param name: the backplane's name in its registry.
        @param retain: how many of the latest messages to replay to each new
            subscriber before live ones (0: none).
        @param history: where its messages are kept with their ids
            (L{backplane.history.MemoryHistory}, L{backplane.history.DiskStore}),
            for subscribers that resume (L{follow}); L{None}: no history, no ids.
        @param budget: the bound on what waits for the subscribers of every
            backplane of the service together, which their writers count on
            (L{budget}); L{None}: one of its own, with the default bound.
        """
        if retain < 0:
            raise ValueError(f"retain must be 0 or more, not {retain}")
        self.name = name
        self.history = history
        self.budget = PendingBudget(DEFAULT_MAX_PENDING_TOTAL) if budget is None else budget
        self.stats = BackplaneStats()
        self._retained: deque[bytes] | None = deque(maxlen=retain) if retain else None
        self._sinks: dict[Subscription, None] = {}
        self._callbacks: dict[Subscription, None] = {}
        # Snapshots iterated by the fan-out, so that a subscriber may cancel
        # (itself or another) while a message is being delivered; rebuilt by
        # the next publish after a change (None), so that subscribing is O(1).
        self._sinkList: tuple[Subscription, ...] | None = ()
        self._callbackList: tuple[Subscription, ...] | None = ()
        # Line sinks handed messages with their ids, once live.
        self._idSinks: dict[Subscription, None] = {}
        self._idSinkList: tuple[Subscription, ...] | None = ()
        # mark(): publishers' high-water marks, without a history.
        self._marks: dict[str, int] = {}
        # encoded(): each encoder's result for the chunk being handed out.
        self._encoded: dict[Callable[[bytes, int], Any], tuple[bytes, Any]] = {}

    def __repr__(self) -> str:
        return f"<Backplane {self.name!r} subscribers={len(self)}>"

    def __len__(self) -> int:
        """
        The number of subscribers now.
        """
        return (len(self._sinks) + len(self._callbacks) + len(self._idSinks) + self._catchingUp
                + self._represented)

    def __bool__(self) -> bool:
        """
        A backplane is true even with no subscriber (C{len} 0), so that
        C{backplane or default} never picks the default for an idle one.
        """
        return True

    _catchingUp = 0
    # represent(): the subscribers that sinks standing for several count
    # besides themselves, all told, and each such sink's.
    _represented = 0
    _representing: dict[Subscription, int] | None = None

    def represent(self, subscription: Subscription, subscribers: int) -> None:
        """
        Count the sink of C{subscription} as C{subscribers} subscribers, in
        C{len} and in the number a publish reaches: a sink that hands each
        chunk on to that many (a port's
        L{LingerGroup<backplane.output.LingerGroup>}).  Its deliveries are
        its own to count (C{stats.deliveries} counts one a chunk for it).

        @param subscribers: 1 or more.
        """
        if not subscription.active:
            return
        representing = self._representing
        if representing is None:
            representing = self._representing = {}
        extra = subscribers - 1
        self._represented += extra - representing.get(subscription, 0)
        if extra:
            representing[subscription] = extra
        else:
            representing.pop(subscription, None)

    @property
    def retain(self) -> int:
        """
        How many messages are replayed to a new subscriber.
        """
        return 0 if self._retained is None else self._retained.maxlen or 0

    # Publishers' high-water marks (acknowledged publishing).

    def mark(self, publisherId: str) -> int:
        """
        How many lines of publisher C{publisherId} this backplane has
        published (0 for an id it does not know): kept in its history's
        store when it has one, so that it survives restarts; in memory (the
        last L{MAX_MARKS} ids) otherwise.
        """
        if self.history is not None:
            return self.history.mark(publisherId)
        return self._marks.get(publisherId, 0)

    def setMark(self, publisherId: str, count: int) -> None:
        """
        Record that C{count} lines of publisher C{publisherId} are published.
        """
        if self.history is not None:
            self.history.setMark(publisherId, count)
            return
        marks = self._marks
        marks.pop(publisherId, None)
        marks[publisherId] = count
        if len(marks) > MAX_MARKS:
            del marks[next(iter(marks))]

    # Subscribing.

    def subscribe(self, callback: Callable[..., Any], *, origin: object = None, ids: bool = False,
                  after: bytes | str | None = None) -> Subscription:
        """
        Call C{callback(message)} for every message published from now on.

        The callback may return a L{Deferred}; L{publish}'s result waits for it.
        A callback that raises (or whose Deferred fails) is logged and stays
        subscribed; the other subscribers are not disturbed.

        @param origin: messages published with this same origin are not
            delivered to this subscriber (a client does not hear itself).
        @param ids: call C{callback(id, message)} instead, with each
            message's id (C{b"EPOCH:SEQ"}); the backplane needs a history.
        @param after: first call it with every message of the history after
            this id (C{"0"}: everything kept), at once, then with live ones;
            needs C{ids}.  A gap (see L{follow}) is reported as a call
            C{callback(None, b"GAP asked next")}.
        @raise ValueError: C{ids} or C{after} without a history, or a
            malformed C{after}.
        """
        if (ids or after is not None) and self.history is None:
            raise ValueError(f"backplane {self.name!r} keeps no history: its messages have no ids")
        if after is not None and not ids:
            raise ValueError("after= needs ids=True")
        subscription = Subscription(self, callback, _originOf(origin), ids)
        if after is not None:
            self._replayTo(subscription, after)
        elif self._retained:
            for message in tuple(self._retained):
                self._call(subscription, message)
        self._callbacks[subscription] = None
        self._callbackList = None
        return subscription

    def _replayTo(self, subscription: Subscription, after: bytes | str) -> None:
        history = self.history
        assert history is not None
        decision = resume(history, after)
        if decision.gap:
            asked = after.encode("ascii", "replace") if isinstance(after, str) else after
            self._call(subscription, None, b"GAP " + asked + b" "
                       + formatId(history.epoch, decision.nextSeq))
        cursor = decision.nextSeq - 1
        while cursor < history.last:
            data, count, first = history.read(cursor, _REPLAY_CHUNK)
            if not count:
                break
            for i, message in enumerate(data.split(b"\n")[:count]):
                self._call(subscription, formatId(history.epoch, first + i), message)
            cursor = first + count - 1

    def retainedChunk(self) -> tuple[bytes, int] | None:
        """
        What a new subscriber is handed first (the C{retain} latest
        messages) as a chunk and its number of messages, or L{None}.
        """
        retained = self._retained
        if not retained:
            return None
        return b"".join(m + b"\n" for m in retained), len(retained)

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

    def follow(self, sink: ILineSink, position: bytes | str | None = None, *,
               since: int | None = None,
               origin: object = None) -> tuple[Subscription, Gap | None]:
        """
        Hand C{sink} the messages of the history after C{position}, then
        live ones, all with their ids: each line C{b"EPOCH:SEQ payload"}.

        Without a C{position} the sink gets live messages only.  With one
        (an id, or C{"0"} for everything the history keeps) it catches up
        first: it is handed nothing live, and pulls the history itself with
        L{Subscription.pull} (as fast as it can write, so a long replay
        holds no memory and stalls nobody) until that returns L{None}; then
        it is live, with no message missed or repeated in between.

        @param since: instead of a C{position}: a SEQ of the current epoch
            (e.g. L{History.last} when a client connected) to catch up
            from, for a subscriber that must miss nothing published since
            then; not counted as a resume.
        @return: the subscription, and the L{Gap} if something the client
            asked for is missing (an id older than the oldest kept, of
            another epoch, or not yet reached).
        @raise ValueError: no history, or C{position} is not an id.
        """
        history = self.history
        if history is None:
            raise ValueError(f"backplane {self.name!r} keeps no history: its messages have no ids")
        subscription = Subscription(self, ILineSink(sink).deliver, _originOf(origin), True)
        gap = None
        if position is None:
            if since is None or since >= history.last:
                self._live(subscription)
            else:
                subscription.cursor = since
                self._catchingUp += 1
            return subscription, gap
        decision = resume(history, position)
        if decision.gap:
            asked = position.encode("ascii", "replace") if isinstance(position, str) else position
            gap = Gap(asked, formatId(history.epoch, decision.nextSeq))
            self.stats.gaps += 1
        self.stats.resumes += 1
        subscription.cursor = decision.nextSeq - 1
        self._catchingUp += 1
        return subscription, gap

    def _live(self, subscription: Subscription) -> None:
        if subscription.cursor is not None:
            subscription.cursor = None
            self._catchingUp -= 1
        self._idSinks[subscription] = None
        self._idSinkList = None

    def _pull(self, subscription: Subscription, maxBytes: int) -> tuple[bytes, int] | Gap | None:
        history = self.history
        cursor = subscription.cursor
        assert history is not None and cursor is not None
        if cursor >= history.last:
            self._live(subscription)
            return None
        if cursor < history.first - 1:
            # The history dropped what this subscriber had not reached.
            asked = formatId(history.epoch, cursor) if cursor else b"0"
            subscription.cursor = history.first - 1
            self.stats.gaps += 1
            return Gap(asked, formatId(history.epoch, history.first))
        data, count, first = history.read(cursor, maxBytes)
        if not count:  # pragma: no cover - cursor < last, so there is one
            self._live(subscription)
            return None
        subscription.cursor = first + count - 1
        self.stats.replayed += count
        return withIds(history.epoch, first, data, count), count

    def _remove(self, subscription: Subscription) -> None:
        if self._representing:
            self._represented -= self._representing.pop(subscription, 0)
        if subscription in self._sinks:
            del self._sinks[subscription]
            self._sinkList = None
        elif subscription in self._idSinks:
            del self._idSinks[subscription]
            self._idSinkList = None
        elif subscription in self._callbacks:
            del self._callbacks[subscription]
            self._callbackList = None
        elif subscription.cursor is not None:
            subscription.cursor = None
            self._catchingUp -= 1
        if self.onEmpty is not None and not len(self) and not self.stats.publishers:
            self.onEmpty(self)

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
                     origin: object = None, mark: tuple[str, int] | None = None) -> int:
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
        @param mark: C{(publisherId, count)}: this chunk ends that
            publisher's first C{count} lines (L{setMark}), kept with the
            chunk in the history (acknowledged publishing).
        @return: the number of subscribers the chunk was handed to.
        """
        if not data:
            return 0
        if data[-1:] != b"\n":
            raise ValueError("publishLines takes complete lines, each ending with b'\\n'")
        if count is None:
            count = data.count(b"\n")
        if mark is not None:
            if self.history is None:
                self.setMark(*mark)
            else:
                self._mark = mark
        return self._fanout(data, count, origin, None, wait=False)

    # A mark to keep with the next chunk (publishLines to _fanout).
    _mark: tuple[str, int] | None = None

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
        history = self.history
        if history is not None:
            mark, self._mark = self._mark, None
            first = history.append(data, count, mark) if mark is not None \
                else history.append(data, count)
            idSinks = self._idSinkList
            if idSinks is None:
                idSinks = self._idSinkList = tuple(self._idSinks)
            if idSinks:
                withId = withIds(history.epoch, first, data, count)
                for subscription in idSinks:
                    if subscription.origin is not origin:
                        reached += 1
                        try:
                            subscription.deliver(withId, count)
                        except Exception:
                            self._failed(Failure(), subscription)
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
                    for i, message in enumerate(lines):
                        if subscription.ids:
                            assert history is not None
                            result = self._call(subscription, formatId(history.epoch, first + i),
                                                message)
                        else:
                            result = self._call(subscription, message)
                        if result is not None and wait:
                            waiting.append(result)
        stats.deliveries += reached * count
        reached += self._represented
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

    def _call(self, subscription: Subscription, *args: object) -> Deferred[object] | None:
        """
        Call one callback subscriber, isolating its failure.

        @return: a Deferred that fires (never fails) when the callback's own
            Deferred does, or L{None} if the callback was synchronous.
        """
        try:
            result = subscription.deliver(*args)
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


class Watch:
    """
    A wish to hear of every backplane created from now on whose name
    matches a Redis glob pattern (L{BackplaneService.watch}), such as a
    C{PSUBSCRIBE}; L{cancel} ends it.
    """

    __slots__ = ("_service", "created", "pattern")

    def __init__(self, service: BackplaneService, pattern: str,
                 created: Callable[[Backplane], object]) -> None:
        self._service: BackplaneService | None = service
        self.pattern = pattern
        self.created = created

    def cancel(self) -> None:
        """
        Hear of no more backplanes.  Calling it again does nothing.
        """
        service, self._service = self._service, None
        if service is not None:
            service._unwatch(self)


class BackplaneService(MultiService):
    """
    The registry of named backplanes, and the parent service of every port,
    source, sink and relay that uses them.

    C{name in service} and L{names} speak of backplanes; iterating the service
    yields its child services, as for any L{MultiService}.

    @ivar budget: the bound on what waits for all the subscribers of all its
        backplanes together (a L{PendingBudget}), shared by its backplanes.
    @ivar unfinished: the bound on the unfinished lines (WebSocket messages,
        Redis requests) that all the clients of its ports, and its relays'
        connections upstream, hold together (an L{UnfinishedBudget}), shared
        by those connections.
    """

    log = Logger()

    def __init__(self, *, budget: PendingBudget | None = None,
                 unfinished: UnfinishedBudget | None = None) -> None:
        """
        @param budget: the bound on what waits for all the subscribers of
            all its backplanes together (C{[limits] max_pending_total});
            L{None}: the default bound (L{DEFAULT_MAX_PENDING_TOTAL}).
        @param unfinished: the bound on the unfinished lines all the clients
            of its ports, and its relays' connections upstream, hold
            together (C{[limits] max_unfinished_total});
            L{None}: the default bound (L{DEFAULT_MAX_UNFINISHED_TOTAL}).
        """
        super().__init__()
        self._backplanes: dict[str, Backplane] = {}
        # Backplanes created on demand (ensure), forgotten once empty: who
        # each was created for, and how many each owner has.
        self._owners: dict[Backplane, object] = {}
        self._onDemand: dict[object, int] = {}
        # watch(): the watches of each pattern, and the pattern compiled.
        self._watches: dict[str, tuple[Glob, dict[Watch, None]]] = {}
        self.budget = PendingBudget(DEFAULT_MAX_PENDING_TOTAL) if budget is None else budget
        self.unfinished = (UnfinishedBudget(DEFAULT_MAX_UNFINISHED_TOTAL) if unfinished is None
                           else unfinished)

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
        for backplane in self.backplanes():
            if backplane.history is not None:
                try:
                    await backplane.history.close()
                except Exception:
                    self.log.failure("Error closing the history of {name}", name=backplane.name)

    def create(self, name: str, *, retain: int = 0, history: History | None = None) -> Backplane:
        """
        Register and return a new backplane (see L{Backplane} for the
        options).  Its C{history} is closed when this service stops, after
        every child service.

        @raise BackplaneExists: a backplane of that name exists already.
        """
        if name in self._backplanes:
            raise BackplaneExists(f"a backplane named {name!r} exists already")
        backplane = self._backplanes[name] = Backplane(name, retain=retain, history=history,
                                                       budget=self.budget)
        return backplane

    @property
    def onDemand(self) -> int:
        """
        How many backplanes created on demand (L{ensure}) exist now.
        """
        return len(self._owners)

    def onDemandFor(self, owner: object) -> int:
        """
        How many backplanes created on demand for C{owner} exist now.
        """
        return self._onDemand.get(owner, 0)

    def ensure(self, name: str, *, limit: int, owner: object = None) -> Backplane:
        """
        The backplane C{name}, created on demand if there is none: a
        backplane without history or retained messages, forgotten (removed
        from the registry) as soon as its last subscriber leaves while no
        publisher is connected (see L{release}).  Every
        L{Watch} whose pattern matches the name hears of it (L{watch})
        before this returns.  A caller that does not subscribe to it (a
        publisher) calls L{release} when done with it.

        @param limit: the most backplanes created on demand for C{owner}
            that may exist at once.
        @param owner: what the backplane is created for (a port), whose
            C{limit} it counts against.
        @raise TooManyBackplanes: there is none, and C{limit} backplanes
            created on demand for C{owner} exist already.
        """
        backplane = self._backplanes.get(name)
        if backplane is not None:
            return backplane
        if self.onDemandFor(owner) >= limit:
            raise TooManyBackplanes(name, limit)
        backplane = self._backplanes[name] = Backplane(name, budget=self.budget)
        self._onDemand[owner] = self._onDemand.get(owner, 0) + 1
        self._owners[backplane] = owner
        backplane.onEmpty = self._forget
        for glob, watches in list(self._watches.values()):
            if glob.match(name):
                for watch in list(watches):
                    watch.created(backplane)
        return backplane

    def release(self, backplane: Backplane) -> None:
        """
        Forget C{backplane} if it was created on demand and has neither a
        subscriber nor a publisher connected (C{stats.publishers}): one
        L{ensure} created for a publisher that is done, say.  Any other is
        kept.
        """
        if backplane.onEmpty is not None and not len(backplane) \
                and not backplane.stats.publishers:
            self._forget(backplane)

    def _forget(self, backplane: Backplane) -> None:
        if self._backplanes.get(backplane.name) is backplane:
            del self._backplanes[backplane.name]
        if backplane in self._owners:
            owner = self._owners.pop(backplane)
            self._onDemand[owner] -= 1
            if not self._onDemand[owner]:
                del self._onDemand[owner]
        backplane.onEmpty = None

    def watch(self, pattern: str, created: Callable[[Backplane], object]) -> Watch:
        """
        Call C{created(backplane)} for each backplane that L{ensure} creates
        from now on whose name matches the Redis glob C{pattern}.

        Names are matched when a backplane is created, once for each
        distinct pattern watched, never when a message is published: many
        watches of a few patterns cost publishers nothing.  The backplanes
        that exist already are the caller's to look at (L{backplanes}).
        """
        entry = self._watches.get(pattern)
        if entry is None:
            entry = self._watches[pattern] = (compileGlob(pattern), {})
        watch = Watch(self, pattern, created)
        entry[1][watch] = None
        return watch

    def _unwatch(self, watch: Watch) -> None:
        entry = self._watches.get(watch.pattern)
        if entry is not None:
            entry[1].pop(watch, None)
            if not entry[1]:
                del self._watches[watch.pattern]

    def watched(self, name: str) -> bool:
        """
        Whether a watched pattern matches C{name}: a backplane of that name
        created on demand would have subscribers.
        """
        return any(glob.match(name) for glob, _ in self._watches.values())

    @property
    def patterns(self) -> int:
        """
        The number of distinct patterns watched now.
        """
        return len(self._watches)

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
