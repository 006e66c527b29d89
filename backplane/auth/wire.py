"""
Where a token travels on the wire (SPEC section 11), read in one place:

  - a line client sends C{AUTH TOKEN} as its first line (L{authLine});
  - an HTTP client (Server-Sent Events, the monitor) sends
    C{Authorization: Bearer TOKEN} (L{bearerToken}) or C{?token=TOKEN};
  - a WebSocket client sends C{?token=TOKEN}, or offers two subprotocols,
    L{SUBPROTOCOL} and the token (L{subprotocolToken}), since a browser's
    C{WebSocket} can set no header: C{new WebSocket(url, ["backplane",
    token])}; the server then chooses L{SUBPROTOCOL}.
"""

from __future__ import annotations

from collections.abc import Sequence

from backplane.auth.identity import AccessDenied

#: The WebSocket subprotocol offered beside a token, and chosen by the server.
SUBPROTOCOL = "backplane"


def authLine(line: bytes) -> bytes:
    """
    The token of a line client's first line, C{AUTH TOKEN}.

    @param line: the line, without its delimiter.
    @raise AccessDenied: (401, code C{"missing"}) the line is not C{AUTH}
        followed by one space and a token without spaces.
    """
    command, space, token = line.partition(b" ")
    if command != b"AUTH" or not space or not token or b" " in token:
        raise AccessDenied("expected AUTH TOKEN as the first line", code="missing")
    return token


def bearerToken(authorization: str | bytes | None) -> str | None:
    """
    The token of an C{Authorization: Bearer TOKEN} header (RFC 6750; the
    word C{Bearer} in any case), or L{None} if there is no such header.
    """
    if authorization is None:
        return None
    if isinstance(authorization, bytes):
        authorization = authorization.decode("latin-1")
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def subprotocolToken(offered: Sequence[str]) -> str | None:
    """
    The token among a WebSocket client's offered subprotocols: the one
    value other than L{SUBPROTOCOL}, when L{SUBPROTOCOL} is offered too;
    L{None} otherwise (then the server chooses no subprotocol, and reads no
    token from them).
    """
    if SUBPROTOCOL not in offered:
        return None
    others = [value for value in offered if value != SUBPROTOCOL]
    return others[0] if len(others) == 1 else None
