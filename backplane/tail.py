"""
The live tail: the monitor's C{/tail/NAME} streams the lines of backplane
C{NAME} to a browser as Server-Sent Events (C{text/event-stream}), read-only.

A tail is a subscriber of the backplane like any network subscriber, with the
same bounds (a L{backplane.output.BoundedWriter}): at most C{max_pending}
bytes wait for it, and past that it misses whole chunks (C{slow = "drop"})
until it catches up, so a slow browser costs nobody anything.  It is an HTTP
C{GET}: there is nothing a browser could publish through it.

The stream (UTF-8, as Server-Sent Events always are):

  - C{retry: 2000} first (an C{EventSource} reconnects 2 s after losing it);
  - for each chunk of lines published, one C{message} event whose data is a
    JSON array of strings, one a line, each decoded from UTF-8 with U+FFFD
    for what is not UTF-8 (lines are bytes; the page shows text).  The array
    is computed once per chunk for every tail of the backplane;
  - an event C{dropped} whose data is a number: the tail missed that many
    lines while it was behind, and has caught up;
  - a comment (C{:}) every 15 seconds, so that proxies keep an idle stream
    open and a browser that went away is noticed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import Request
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from backplane.address import describePeer
from backplane.errors import UnknownBackplane
from backplane.interfaces import ILineSink
from backplane.output import BoundedWriter
from backplane.protocols import Limits, PortStats
from backplane.service import Backplane, BackplaneService, Subscription

# What may wait for one tail: a browser that falls behind misses lines.
TAIL_MAX_PENDING = 256 * 1024
DEFAULT_MAX_TAILS = 16
HEARTBEAT_INTERVAL = 15.0
#: Heartbeats in a row a tail may find its connection full (not read at
#: all) before it is cut off, so that tails nobody reads cannot hold every
#: place of max_tails.
STALLED_BEATS = 2
RETRY_MILLISECONDS = 2000


def encodeEvents(data: bytes, count: int) -> bytes:
    """
    The Server-Sent Event for a chunk of lines: C{data: ["line", ...]}, a
    JSON array of one string a line, each decoded from UTF-8 with U+FFFD in
    place of what is not UTF-8.

    @param data: complete lines, each ending with C{b"\\n"}.
    @param count: their number (unused: the signature of an encoder for
        L{Backplane.encoded}).
    """
    # A newline is never part of a longer character, so decoding the chunk
    # at once replaces exactly what decoding each line would.
    lines = data.decode("utf-8", "replace").split("\n")
    lines.pop()
    # JSON escapes CR and LF, the only bytes that would end an event's line.
    return b"data: " + json.dumps(lines, ensure_ascii=False, separators=(",", ":")).encode(
        "utf-8") + b"\n\n"


class ResponseTransport:
    """
    What the L{BoundedWriter} of a streaming response (a live tail, a
    Server-Sent Events client) writes to and aborts.
    """

    def __init__(self, request: Request) -> None:
        self.request = request

    def write(self, data: bytes) -> None:
        self.request.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.request.write(b"".join(data))

    def abortConnection(self) -> None:
        transport: Any = self.request.channel and self.request.channel.transport
        if transport is not None:
            transport.abortConnection()


@implementer(ILineSink)
class TailClient:
    """
    One browser tailing a backplane: a bounded, read-only subscriber whose
    output is a Server-Sent Events response.

    Its L{output} (a L{BoundedWriter}) is the request's streaming producer:
    the response's channel pauses and resumes it as its connection's buffer
    fills and drains.

    @ivar output: the tail's L{BoundedWriter}.
    """

    log = Logger()

    subscribeTo: Backplane

    def __init__(self, tails: Tails, backplane: Backplane, request: Request) -> None:
        self.tails = tails
        self.subscribeTo = backplane
        self.request = request
        self.limits = tails.limits
        self.portStats = tails.stats
        self.transport = ResponseTransport(request)
        address = request.getClientAddress()
        self.peer = describePeer(address) if address is not None else "?"
        self.output = BoundedWriter(self, self.transport, self.limits, name=backplane.name,
                                    counters=(tails.stats, backplane.stats),
                                    budget=backplane.budget)
        self._subscription: Subscription | None = None
        self._closing = False
        self._stalledBeats = 0

    def start(self) -> None:
        """
        Start the stream and subscribe.
        """
        self.request.registerProducer(self.output, True)
        self.request.notifyFinish().addBoth(self._finished)
        self.transport.write(b"retry: %d\n: tail\n\n" % RETRY_MILLISECONDS)
        # Retained messages are replayed from here, after the preamble.
        self._subscription = self.subscribeTo.attach(self)

    def deliver(self, data: bytes, count: int) -> None:
        """
        Send a chunk of lines as one event, within C{max_pending}.
        """
        if self._closing:
            return
        self.output.deliver(self.subscribeTo.encoded(data, count, encodeEvents), count)

    def heartbeat(self) -> None:
        """
        Send a comment, which a browser ignores (unless the connection's
        buffer is full: then there is no need).
        """
        if self._closing:
            return
        if not self.output.paused:
            self._stalledBeats = 0
            self.output.deliver(b":\n\n", 0)
            return
        self._stalledBeats += 1
        if self._stalledBeats >= STALLED_BEATS:
            self.log.warn("Cutting off the tail of {name} to {peer}: it has read nothing for "
                          "{beats} heartbeats", name=self.subscribeTo.name, peer=self.peer,
                          beats=self._stalledBeats)
            self.tails.stats.slow_disconnects += 1
            self._stop()
            self.output.discard()
            self.transport.abortConnection()

    def outputCaughtUp(self, missed: int) -> None:
        """
        Caught up: tell the page how many lines it did not get.
        """
        if not self._closing:
            self.output.deliver(b"event: dropped\ndata: %d\n\n" % missed, 0)

    def outputTooSlow(self) -> None:
        """
        Not with C{slow = "drop"}; stop the stream if it ever happens.
        """
        self._stop()

    def close(self) -> None:
        """
        End the stream once what waits for the browser is written.
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
        self.tails.gone(self)

    def _finished(self, result: Failure | None) -> None:
        # The response is done: finished by close(), or its connection lost.
        self._stop()
        self.output.discard()


class Tails:
    """
    The tails of a monitor: how many may be open at once, their bounds,
    their counters, their heartbeat; and ending them all when it stops.

    @ivar stats: what all tails did (C{dropped} counts the lines they
        missed, C{accepted} the tails opened, C{refused} those refused
        past C{max_tails}).
    """

    log = Logger()

    def __init__(self, service: BackplaneService, *, enabled: bool = True,
                 max_tails: int = DEFAULT_MAX_TAILS, max_pending: int = TAIL_MAX_PENDING,
                 heartbeat: float = HEARTBEAT_INTERVAL,
                 clock: IReactorTime | None = None) -> None:
        """
        @param service: the registry the backplanes are looked up in.
        @param enabled: whether C{/tail/NAME} serves tails at all.
        @param max_tails: tails open at once; one more is refused (503).
        @param max_pending: bytes that may wait for one tail before it
            misses lines.
        @param heartbeat: seconds between comments sent to every tail.
        @param clock: the time (the reactor by default).
        """
        self.service = service
        self.enabled = enabled
        self.maxTails = max_tails
        self.limits = Limits(max_pending=max_pending, slow="drop")
        self.stats = PortStats()
        self.clients: set[TailClient] = set()
        self._heartbeat = LoopingCall(self.heartbeat)
        if clock is not None:
            self._heartbeat.clock = clock
        self._interval = heartbeat
        self.running = False

    def start(self) -> None:
        """
        Start serving tails, and the heartbeat.
        """
        self.running = True
        self._heartbeat.start(self._interval, now=False)

    def stop(self) -> None:
        """
        Stop the heartbeat and end every tail's stream; refuse new tails.
        """
        self.running = False
        if self._heartbeat.running:
            self._heartbeat.stop()
        for client in list(self.clients):
            client.close()

    def heartbeat(self) -> None:
        for client in list(self.clients):
            client.heartbeat()

    def gone(self, client: TailClient) -> None:
        self.clients.discard(client)

    def open(self, backplane: Backplane, request: Request) -> bytes | int:
        """
        Serve a tail of C{backplane} as the response to C{request}, or
        refuse it (503) if C{max_tails} are open or the monitor is stopping.
        """
        if not self.running or len(self.clients) >= self.maxTails:
            self.stats.refused += 1
            request.setResponseCode(503)
            request.setHeader(b"retry-after", b"10")
            return _text(request, f"too many tails: {self.maxTails} are open; try again later"
                         if self.running else "the service is stopping")
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        # Nginx buffers a proxied response unless told not to.
        request.setHeader(b"x-accel-buffering", b"no")
        client = TailClient(self, backplane, request)
        self.clients.add(client)
        self.stats.accepted += 1
        client.start()
        return NOT_DONE_YET


def _text(request: Request, message: str) -> bytes:
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return (message + "\n").encode("utf-8")


class TailResource(Resource):
    """
    C{/tail/NAME}: the live tail of backplane C{NAME} (percent-encoded in
    the URL), as Server-Sent Events.  An unknown backplane is a 404 naming
    the known ones; C{GET} and C{HEAD} are the only methods (anything else:
    405: a tail is read-only).
    """

    def __init__(self, tails: Tails, counted: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.tails = tails
        self.counted = counted

    def getChild(self, path: bytes, request: Request) -> IResource:
        return _Tail(self, path)

    def render(self, request: Request) -> bytes:
        # /tail itself.
        self.counted()
        request.setResponseCode(404)
        return _text(request, self.which())

    def which(self) -> str:
        names = ", ".join(repr(name) for name in self.tails.service.names()) or "none"
        return f"name a backplane: tail/NAME, NAME percent-encoded (known: {names})"


class _Tail(Resource):
    """
    C{/tail/NAME}.
    """

    isLeaf = True

    def __init__(self, tails: TailResource, name: bytes) -> None:
        super().__init__()
        self.tails = tails
        self.name = name

    def render(self, request: Request) -> bytes | int:
        self.tails.counted()
        if request.method not in (b"GET", b"HEAD"):
            request.setResponseCode(405)
            request.setHeader(b"allow", b"GET, HEAD")
            return _text(request, "a tail is read-only: GET it")
        tails = self.tails.tails
        if not tails.enabled:
            request.setResponseCode(404)
            return _text(request, "the live tail is off ([monitor] tail = false)")
        try:
            name = self.name.decode("utf-8")
        except UnicodeDecodeError:
            name = None
        extra = getattr(request, "postpath", None)
        if name is None or extra or (name == "" and name not in tails.service):
            request.setResponseCode(404)
            return _text(request, self.tails.which())
        try:
            backplane = tails.service.get(name)
        except UnknownBackplane as e:
            request.setResponseCode(404)
            return _text(request, str(e))
        if request.method == b"HEAD":
            request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            request.setHeader(b"cache-control", b"no-store")
            return b""
        return tails.open(backplane, request)
