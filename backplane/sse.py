"""
Server-Sent Events ports (C{protocol = "sse"}): a backplane served as a
C{text/event-stream} to C{curl -N} and to a browser's C{EventSource}.

Any path is served with C{GET} (and C{HEAD}); the stream is:

  - C{retry: 2000} first (an C{EventSource} reconnects 2 s after losing it);
  - one event a message: C{id: EPOCH:SEQ} (when the backplane keeps a
    history) and C{data: payload}.  A payload is sent as it is; a CR in it
    would end the field, so it starts another C{data:} line, which an
    C{EventSource} joins with a newline;
  - C{event: gap} with C{data: ASKED NEXT} when a client resumes and
    messages it asked for are missing (SPEC section 9);
  - a comment every 15 seconds, so that proxies keep an idle stream open.

A client resumes with the C{Last-Event-ID} header (which an C{EventSource}
sends by itself when it reconnects) or a C{last-event-id} query parameter,
exactly as a line client does with C{RESUME}.  A malformed one gets a 400.

Every client is a bounded subscriber like any other (C{max_pending},
C{slow}); there is nothing to publish through it.

Access (SPEC section 11): a request from a web page (one with an C{Origin})
of another origin than the port's own and those of its C{origins} is refused
with 403; an allowed one gets C{Access-Control-Allow-Origin} with its
origin (and every response C{Vary: Origin}), so that the page may read the
stream.  On a port with C{auth = true}, a request must present a token
(C{Authorization: Bearer TOKEN} or C{?token=TOKEN}) that allows the port's
backplane: 401 (with C{WWW-Authenticate: Bearer}) without one or with one
not accepted, 403 beyond its rights.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from backplane.address import describePeer
from backplane.auth.authority import Authority
from backplane.auth.gate import Gate
from backplane.auth.identity import AccessDenied, Identity, quote
from backplane.auth.web import admitRequest, checkRequestOrigin, refusal, requestPeer
from backplane.choice import DEFAULT_MAX_BACKPLANES, ChosenBackplanes, choiceReport, pathName
from backplane.errors import TooManyBackplanes
from backplane.heads import HTTP_ALPN, BoundedChannel, BoundedRequest
from backplane.history import parseId
from backplane.interfaces import ILineSink
from backplane.output import BoundedWriter
from backplane.protocols import BackplaneFactory, Limits
from backplane.resume import Follower
from backplane.service import Backplane, BackplaneService, Gap, Subscription
from backplane.tail import ResponseTransport

RETRY_MILLISECONDS = 2000
HEARTBEAT_INTERVAL = 15.0
_DATA = b"data: "
_ID_LINE = re.compile(rb"^([0-9a-z]{1,32}:[0-9]+) ", re.MULTILINE)


def encodeEvents(data: bytes, count: int) -> bytes:
    """
    The events of a chunk of messages without ids: C{data: payload}, each
    followed by a blank line.

    @param data: complete lines, each ending with C{b"\\n"}.
    @param count: their number (unused: the signature of an encoder for
        L{Backplane.encoded}).
    """
    events = _DATA + data.replace(b"\n", b"\n\n" + _DATA)[:-len(_DATA)]
    if b"\r" in events:
        events = events.replace(b"\r", b"\n" + _DATA)
    return events


def encodeIdEvents(data: bytes, count: int) -> bytes:
    """
    The events of a chunk of messages with ids (lines C{ID payload}):
    C{id: ID}, C{data: payload}, each followed by a blank line.
    """
    events = _ID_LINE.sub(rb"id: \1\n" + _DATA, data.replace(b"\n", b"\n\n"))
    if b"\r" in events:
        events = events.replace(b"\r", b"\n" + _DATA)
    return events


@implementer(ILineSink)
class EventStream:
    """
    One client of an SSE port: a bounded, read-only subscriber whose output
    is a C{text/event-stream} response.
    """

    log = Logger()

    def __init__(self, port: SSEFactory, request: Request,
                 backplane: Backplane | None = None) -> None:
        """
        @param backplane: the backplane streamed (the port's C{subscribe_to}
            by default).
        """
        self.port = port
        self.request = request
        backplane = backplane if backplane is not None else port.subscribeTo
        assert backplane is not None
        self.backplane = backplane
        address = request.getClientAddress()
        self.peer = describePeer(address) if address is not None else "?"
        self.output = BoundedWriter(self, ResponseTransport(request), port.limits,
                                    name=backplane.name, counters=(port.stats, backplane.stats),
                                    budget=backplane.budget,
                                    linger=port.linger)
        self.follower: Follower | None = None
        self._subscription: Subscription | None = None
        self._closing = False

    def start(self, position: str | None) -> None:
        """
        Start the stream: from the history after C{position} if given (and
        the backplane keeps one), or live.

        @raise ValueError: C{position} is not an id.
        """
        request = self.request
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._finished)
        request.write(b"retry: %d\n\n" % RETRY_MILLISECONDS)
        if self.backplane.history is None:
            self._subscription = self.backplane.attach(self)
            return
        self.follower = Follower(self.backplane, self, deliverGap=self.deliverGap,
                                 paused=lambda: self.output.paused, peer=self.peer)
        self.follower.start(position)

    def deliver(self, data: bytes, count: int) -> None:
        """
        Send a chunk of messages as events, within C{max_pending}.
        """
        if self._closing:
            return
        follower = self.follower
        if follower is None:
            self.output.deliver(self.backplane.encoded(data, count, encodeEvents), count)
        elif follower.subscription is not None and follower.subscription.cursor is not None:
            self.output.deliver(encodeIdEvents(data, count), count)  # a replay: its own
        else:
            self.output.deliver(self.backplane.encoded(data, count, encodeIdEvents), count)

    def deliverGap(self, gap: Gap) -> None:
        """
        Tell the client that messages it asked for are missing.
        """
        self.port.stats.gaps += 1
        if not self._closing:
            self.output.deliver(b"event: gap\ndata: " + gap.asked + b" " + gap.next + b"\n\n", 0)

    def heartbeat(self) -> None:
        """
        Send a comment, which a client ignores (unless its connection's
        buffer is full: then there is no need).
        """
        if not self._closing and not self.output.paused:
            self.output.deliver(b":\n\n", 0)

    def outputTooSlow(self) -> None:
        """
        Past C{max_pending} with C{slow = "disconnect"}: nothing more (the
        writer aborts the connection; an C{EventSource} reconnects, and
        resumes where there is a history).
        """
        self._stop()

    def outputCaughtUp(self, missed: int) -> None:
        """
        Caught up after missing messages (C{slow = "drop"}): the writer
        logged it.
        """

    # IPushProducer, for the response: passed on to the writer.

    def pauseProducing(self) -> None:
        self.output.pauseProducing()

    def resumeProducing(self) -> None:
        self.output.resumeProducing()
        if self.follower is not None and not self._closing:
            self.follower.pump()

    def stopProducing(self) -> None:
        pass

    def close(self) -> None:
        """
        End the stream once what waits for the client is written.
        """
        if self._closing:
            return
        self._stop()
        self.output.flush()
        self.request.unregisterProducer()
        self.request.finish()

    def _stop(self) -> None:
        self._closing = True
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self.follower is not None:
            self.follower.cancel()
        self.port.streams.discard(self)

    def _finished(self, result: Failure | None) -> None:
        # The response is done: finished by close(), or its connection lost.
        self._stop()
        self.output.discard()
        self.port.service.release(self.backplane)


def _text(request: Request, code: int, message: str) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return (message + "\n").encode("utf-8")


class EventStreamResource(Resource):
    """
    Every path of an SSE port: C{GET} starts a stream of its backplane,
    once the port's gate lets the request in.
    """

    isLeaf = True

    def __init__(self, port: SSEFactory) -> None:
        super().__init__()
        self.port = port

    def render(self, request: Request) -> bytes | int:
        if not self.port.handshakeDone(request.channel):
            # max_clients were connected while this client sent its request
            # (logged and counted by the port).
            request.setHeader(b"connection", b"close")
            request.channel.persistent = False  # closed once the response is sent
            return _text(request, 503, "max_clients reached: try again later")
        gate = self.port.gate
        # The response depends on the Origin: caches must know.
        request.setHeader(b"vary", b"Origin")
        try:
            origin = checkRequestOrigin(gate, request)
        except AccessDenied as denied:
            return refusal(request, denied)
        if origin is not None:
            # Pages of the origins allowed may read the stream (an
            # EventSource of another origin needs this to read it).
            request.setHeader(b"access-control-allow-origin", origin.encode("latin-1"))
        if request.method == b"OPTIONS":
            # A page's preflight, before a request with an Authorization
            # header (fetch; an EventSource sends none).
            request.setResponseCode(204)
            request.setHeader(b"access-control-allow-methods", b"GET, HEAD")
            request.setHeader(b"access-control-allow-headers", b"authorization, last-event-id")
            request.setHeader(b"access-control-max-age", b"600")
            return b""
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD, OPTIONS")
            return _text(request, 405, "this port serves Server-Sent Events: GET it")
        try:
            identity = admitRequest(gate, request)
        except AccessDenied as denied:
            return refusal(request, denied)
        position = self.position(request)
        backplane: Backplane | None = self.port.subscribeTo
        if self.port.choice is not None:
            chosen = self.choose(self.port.choice, request, identity)
            if isinstance(chosen, bytes):
                return chosen
            backplane = chosen
        assert backplane is not None
        if position is not None and backplane.history is not None and position != "0":
            try:
                parseId(position)
            except ValueError as e:
                self.port.stats.bad_requests += 1
                return _text(request, 400, f"bad Last-Event-ID: {e}")
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        # Nginx buffers a proxied response unless told not to.
        request.setHeader(b"x-accel-buffering", b"no")
        if request.method == b"HEAD":
            self.port.service.release(backplane)
            return b""
        stream = EventStream(self.port, request, backplane)
        self.port.streams.add(stream)
        if position is not None and backplane.history is not None:
            self.port.stats.resumes += 1
        stream.start(position if backplane.history is not None else None)
        return NOT_DONE_YET

    def choose(self, choice: ChosenBackplanes, request: Request,
               identity: Identity | None) -> Backplane | bytes:
        """
        On a port that lists C{backplanes}: the backplane the request's path
        names, created on demand; or the body of a refusal (404 for a name
        the port does not serve, 403 for one the client may not subscribe
        to, 503 past C{max_backplanes}).
        """
        name = pathName(request.path)
        if name is None or not choice.serves(name):
            self.port.stats.bad_requests += 1
            return _text(request, 404, f"no backplane {quote(name or request.path)} "
                                       "on this port")
        try:
            self.port.gate.authorize(identity, subscribe=name, peer=requestPeer(request))
        except AccessDenied as denied:
            return refusal(request, denied)
        try:
            return choice.ensure(name)
        except TooManyBackplanes as e:
            return _text(request, 503, str(e))

    @staticmethod
    def position(request: Request) -> str | None:
        """
        Where the client asks to resume: the C{Last-Event-ID} header, or
        the C{last-event-id} query parameter.
        """
        header = request.getHeader(b"last-event-id")
        if header is None:
            values = (request.args or {}).get(b"last-event-id")
            header = values[-1] if values else None
        if header is None:
            return None
        return header.decode("ascii", "replace").strip()


class _Channel(BoundedChannel):
    """
    An SSE port's HTTP connection: its port counts it, and forgets it when
    it closes.  Its first request ends its handshake (L{SSEFactory.handshakeDone}).
    """

    port: SSEFactory

    def headRefused(self) -> None:
        self.port.stats.bad_heads += 1

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        super().connectionLost(reason)
        self.port.clientGone(self)


class _Site(Site):
    """
    The site of an SSE port: its channels are L{_Channel}s (HTTP/1.1).
    """

    protocol = _Channel  # type: ignore[assignment]
    requestFactory = BoundedRequest


class SSEFactory(BackplaneFactory):
    """
    A Server-Sent Events port of one backplane: a L{BackplaneFactory} (the
    same L{Limits}, C{allow}, C{max_clients}, statistics, C{disconnectAll})
    whose clients speak HTTP, each C{GET} a stream.

    @ivar site: the Twisted web site that parses the clients' requests.
    @ivar streams: the streams open now.
    """

    alpn = HTTP_ALPN

    def __init__(self, service: BackplaneService, *, publish_to: str | None = None,
                 subscribe_to: str | None = None, limits: Limits = Limits(),
                 clock: IReactorTime | None = None,
                 heartbeat: float = HEARTBEAT_INTERVAL,
                 origins: tuple[str, ...] | None = None,
                 authority: Authority | None = None,
                 backplanes: tuple[str, ...] | None = None,
                 max_backplanes: int = DEFAULT_MAX_BACKPLANES) -> None:
        """
        @param origins: the web page origins allowed besides the port's own
            (C{"*"}: every one).
        @param backplanes: instead of C{subscribe_to}: the names and glob
            patterns of the backplanes a client may choose by its request's
            path (C{/chat.room1}); one not declared is created on demand, up
            to C{max_backplanes}.
        @param authority: with C{auth = true}, what decides who a client is
            and what it may do (one per port: its counters are the port's).
        @raise ValueError: C{publish_to} is given, or no C{subscribe_to}.
        """
        if publish_to is not None or (subscribe_to is None) == (backplanes is None):
            raise ValueError("an sse port only serves backplanes: it needs subscribe_to or "
                             "backplanes, and no publish_to")
        self.needsBackplane = backplanes is None
        super().__init__(service, subscribe_to=subscribe_to, limits=limits, authority=authority,
                         clock=clock)
        self.service = service
        self.choice = None if backplanes is None else ChosenBackplanes(
            service, backplanes, max_backplanes=max_backplanes)
        self.gate = Gate(authority, subscribe=subscribe_to, origins=origins, web=True,
                         clock=clock)
        self.site = _Site(EventStreamResource(self))
        self.site.displayTracebacks = False
        self.site.noisy = False
        self.streams: set[EventStream] = set()
        self._heartbeat = LoopingCall(self.heartbeat)
        if clock is not None:
            self._heartbeat.clock = clock
            self.site.reactor = clock
        self._interval = heartbeat

    def portReport(self) -> dict[str, Any]:
        """
        What a port that lists C{backplanes} adds to its report.
        """
        return choiceReport(self.choice)

    def startFactory(self) -> None:
        self._heartbeat.start(self._interval, now=False)

    def stopFactory(self) -> None:
        if self._heartbeat.running:
            self._heartbeat.stop()

    def heartbeat(self) -> None:
        for stream in list(self.streams):
            stream.heartbeat()

    def makeProtocol(self) -> Any:
        return self.site.buildProtocol(None)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        channel: Any = super().buildProtocol(addr)
        if channel is not None:
            # The HTTP channel's factory is its site (for the access log).
            channel.factory = self.site
            channel.port = self
        return channel

    def closeClient(self, protocol: Any) -> None:
        """
        End the client's streams after what is pending for them, then
        close its connection.
        """
        for stream in list(self.streams):
            if stream.request.channel is protocol:
                stream.close()
        protocol.transport.loseConnection()

