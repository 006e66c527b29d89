"""
The C{AUTH} line of a line client (SPEC section 11): on a port with C{auth =
true}, a L{LineAdmission} takes the connection's first line, before any
C{RESUME} or C{HELLO}, and lets the client in, or refuses it.
"""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from backplane._types import defaultReactor
from backplane.auth.authority import MAX_TOKEN_LENGTH
from backplane.auth.gate import Gate
from backplane.auth.identity import AccessDenied, Identity
from backplane.auth.wire import authLine
from backplane.framing import LineFramer, LinesReceiver

#: The longest first line read: C{AUTH}, a space and the longest token.
MAX_AUTH_LINE = len(b"AUTH ") + MAX_TOKEN_LENGTH


class AdmissionOwner(LinesReceiver, Protocol):
    """
    What a L{LineAdmission} lets in or refuses: a line protocol, which
    takes its framer's lines back once the client is admitted.
    """

    def admitted(self, identity: Identity | None, rest: bytes) -> None:
        """
        The client may go on: C{rest} holds the complete lines it sent after
        its C{AUTH} line (possibly none), for the owner to read as its first.
        """

    def accessRefused(self, denied: AccessDenied) -> None:
        """
        The client is refused (already counted and logged): send it
        C{ERR reason} and close the connection.
        """


class LineAdmission:
    """
    Reads a line client's first line, C{AUTH TOKEN}, through the client's
    own L{LineFramer} (whose receiver it is meanwhile), and asks the port's
    L{Gate} whether the token may use the port's backplanes.

    A client whose TLS certificate names a user is admitted without an
    C{AUTH} line (L{certificate}).  A client that sends no complete line
    within the gate's C{timeout}, or a first line longer than
    L{MAX_AUTH_LINE}, is refused.  Nothing the client sends is handed to the
    owner before it is admitted.
    """

    def __init__(self, owner: AdmissionOwner, framer: LineFramer, gate: Gate, *,
                 peer: str = "?", clock: IReactorTime | None = None) -> None:
        self.owner = owner
        self.framer = framer
        self.gate = gate
        self.peer = peer
        self.clock = clock
        self.done = False
        self._timer: IDelayedCall | None = None

    def start(self) -> None:
        """
        Take the framer's lines, and start the clock.
        """
        self.framer.receiver = self
        clock = self.clock or self.gate.clock or defaultReactor()
        self._timer = clock.callLater(self.gate.timeout, self._timedOut)

    def cancel(self) -> None:
        """
        Stop waiting (the connection is gone); decide nothing.
        """
        self.done = True
        self._stopTimer()
        self.framer.receiver = self.owner

    def certificate(self, commonName: str | None) -> None:
        """
        The TLS handshake is done: a client certificate whose subject common
        name is a user's C{cert} admits the client (or refuses it, if that
        user may not use the port's backplanes); otherwise the client must
        send C{AUTH}.
        """
        if self.done:
            return
        try:
            identity = self.gate.certificate(commonName, peer=self.peer)
        except AccessDenied as denied:
            self._finish()
            self.owner.accessRefused(denied)
            return
        if identity is not None:
            self._finish()
            self.owner.admitted(identity, b"")

    def dataReceived(self, data: bytes) -> None:
        """
        Frame what the client sent while it is not admitted yet.
        """
        self.framer.dataReceived(data)
        if not self.done and len(self.framer.buffered) > MAX_AUTH_LINE:
            self.lineTooLong(len(self.framer.buffered))

    def linesReceived(self, data: bytes) -> None:
        """
        The first line, and any after it in the same chunk.
        """
        if self.done:
            return
        line, _, rest = data.partition(b"\n")
        self._finish()
        try:
            token = authLine(line)
        except AccessDenied as denied:
            self.gate.refused(denied, peer=self.peer)
            self.owner.accessRefused(denied)
            return
        try:
            identity = self.gate.admit(token, peer=self.peer)
        except AccessDenied as denied:
            self.owner.accessRefused(denied)
            return
        self.owner.admitted(identity, rest)

    def lineTooLong(self, length: int) -> None:
        """
        The first line is longer than any C{AUTH} line (or than the port's
        C{max_line_length}).
        """
        if self.done:
            return
        self._finish()
        self.framer.discard()
        denied = AccessDenied("the first line is too long for AUTH TOKEN", code="malformed")
        self.gate.refused(denied, peer=self.peer)
        self.owner.accessRefused(denied)

    def _timedOut(self) -> None:
        self._timer = None
        if self.done:
            return
        self._finish()
        self.framer.discard()
        denied = AccessDenied(f"no AUTH line within {self.gate.timeout:g} seconds",
                              code="timeout")
        self.gate.refused(denied, peer=self.peer)
        self.owner.accessRefused(denied)

    def _finish(self) -> None:
        self.done = True
        self._stopTimer()
        self.framer.receiver = self.owner

    def _stopTimer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
