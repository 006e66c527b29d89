"""
The bounds of a request's head, on every port that reads HTTP (WebSocket,
Server-Sent Events, the monitor), of its body (an HTTP request's), and how a
refusal quotes what it refused.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

from backplane.address import describePeer

#: The most bytes of a request's head (request line and headers).
MAX_HEAD_BYTES = 16 * 1024
#: The most header lines in a request's head.
MAX_HEADERS = 100
#: The most bytes of a request's body (SSE ports and the monitor take none).
MAX_BODY_BYTES = 64 * 1024
#: The most characters of a client's value a log line or a response quotes.
QUOTE_LENGTH = 40
#: What a port that reads HTTP (WebSocket, Server-Sent Events, the monitor)
#: names in TLS's protocol negotiation (ALPN): HTTP/1.1 only, never C{h2},
#: which its channels do not speak: the C{alpn} of their factories
#: (L{backplane.tls.negotiateProtocols}).
HTTP_ALPN = (b"http/1.1",)


def shortRepr(value: str | bytes, limit: int = QUOTE_LENGTH) -> str:
    """
    C{value} as a short quotation for a log line or a response: its
    C{repr}, cut after C{limit} characters (and saying how long it was).
    """
    if len(value) <= limit:
        return repr(value)
    return f"{value[:limit]!r}... ({len(value)} in all)"


class BoundedChannel(HTTPChannel):
    """
    An HTTP connection whose requests' heads are bounded: at most
    L{MAX_HEAD_BYTES} bytes (Twisted's C{totalHeadersSize}, and its longest
    line) in at most L{MAX_HEADERS} header lines (C{maxHeaders}).

    Twisted refuses a head past them (or a malformed one) with a bare 400
    and logs nothing; this logs the refusal once, in one short line without
    the client's bytes, and tells L{headRefused}.  A line past the bound
    gets C{431 Request Header Fields Too Large}.
    """

    transport: Any
    maxHeaders = MAX_HEADERS
    totalHeadersSize = MAX_HEAD_BYTES
    MAX_LENGTH = MAX_HEAD_BYTES
    log = Logger()
    _headRefused = False

    def headRefused(self) -> None:
        """
        A request's head was refused; override to count it.
        """

    def _refuseHead(self, status: bytes, what: str) -> bool:
        if self._headRefused:
            return False
        self._headRefused = True
        transport: Any = self.transport
        peer = "?" if transport is None else describePeer(transport.getPeer())
        self.log.warn("Refused {peer}'s HTTP request: {what} ({status})", peer=peer, what=what,
                      status=status.decode("ascii"))
        self.headRefused()
        return True

    def refuseBody(self) -> None:
        """
        A request's body is longer than L{MAX_BODY_BYTES}: 413, and close.
        """
        if self._refuseHead(b"413", f"a body of more than {MAX_BODY_BYTES} bytes"):
            self.transport.write(b"HTTP/1.1 413 Content Too Large\r\n"
                                 b"Connection: close\r\nContent-Length: 0\r\n\r\n")
        self.transport.loseConnection()

    def lineLengthExceeded(self, line: bytes) -> None:
        """
        A line of the head is longer than L{MAX_HEAD_BYTES}: 431, and close.
        """
        if self._refuseHead(b"431", f"a line of more than {MAX_HEAD_BYTES} bytes in its head"):
            self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                 b"Connection: close\r\nContent-Length: 0\r\n\r\n")
        self.transport.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's one way out for a head past totalHeadersSize or
        # maxHeaders, or malformed (a private method: tests.test_handshakes
        # fails loudly if it goes).
        if self._refuseHead(b"400", f"a malformed head, or one past {MAX_HEAD_BYTES} bytes or "
                                    f"{MAX_HEADERS} header lines"):
            super()._respondToBadRequestAndDisconnect()
        else:
            self.transport.loseConnection()


class BoundedRequest(Request):
    """
    A request whose body may hold at most L{MAX_BODY_BYTES} (Twisted keeps
    any body, in a temporary file past 100 kB): past it, its channel (a
    L{BoundedChannel}) refuses it with 413, and it is never served.
    """

    _bodyBytes = 0
    _tooLarge = False

    def gotLength(self, length: int | None) -> None:
        # Never a temporary file: what is kept is bounded anyway.
        super().gotLength(None if length is not None and length > MAX_BODY_BYTES else length)

    def handleContentChunk(self, data: bytes) -> None:
        self._bodyBytes += len(data)
        if self._bodyBytes > MAX_BODY_BYTES:
            self._tooLarge = True
            channel: Any = self.channel
            if isinstance(channel, BoundedChannel):
                channel.refuseBody()
            elif channel is not None:
                channel.transport.loseConnection()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._tooLarge:
            super().requestReceived(command, path, version)
