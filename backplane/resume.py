"""
Subscribers that resume: ports with C{ids = true} (SPEC section 9).

A L{Follower} feeds one subscriber from its backplane's history and then
live, whatever the subscriber speaks (lines, WebSocket, Server-Sent
Events); L{ResumingProtocol} is the line client of an C{ids = true} port,
which may send C{RESUME ID} as its first line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from backplane._types import defaultReactor
from backplane.auth.authority import Authority
from backplane.interfaces import ILineSink
from backplane.protocols import BackplaneFactory, BackplaneProtocol, Limits
from backplane.service import Backplane, BackplaneService, Gap, Subscription

#: The most bytes of history read for a subscriber at once.
REPLAY_CHUNK = 64 * 1024

#: The most chunks of history handed to one subscriber in one turn of the
#: reactor: then it lets the others (and the publishers) have theirs.
REPLAY_BURST = 4

#: Seconds an C{ids = true} line client has to send C{RESUME} before it is
#: taken to want live messages only (it misses none published meanwhile).
RESUME_WAIT = 0.25

#: The longest first line (C{RESUME ID}) a line client may send.
MAX_CONTROL_LINE = 128


class Follower:
    """
    Feeds one subscriber of a backplane with a history: first what it
    missed, read from the history as fast as the subscriber takes it (a
    replay holds no memory here and stalls nobody), then live messages,
    all with their ids.

    The subscriber provides C{deliver(data, count)} for messages (lines
    C{b"ID payload\\n"}) and C{deliverGap(gap)} for a L{Gap}; C{paused()}
    says whether its output is full, and whoever owns it calls L{pump} when
    it has room again.
    """

    log = Logger()

    def __init__(self, backplane: Backplane, sink: ILineSink, *,
                 deliverGap: Callable[[Gap], None], paused: Callable[[], bool],
                 origin: object = None, peer: str = "?",
                 clock: IReactorTime | None = None) -> None:
        self.backplane = backplane
        self.sink = sink
        self.deliverGap = deliverGap
        self.paused = paused
        self.origin = origin
        self.peer = peer
        self.clock = clock
        self.subscription: Subscription | None = None
        self._later: IDelayedCall | None = None

    def start(self, position: bytes | str | None = None, *, since: int | None = None) -> None:
        """
        Start from C{position} (what the client sent: an id, or C{"0"}), or
        from SEQ C{since}, or live.

        @raise ValueError: C{position} is not an id.
        """
        self.subscription, gap = self.backplane.follow(self.sink, position, since=since,
                                                       origin=self.origin)
        if gap is not None:
            self._gap(gap)
        self.pump()

    def pump(self) -> None:
        """
        Hand the subscriber history while it has room, until it is live: at
        most L{REPLAY_BURST} chunks in one turn of the reactor, so that a
        long replay to a fast reader never stalls the rest of the service.
        """
        self._later = None
        subscription = self.subscription
        burst = REPLAY_BURST
        while subscription is not None and subscription.cursor is not None and not self.paused():
            if not burst:
                clock = self.clock if self.clock is not None else defaultReactor()
                self._later = clock.callLater(0, self.pump)
                return
            burst -= 1
            pulled = subscription.pull(REPLAY_CHUNK)
            if pulled is None:
                break
            if isinstance(pulled, Gap):
                self._gap(pulled)
            else:
                self.sink.deliver(*pulled)
            subscription = self.subscription

    def _gap(self, gap: Gap) -> None:
        self.log.warn(
            "Subscriber {peer} of backplane {name} asked for {asked}: messages are missing, "
            "it resumes at {next}", peer=self.peer, name=self.backplane.name,
            asked=gap.asked[:64].decode("ascii", "replace"), next=gap.next.decode("ascii"))
        self.deliverGap(gap)

    def cancel(self) -> None:
        """
        Stop: hand the subscriber nothing more.
        """
        subscription, self.subscription = self.subscription, None
        if subscription is not None:
            subscription.cancel()
        if self._later is not None and self._later.active():
            self._later.cancel()
        self._later = None


class ResumingProtocol(BackplaneProtocol):
    """
    A client of an C{ids = true} line port: it receives C{ID payload}
    lines, and may send C{RESUME ID} (or C{RESUME 0}) as its first line.

    Until its first line (or for L{RESUME_WAIT} seconds) it is handed
    nothing; then it gets, from the history, what it asked for, or, if it
    asked for nothing, every message published since it connected, and
    then live ones.  A malformed first line gets one C{ERR reason} line
    and the connection is closed.  What it sends after its first line is
    read and discarded.
    """

    log = Logger()

    def __init__(self, backplane: Backplane, *, limits: Limits = Limits(),
                 clock: IReactorTime | None = None) -> None:
        super().__init__(subscribe_to=backplane, limits=limits)
        self.clock = clock
        self.follower: Follower | None = None
        self._since = 0
        self._waiting: IDelayedCall | None = None
        self._asked = False

    def subscribe(self, backplane: Backplane) -> None:
        assert backplane.history is not None
        self._since = backplane.history.last
        self.follower = Follower(backplane, self, deliverGap=self.deliverGap,
                                 paused=self._outputPaused, origin=self, peer=self.peer,
                                 clock=self.clock)
        clock = self.clock if self.clock is not None else defaultReactor()
        self._waiting = clock.callLater(RESUME_WAIT, self._start, None)

    def _outputPaused(self) -> bool:
        return self.output is None or self.output.paused

    def _start(self, position: bytes | None) -> None:
        self._waiting = None
        if self.follower is None or self._closing:
            return
        if position is None:
            self.follower.start(since=self._since)
            return
        try:
            self.follower.start(position)
        except ValueError as e:
            self.refuse(f"bad RESUME: {e}")
            return
        self.portStats.resumes += 1

    def readData(self, data: bytes) -> None:
        if self._asked:
            return
        self.framer.dataReceived(data)
        if not self._asked and len(self.framer.buffered) > MAX_CONTROL_LINE:
            self.refuse("the first line is too long for RESUME")

    def linesReceived(self, data: bytes) -> None:
        if self._asked:
            return
        self._asked = True
        self.framer.discard()
        line = data.split(b"\n", 1)[0]
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()
        self._waiting = None
        if self.follower is None:
            # Not joined yet (a TLS handshake): nothing can be asked for.
            self.refuse("RESUME before the connection is ready")
            return
        if self.follower.subscription is not None:
            self.refuse("RESUME must be the first line, sent at once")
            return
        verb, _, position = line.partition(b" ")
        if verb != b"RESUME":
            self.refuse("expected RESUME ID or RESUME 0")
            return
        if len(line) > MAX_CONTROL_LINE:
            self.refuse("the first line is too long for RESUME")
            return
        self._start(position)

    def lineTooLong(self, length: int) -> None:
        self.refuse("the first line is too long for RESUME")

    def refuse(self, reason: str) -> None:
        """
        Send C{ERR reason} and close the connection.
        """
        self._asked = True
        self.log.info("Refusing {peer}: {reason}", peer=self.peer, reason=reason)
        self.portStats.bad_requests += 1
        if self.output is not None:
            self.output.deliver(b"ERR " + reason.encode("ascii", "replace") + b"\n", 0)
        else:
            self.transport.write(b"ERR " + reason.encode("ascii", "replace") + b"\n")
        self.close()

    def deliverGap(self, gap: Gap) -> None:
        """
        Tell the client that messages it asked for are missing.
        """
        self.portStats.gaps += 1
        if self.output is not None:
            self.output.deliver(b"GAP " + gap.asked + b" " + gap.next + b"\n", 0)

    def close(self) -> None:
        self._stop()
        super().close()

    def connectionLost(self, reason: Any = None) -> None:
        self._stop()
        super().connectionLost(reason)

    def _stop(self) -> None:
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()
        self._waiting = None
        if self.follower is not None:
            self.follower.cancel()

    def outputTooSlow(self) -> None:
        self._stop()
        super().outputTooSlow()

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if self.follower is not None:
            self.follower.pump()


class ResumingFactory(BackplaneFactory):
    """
    Serves L{ResumingProtocol}: an C{ids = true} port of a backplane with
    a history.
    """

    def __init__(self, service: BackplaneService, *, publish_to: str | None = None,
                 subscribe_to: str | None = None, limits: Limits = Limits(),
                 authority: Authority | None = None,
                 clock: IReactorTime | None = None) -> None:
        """
        @param authority: as for L{BackplaneFactory}: C{AUTH} comes before
            C{RESUME}.
        @raise ValueError: C{publish_to} is given, or C{subscribe_to} has no
            history.
        """
        if publish_to is not None or subscribe_to is None:
            raise ValueError("an ids port only subscribes: it needs subscribe_to, "
                             "and no publish_to")
        super().__init__(service, subscribe_to=subscribe_to, limits=limits, authority=authority,
                         clock=clock)
        assert self.subscribeTo is not None
        if self.subscribeTo.history is None:
            raise ValueError(f"backplane {subscribe_to!r} keeps no history: it has no ids")
        self.clock = clock

    def makeProtocol(self) -> ResumingProtocol:
        assert self.subscribeTo is not None
        return ResumingProtocol(self.subscribeTo, limits=self.limits, clock=self.clock)
