"""
Access checks of HTTP requests (Server-Sent Events ports, the monitor):
where a request's origin and token are (L{requestOrigin},
L{requestToken}), asking a L{Gate} (L{admitRequest}), and the response that
refuses (L{refusal}: 401 with C{WWW-Authenticate: Bearer}, or 403).
"""

from __future__ import annotations

from twisted.web.http import Request

from backplane.address import describePeer, peerCommonName
from backplane.auth.gate import Gate
from backplane.auth.identity import AccessDenied, Identity
from backplane.auth.wire import bearerToken

#: The realm named in C{WWW-Authenticate}.
REALM = "backplane"


def _header(request: Request, name: bytes) -> str | None:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


def requestPeer(request: Request) -> str:
    """
    The client of a request, as log lines name it.
    """
    address = request.getClientAddress()
    return describePeer(address) if address is not None else "?"


def requestOrigin(request: Request) -> str | None:
    """
    The request's C{Origin} header, or L{None}.
    """
    return _header(request, b"origin")


def requestToken(request: Request) -> str | None:
    """
    The token of a request: C{Authorization: Bearer TOKEN}, or else the
    last C{token} query parameter; L{None} if it has neither.
    """
    token = bearerToken(request.getHeader(b"authorization"))
    if token is not None:
        return token
    values = (request.args or {}).get(b"token")
    if not values:
        return None
    last: bytes = values[-1]
    return last.decode("utf-8", "replace")


def checkRequestOrigin(gate: Gate, request: Request) -> str | None:
    """
    Check a request's C{Origin} against its C{Host} and the gate's
    C{origins}.

    @return: the origin, when the request has one (and it is allowed).
    @raise AccessDenied: (403) it is not allowed; counted and logged.
    """
    origin = requestOrigin(request)
    gate.checkOrigin(origin, _header(request, b"host"),
                     "https" if request.isSecure() else "http", peer=requestPeer(request))
    return origin


def admitRequest(gate: Gate, request: Request) -> Identity | None:
    """
    Who sends this request, if its gate asks (L{Gate.admit}): its token, or
    a TLS client certificate that names a user.

    @raise AccessDenied: refused; counted and logged.
    """
    if not gate.auth:
        return None
    transport = request.channel.transport if request.channel is not None else None
    return gate.admit(requestToken(request), commonName=peerCommonName(transport),
                      peer=requestPeer(request))


def refusal(request: Request, denied: AccessDenied) -> bytes:
    """
    Answer a refused request: its status (401 with C{WWW-Authenticate:
    Bearer}, RFC 6750, or 403) and the reason, as text.

    @return: the body.
    """
    request.setResponseCode(denied.status)
    if denied.status == 401:
        challenge = f'Bearer realm="{REALM}"'
        if denied.code != "missing":
            challenge += ', error="invalid_token"'
        request.setHeader(b"www-authenticate", challenge.encode("ascii"))
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return (denied.reason + "\n").encode("utf-8")
