"""
WebSocket ports: the clients of a port speak WebSocket (RFC 6455, through
autobahn) instead of lines, so that a web page can subscribe and publish.

A WebSocket client is a publisher and/or a subscriber exactly as a line
client is (L{backplane.protocols.BackplaneProtocol}), with the same limits;
only the framing differs:

  - Each message a subscriber receives is one WebSocket message of one
    frame: a text frame when the line is valid UTF-8, a binary frame
    otherwise.  A chunk of lines goes out in one write, encoded once for all
    the WebSocket subscribers of the backplane (L{Backplane.encoded}).
  - Each message a client sends (text or binary) is split into lines as a
    line client's data is: on C{\\n}, one trailing C{\\r} removed from each
    line; the end of the message ends its last line, so C{b"a"} and
    C{b"a\\n"} are the one line C{a}, and an empty message is one empty line.
    The lines of one message are published together.

The opening handshake's request may hold at most L{MAX_HEAD_BYTES} bytes
of head in at most L{MAX_HEADERS} header lines (431 otherwise), and must be
done within the port's C{handshake_timeout}.  A refused request is logged
once, briefly, and its bytes are never echoed back.

Before the upgrade (SPEC section 11), a request from a web page of another
origin than the port's own and those of its C{origins} is refused with 403,
and on a port with C{auth = true} a request without an accepted token
(C{?token=TOKEN}, or the subprotocols C{backplane} and the token) with 401,
one whose token does not allow the port's backplanes with 403.
"""

from __future__ import annotations

import struct
from typing import Any

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol, parseHttpHeader
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.interfaces import (
    IAddress,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from backplane.address import describePeer, peerCommonName
from backplane.auth.authority import Authority
from backplane.auth.gate import Gate
from backplane.auth.identity import AccessDenied, Identity, quote
from backplane.auth.wire import SUBPROTOCOL, subprotocolToken
from backplane.choice import DEFAULT_MAX_BACKPLANES, ChosenBackplanes, choiceReport, pathName
from backplane.errors import TooManyBackplanes
from backplane.framing import LineFramer
from backplane.heads import HTTP_ALPN, MAX_HEAD_BYTES, MAX_HEADERS, shortRepr
from backplane.history import parseId
from backplane.interfaces import ILineSink
from backplane.output import BoundedWriter
from backplane.protocols import BackplaneFactory, Limits
from backplane.service import Backplane, BackplaneService, Gap, Subscription

# Close codes (RFC 6455 7.4.1).
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009

_OPEN = WebSocketProtocol.STATE_OPEN
# backplane's own log lines (a client's log attribute is autobahn's).
_log = Logger()
_LIMITS = Limits()

# The header of a final, unmasked, uncompressed frame (RFC 6455 5.2): FIN and
# the opcode (1: text, 2: binary), then the payload length in 7, 7+16 or
# 7+64 bits.  A server's frames are never masked, so the same bytes serve
# every client.
_TEXT, _BINARY = 0x81, 0x82
_SHORT_TEXT = [bytes((_TEXT, n)) for n in range(126)]
_SHORT_BINARY = [bytes((_BINARY, n)) for n in range(126)]
_MEDIUM = struct.Struct("!BBH")
_LONG = struct.Struct("!BBQ")


def encodeFrames(data: bytes, count: int) -> bytes:
    """
    The WebSocket frames a server sends for a chunk of lines: one message
    of one frame a line, without its C{\\n}; a text frame if the line is
    valid UTF-8, a binary frame otherwise.

    @param data: complete lines, each ending with C{b"\\n"}.
    @param count: their number (unused: the signature of an encoder for
        L{Backplane.encoded}).
    """
    lines = data.split(b"\n")
    lines.pop()
    parts: list[bytes] = []
    append = parts.append
    # A chunk that is all valid UTF-8 is valid UTF-8 line by line (a newline
    # is never part of a longer character): one check for the whole chunk.
    allText = _isText(data)
    for line in lines:
        n = len(line)
        if allText or _isText(line):
            append(_SHORT_TEXT[n] if n < 126 else _header(_TEXT, n))
        else:
            append(_SHORT_BINARY[n] if n < 126 else _header(_BINARY, n))
        append(line)
    return b"".join(parts)


_UPGRADE_BODY = b"This is a WebSocket port: connect with a WebSocket client (ws://).\n"

#: The response to a request that is not a WebSocket upgrade.
UPGRADE_REQUIRED = (
    b"HTTP/1.1 426 Upgrade Required\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade, close\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"\r\n" % len(_UPGRADE_BODY)
) + _UPGRADE_BODY


def _statusReason(denied: AccessDenied) -> str:
    """
    A refusal's reason as the reason phrase of an HTTP status line: ASCII.
    """
    return denied.reason.encode("ascii", "backslashreplace").decode("ascii")


def _header(opcode: int, length: int) -> bytes:
    if length < 0x10000:
        return _MEDIUM.pack(opcode, 126, length)
    return _LONG.pack(opcode, 127, length)


def _isText(data: bytes) -> bool:
    if data.isascii():
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@implementer(ILineSink, IPushProducer)
class WebSocketClient(WebSocketServerProtocol):
    """
    One WebSocket client of a port: it may publish, subscribe, or both, with
    the semantics and limits of a line client (see the module's docstring
    for the framing).

    It joins its backplanes when the WebSocket opening handshake is done.
    Its C{factory} is autobahn's (the WebSocket options and timers), its
    C{port} the L{WebSocketFactory} that counts it.  Each message is framed
    by its L{framer} (a L{LineFramer}); what it is sent goes through its
    L{output} (a L{BoundedWriter}), to which, as its transport's streaming
    producer, it passes L{pauseProducing} and L{resumeProducing} on.

    @ivar framer: the client's L{LineFramer}.
    @ivar output: the client's L{BoundedWriter}, once connected.
    """

    # Once connected: a TCP, TLS or UNIX transport (or a StringTransport).
    transport: Any
    output: BoundedWriter

    def __init__(self, port: WebSocketFactory, publish_to: Backplane | None = None,
                 subscribe_to: Backplane | None = None, limits: Limits = _LIMITS) -> None:
        super().__init__()
        self.port = port
        self.portStats = port.stats
        self.publishTo = publish_to
        self.subscribeTo = subscribe_to
        self.limits = limits
        self.framer = LineFramer(self, limits.max_line_length)
        self._subscription: Subscription | None = None
        self._closing = False
        self._publishing = False
        # With ids (port.ids): what feeds it from the history, and where
        # the client asked to resume (?resume=ID).
        self.follower: Any = None
        self._resume: str | None = None
        # Who the client proved to be, on a port with auth.
        self.identity: Identity | None = None
        self._originChecked = False
        # A refusal the port's gate (or its max_clients) logged already.
        self._refusalLogged = False
        # On a port whose clients choose their backplane: the one chosen.
        self.chosen: Backplane | None = None
        # Bytes of the message being received, kept until it ends; and
        # what the client holds on the service's bound (see unfinished).
        self._messageBytes = 0
        self._unfinished = 0

    @property
    def unfinished(self) -> int:
        """
        The bytes of an unfinished message (and of a frame's or a
        handshake's head) the client holds on the service's bound on
        unfinished input, as of its last read.
        """
        return self._unfinished

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        held = 0 if self._closing else len(self.data) + self._messageBytes
        before = self._unfinished
        if held != before:
            self._unfinished = held
            self.port.service.unfinished.update(self, before, held)

    def _releaseUnfinished(self) -> None:
        before, self._unfinished = self._unfinished, 0
        self._messageBytes = 0
        if before:
            self.port.service.unfinished.update(self, before, 0)

    def _discardMessage(self) -> None:
        """
        The connection is gone in the middle of a message the client
        publishes (a fragment without FIN, a frame cut short, whatever
        ended it: a reset, a Close frame, the server going away): count
        the payload received of it, never published, in C{discarded_bytes}.

        Not counted: a message autobahn refused (past the port's bound on
        a message, invalid UTF-8, a protocol error), which failed the
        connection and would never have been published; what a client
        that does not publish sends, which is never kept; and a message
        already counted by L{overUnfinished}, which forgot it.
        """
        if self._messageBytes and not self.failedByMe:
            self.portStats.discarded_bytes += self._messageBytes
        self._messageBytes = 0

    def overUnfinished(self) -> None:
        """
        All clients together hold more than C{max_unfinished_total} of
        unfinished input, and this one holds the most: log it, forget its
        unfinished message (never published, counted in
        C{discarded_bytes}), and close the connection (after a Close
        frame, 1008: policy violation, once the handshake is done).
        """
        length = self._unfinished
        _log.warn(
            "Disconnecting {peer}: its unfinished message of {length} bytes is the longest, "
            "and all clients together hold more than max_unfinished_total ({limit} bytes) "
            "of unfinished input; it was not published",
            peer=self.peer or "?", length=length, limit=self.port.service.unfinished.limit)
        self.portStats.discarded_bytes += length
        self._closing = True
        self._stopSubscribing()
        self._releaseUnfinished()
        kept = getattr(self, "message_data", None)
        if kept:
            kept.clear()
        if self.state == _OPEN:
            self.sendCloseFrame(code=POLICY_VIOLATION,
                                reasonUtf8=b"unfinished input over the server's bound")
        self.data = b""
        # Closed on purpose, and logged above: not an unclean drop for
        # autobahn to log again, nor a close handshake to wait for.
        self.wasClean = True
        self.dropConnection(abort=False)

    @property
    def dropped(self) -> int:
        """
        Messages this client missed as a slow subscriber (C{slow = "drop"}).
        """
        return self.output.dropped

    def connectionMade(self) -> None:
        super().connectionMade()
        self.peer = describePeer(self.transport.getPeer())
        backplane = self.subscribeTo
        self.output = BoundedWriter(
            self, self.transport, self.limits,
            name="?" if backplane is None else backplane.name,
            counters=(self.portStats,) if backplane is None else (self.portStats, backplane.stats),
            budget=self.port.service.budget,
            linger=self.port.linger)
        # A producer for max_pending; registered for every client, since
        # autobahn's dropConnection unregisters the transport's producer
        # whoever it is.
        self.transport.registerProducer(self, True)

    def processHandshake(self) -> None:
        """
        Check the C{Origin} of the opening handshake's request (403 if it
        may not connect) before autobahn reads the request, so that every
        C{Origin} refused, malformed ones included, is refused, counted and
        logged by the port's gate, in its words.
        """
        if not self._originChecked:
            end = self.data.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
            if end < 0:
                if len(self.data) >= MAX_HEAD_BYTES:
                    self._headTooBig(f"a request head of more than {MAX_HEAD_BYTES} bytes")
                return  # the rest of the request is on its way
            if self.data.count(b"\r\n", 0, end) > MAX_HEADERS:
                self._headTooBig(f"more than {MAX_HEADERS} header lines")
                return
            self._originChecked = True
            try:
                self._checkOrigin(self.data[:end + 4])
            except AccessDenied as denied:
                self._refusalLogged = True
                self.failHandshake(_statusReason(denied), denied.status)
                return
        super().processHandshake()

    def _headTooBig(self, what: str) -> None:
        self._originChecked = True
        self.data = b""
        self.portStats.bad_heads += 1
        _log.warn("Refused {peer}'s WebSocket handshake: {what} (431)",
                  peer=self.peer or "?", what=what)
        self.failHandshake("Request Header Fields Too Large", 431)

    def failHandshake(self, reason: str, code: int = 400,
                      responseHeaders: Any = None) -> None:
        """
        Refuse the opening handshake: a short HTTP response, then close.

        A request that is not a WebSocket upgrade (C{curl}, a browser's
        address bar) gets a complete C{426 Upgrade Required}: C{Upgrade:
        websocket}, the version spoken, a length and a line that says what
        the port is.  Unlike autobahn's, it logs the refusal once (unless
        the port's gate did), and neither the log nor the response holds
        more than a few dozen bytes of what the client sent.
        """
        if len(reason) > 100:
            reason = reason[:60] + "..."
        reason = reason.encode("ascii", "backslashreplace").decode("ascii")
        if not self._refusalLogged and code != 431:
            self._refusalLogged = True
            _log.warn("Refused {peer}'s WebSocket handshake: {code} {reason}",
                      peer=self.peer or "?", code=code, reason=shortRepr(reason))
        self.wasNotCleanReason = reason
        if code == 426:
            self.sendData(UPGRADE_REQUIRED)
        else:
            self.sendHttpErrorResponse(code, reason, responseHeaders)
        # Refused on purpose, and logged above: not an unclean drop for
        # autobahn to log again.
        self.wasClean = True
        self.dropConnection(abort=False)

    def _checkOrigin(self, head: bytes) -> None:
        try:
            _, headers, counts = parseHttpHeader(head)
        except Exception:
            return  # autobahn refuses a malformed request (400)
        gate = self.port.gate
        peer = self.peer or "?"
        key = "origin" if "origin" in headers else "sec-websocket-origin"  # hybi < 13
        if counts.get(key, 0) > 1:
            denied = AccessDenied("more than one Origin header", 403, code="origin")
            gate.refused(denied, peer=peer)
            raise denied
        scheme = "https" if ISSLTransport.providedBy(self.transport) else "http"
        gate.checkOrigin(headers.get(key), headers.get("host"), scheme, peer=peer)

    def onConnect(self, request: ConnectionRequest) -> str | None:
        """
        The opening handshake's request, its C{Origin} checked already: on a
        port with C{auth}, check its token (401, or 403 beyond its rights);
        on an C{ids = true} port, take C{?resume=ID} (refusing a malformed
        one with 400).

        @return: the subprotocol chosen: C{backplane} if the client offered
            it, none otherwise.
        """
        gate = self.port.gate
        if gate.auth:
            tokens = request.params.get("token")
            token = tokens[-1] if tokens else subprotocolToken(request.protocols)
            try:
                self.identity = gate.admit(token, commonName=peerCommonName(self.transport),
                                           peer=self.peer or "?")
            except AccessDenied as denied:
                self._refusalLogged = True
                raise ConnectionDeny(denied.status, _statusReason(denied)) from None
        if self.port.choice is not None:
            self._choose(self.port.choice, request.path)
        chosen = SUBPROTOCOL if SUBPROTOCOL in request.protocols else None
        if self.port.ids:
            values = request.params.get("resume")
            if values:
                position = values[-1]
                if position != "0":
                    try:
                        parseId(position)
                    except ValueError as e:
                        self.portStats.bad_requests += 1
                        raise ConnectionDeny(400, f"bad resume: {e}") from None
                self._resume = position
        if not self.port.handshakeDone(self):
            # Logged and counted as refused by the port.
            self._refusalLogged = True
            raise ConnectionDeny(503, "max_clients reached")
        return chosen

    def _choose(self, choice: ChosenBackplanes, path: str) -> None:
        """
        On a port that lists C{backplanes}: the backplane the request's path
        names is the one this client publishes to and subscribes to (each
        only if its token allows, on a port with C{auth}).

        @raise ConnectionDeny: 404 for a name the port does not serve, 403
            for one the client may neither publish to nor subscribe to, 503
            past C{max_backplanes}.
        """
        name = pathName(path)
        if name is None or not choice.serves(name):
            self.portStats.bad_requests += 1
            raise ConnectionDeny(404, f"no backplane {quote(name or path)} on this port")
        identity = self.identity
        publish = identity is None or identity.permissions.mayPublish(name)
        subscribe = identity is None or identity.permissions.maySubscribe(name)
        if not (publish or subscribe):
            denied = AccessDenied(f"may not use {quote(name)}", 403, code="forbidden")
            self.port.gate.refused(denied, peer=self.peer or "?")
            self._refusalLogged = True
            raise ConnectionDeny(403, _statusReason(denied))
        try:
            backplane = choice.ensure(name)
        except TooManyBackplanes as e:
            raise ConnectionDeny(503, str(e)) from None
        self.chosen = backplane
        self.publishTo = backplane if publish else None
        self.subscribeTo = backplane if subscribe else None

    def onOpen(self) -> None:
        if self._closing:
            return
        if self.publishTo is not None:
            self.publishTo.stats.publishers += 1
            self._publishing = True
        backplane = self.subscribeTo
        if backplane is None:
            return
        if not self.port.ids:
            self._subscription = backplane.attach(self, origin=self)
            return
        from backplane.resume import Follower

        self.follower = Follower(backplane, self, deliverGap=self.deliverGap,
                                 paused=lambda: self.output.paused, origin=self,
                                 peer=self.peer or "?")
        if self._resume is not None:
            self.portStats.resumes += 1
        self.follower.start(self._resume)

    def deliverGap(self, gap: Gap) -> None:
        """
        Tell the client that messages it asked for are missing: a message
        C{GAP ASKED NEXT}.
        """
        self.portStats.gaps += 1
        if self.state == _OPEN:
            self.output.deliver(encodeFrames(b"GAP " + gap.asked + b" " + gap.next + b"\n", 1), 0)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closing = True
        self._discardMessage()
        self._releaseUnfinished()
        self._stopSubscribing()
        self.output.discard()  # what waited, released from the service's bound
        if self._publishing and self.publishTo is not None:
            self.publishTo.stats.publishers -= 1
            self._publishing = False
        if self.chosen is not None:
            self.port.service.release(self.chosen)
            self.chosen = None
        super().connectionLost(reason)
        self.port.clientGone(self)

    def goAway(self) -> None:
        """
        Close the connection gently: a Close frame (1001, going away) after
        what is pending, then the client's reply ends the connection.
        """
        self._closing = True
        self._stopSubscribing()
        self.output.flush()
        if self.state == _OPEN:
            self.sendCloseFrame(code=GOING_AWAY, reasonUtf8=b"server going away")
        else:
            self.transport.loseConnection()

    # Publishing: messages in, through the framer (a LinesReceiver).

    def onMessageFrameData(self, payload: bytes) -> None:
        # What a client that does not publish sends is read and discarded,
        # not kept until its message ends.
        if self.publishTo is not None and not self._closing:
            self._messageBytes += len(payload)
            super().onMessageFrameData(payload)

    def onMessageEnd(self) -> None:
        # Whole from here on: published, never counted as discarded, even
        # if the connection were lost while it is.
        self._messageBytes = 0
        super().onMessageEnd()

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        # autobahn refuses a message over maxMessagePayloadSize from its
        # frame's header, before reading it, and closes with 1009.
        if self.wasMaxMessagePayloadSizeExceeded and not self._closing:
            self._closing = True
            self._refused(self.message_data_total_length)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.publishTo is not None and not self._closing:
            self.framer.messageReceived(payload)

    def linesReceived(self, data: bytes) -> None:
        """
        The lines of one message: publish them together.
        """
        backplane = self.publishTo
        if backplane is None:
            return
        count = data.count(b"\n")
        self.portStats.messages_in += count
        self.portStats.bytes_in += len(data)
        backplane.publishLines(data, count, origin=self)

    def lineTooLong(self, length: int) -> None:
        """
        A line of a message is longer than C{max_line_length}: none of the
        message is published; close with 1009 (message too big).
        """
        self._closing = True
        self._refused(length)
        self.sendCloseFrame(code=MESSAGE_TOO_BIG, reasonUtf8=b"line too long")

    def _refused(self, length: int) -> None:
        self.portStats.overlong += 1
        self.log.warn(
            "Disconnecting {peer}: a line of {length} bytes or more is longer than "
            "max_line_length ({limit}); it was not published",
            peer=self.peer, length=length, limit=self.limits.max_line_length,
        )
        self._stopSubscribing()

    # Subscribing: messages out (ILineSink), through the writer (its
    # OutputOwner).

    def deliver(self, data: bytes, count: int) -> None:
        """
        Write a chunk of lines to the client as WebSocket frames, one message
        a line, in one write, within C{max_pending}.
        """
        if self.state != _OPEN:
            # Closing: no data frame may follow a Close frame.
            self._stopSubscribing()
            return
        backplane = self.subscribeTo
        assert backplane is not None
        follower = self.follower
        if follower is not None and follower.subscription is not None \
                and follower.subscription.cursor is not None:
            # History being replayed to this client alone.
            self.output.deliver(encodeFrames(data, count), count)
        else:
            self.output.deliver(backplane.encoded(data, count, encodeFrames), count)

    def outputTooSlow(self) -> None:
        """
        Past C{max_pending} with C{slow = "disconnect"}: hand the client
        nothing more (its writer aborts the connection).
        """
        self._closing = True
        self._stopSubscribing()

    def outputCaughtUp(self, missed: int) -> None:
        """
        The client caught up after missing messages: nothing to do (its
        writer logged it).
        """

    def _stopSubscribing(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None
        if self.follower is not None:
            self.follower.cancel()

    # IPushProducer, for the transport: passed on to the writer.

    def pauseProducing(self) -> None:
        self.output.pauseProducing()

    def resumeProducing(self) -> None:
        self.output.resumeProducing()
        if self.follower is not None:
            self.follower.pump()

    def stopProducing(self) -> None:
        pass


class WebSocketFactory(BackplaneFactory):
    """
    A server factory for WebSocket clients that publish to and/or subscribe
    to backplanes: a L{BackplaneFactory} (the same L{Limits}, C{max_clients},
    C{protocols}, C{disconnectAll} and C{abortAll}) whose clients speak
    WebSocket.

    Any request path is accepted; a request with an C{Origin} header (a
    browser's) must come from the port's own origin or one of C{origins}
    (L{backplane.auth.origins.originAllowed}); on a port with an authority,
    a token must allow the port's backplanes.  The subprotocol C{backplane}
    is chosen when a client offers it (with a token beside it), none
    otherwise.  Per-message compression is off (frames are encoded once for
    everyone), and no pings are sent.  A plain HTTP request gets C{426
    Upgrade Required}.

    @ivar websocket: autobahn's factory, which holds the WebSocket options
        (C{setProtocolOptions}) every client reads when it connects.
    """

    protocol = WebSocketClient
    alpn = HTTP_ALPN

    def __init__(self, service: BackplaneService, *, publish_to: str | None = None,
                 subscribe_to: str | None = None, limits: Limits = _LIMITS,
                 ids: bool = False, origins: tuple[str, ...] | None = None,
                 authority: Authority | None = None,
                 clock: IReactorTime | None = None,
                 backplanes: tuple[str, ...] | None = None,
                 max_backplanes: int = DEFAULT_MAX_BACKPLANES) -> None:
        """
        @param service: the registry the backplanes are looked up in.
        @param backplanes: instead of C{publish_to} and C{subscribe_to}: the
            names and glob patterns of the backplanes a client may choose by
            its request's path (C{ws://host:port/chat.room1}), publishing to
            and subscribing to it; one not declared is created on demand, up
            to C{max_backplanes}.
        @param ids: send each message as C{ID payload}, and resume a client
            that asks with C{?resume=ID} (C{subscribe_to} needs a history,
            and there is no C{publish_to}).
        @param origins: the web page origins allowed besides the port's own
            (C{"*"}: every one).
        @param authority: with C{auth = true}, what decides who a client is
            and what it may do (one per port: its counters are the port's).
        @raise UnknownBackplane: a named backplane is not registered.
        @raise ValueError: neither C{publish_to} nor C{subscribe_to} is given,
            or C{ids} where they do not allow it.
        """
        self.needsBackplane = backplanes is None
        if backplanes is not None and (publish_to is not None or subscribe_to is not None):
            raise ValueError("a port lists backplanes, or names publish_to and subscribe_to")
        super().__init__(service, publish_to=publish_to, subscribe_to=subscribe_to,
                         limits=limits, authority=authority, clock=clock)
        self.service = service
        self.choice = None if backplanes is None else ChosenBackplanes(
            service, backplanes, max_backplanes=max_backplanes)
        self.gate = Gate(authority, publish=publish_to, subscribe=subscribe_to, origins=origins,
                         web=True, clock=clock)
        if ids and (self.publishTo is not None or self.subscribeTo is None
                    or self.subscribeTo.history is None):
            raise ValueError("ids need a subscribe_to with a history, and no publish_to")
        self.ids = ids
        # A message holds at most one line and its optional newline; a longer
        # one is refused from its frame's header, before it is read.  (A port
        # that does not publish keeps nothing of what it reads.)
        publishes = self.publishTo is not None or self.choice is not None
        maxPayload = limits.max_line_length + 1 if publishes else 0
        self.websocket = WebSocketServerFactory(server=None)
        self.websocket.setProtocolOptions(
            maxMessagePayloadSize=maxPayload,
            maxFramePayloadSize=maxPayload,
            autoPingInterval=0,
            # The Origin is checked in onConnect, by the port's gate, which
            # counts and logs what it refuses.
            allowedOrigins=["*"],
            allowNullOrigin=True,
            webStatus=False,
            # Close with a reason (e.g. 1009, message too big) rather than
            # dropping the connection, so that a page can tell why.
            failByDrop=False,
            # The port times the handshake (handshake_timeout), with its clock.
            openHandshakeTimeout=0,
        )

    def portReport(self) -> dict[str, Any]:
        """
        What a port that lists C{backplanes} adds to its report.
        """
        return choiceReport(self.choice)

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        protocol = super().buildProtocol(addr)
        if protocol is not None:
            # autobahn's protocol reads its options and timers from its
            # factory: that is autobahn's; this one is its port.
            protocol.factory = self.websocket
        return protocol

    def makeProtocol(self) -> WebSocketClient:
        return WebSocketClient(self, self.publishTo, self.subscribeTo, self.limits)

    def closeClient(self, protocol: Protocol) -> None:
        """
        Close a client's connection with a Close frame (1001, going away)
        after what is pending for it.
        """
        assert isinstance(protocol, WebSocketClient)
        protocol.goAway()
