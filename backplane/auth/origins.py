"""
Which web pages may connect: the C{Origin} a browser sends with every
WebSocket handshake and every cross-site request, checked against the
request's C{Host} and a port's C{origins}.

An origin is C{scheme://host[:port]} (RFC 6454).  Two are the same when
their schemes, hosts and ports are: hosts compared without regard to case
and to one trailing dot (C{example.com.} is C{example.com}), IPv6 addresses
as addresses (C{[::1]} is C{[0:0::1]}), and a missing port as the scheme's
default (80 for C{http} and C{ws}, 443 for C{https} and C{wss}; C{ws} and
C{wss} are compared as C{http} and C{https}).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

from backplane.auth.identity import AccessDenied, quote

#: The ports of schemes that have a default one.
DEFAULT_PORTS = {"http": 80, "https": 443}
# WebSocket URLs are compared as the HTTP URLs they upgrade.
_SAME_SCHEME = {"ws": "http", "wss": "https"}

_ORIGIN = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://([^/?#@\s]+)")
_REG_NAME = re.compile(r"[A-Za-z0-9._~!$&'()*+,;=%-]+")
_PORT = re.compile(r"[0-9]{0,5}")


@dataclass(frozen=True)
class Origin:
    """
    A normalized origin: lower-case scheme and host, the port filled in
    where the scheme has a default one.
    """

    scheme: str
    host: str
    port: int | None

    def __str__(self) -> str:
        if self.port is None or self.port == DEFAULT_PORTS.get(self.scheme):
            return f"{self.scheme}://{self.host}"
        return f"{self.scheme}://{self.host}:{self.port}"


def _authority(authority: str, scheme: str) -> Origin:
    """
    An origin from a scheme and an authority, C{host[:port]}.

    @raise ValueError: the authority is not a host with an optional port.
    """
    scheme = scheme.lower()
    scheme = _SAME_SCHEME.get(scheme, scheme)
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            raise ValueError("an IPv6 address needs its closing ]")
        try:
            address = ipaddress.IPv6Address(authority[1:end])
        except ValueError:
            raise ValueError(f"{authority[1:end]!r} is not an IPv6 address") from None
        host, rest = f"[{address.compressed}]", authority[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("only a :port may follow an IPv6 address")
        port = rest[1:] if rest else ""
    else:
        host, _, port = authority.partition(":")
        if not _REG_NAME.fullmatch(host):
            raise ValueError(f"{host!r} is not a host name")
        host = host.lower()
        if host.endswith(".") and host != ".":
            host = host[:-1]
    if not _PORT.fullmatch(port) or (port and not 0 < int(port) < 65536):
        raise ValueError(f"{port!r} is not a port")
    return Origin(scheme, host, int(port) if port else DEFAULT_PORTS.get(scheme))


@lru_cache(maxsize=1024)
def parseOrigin(text: str) -> Origin:
    """
    The origin an C{Origin} header (or a C{origins} entry) names.

    @raise ValueError: it is not C{scheme://host[:port]} (C{null}, a path, a
        user name, a list of origins, ...).
    """
    found = _ORIGIN.fullmatch(text)
    if found is None:
        raise ValueError(f"{text!r} is not an origin: write scheme://host[:port], "
                         f"e.g. 'https://app.example.com'")
    try:
        return _authority(found.group(2), found.group(1))
    except ValueError as e:
        raise ValueError(f"{text!r} is not an origin: {e}") from None


def originAllowed(origin: str | None, host: str | None, allowed: tuple[str, ...] | None,
                  scheme: str) -> bool:
    """
    Whether a request with this C{Origin} header may connect.

    A request without one (a client that is not a browser) may.  One with
    an C{Origin} may if it is the origin of the request itself (C{scheme}
    and its C{Host} header), or one that C{allowed} lists; C{"*"} in
    C{allowed} allows every origin, C{null} included.  Anything malformed
    (C{null}, a missing C{Host}) is not the same origin as anything.

    @param origin: the request's C{Origin} header, or L{None}.
    @param host: the request's C{Host} header, or L{None}.
    @param allowed: a port's C{origins}, or L{None}.
    @param scheme: how the request came: C{"http"} or C{"https"} (C{"ws"}
        and C{"wss"} are the same).
    """
    if origin is None:
        return True
    if allowed is not None and "*" in allowed:
        return True
    try:
        theirs = parseOrigin(origin)
    except ValueError:
        return False
    if host is not None:
        try:
            if theirs == _authority(host, scheme):
                return True
        except ValueError:
            pass
    for entry in allowed or ():
        try:
            if theirs == parseOrigin(entry):
                return True
        except ValueError:
            continue
    return False


def checkOrigin(origin: str | None, host: str | None, allowed: tuple[str, ...] | None,
                scheme: str) -> None:
    """
    L{originAllowed}, as a refusal.

    @raise AccessDenied: (403, code C{"origin"}) the origin may not connect.
    """
    if not originAllowed(origin, host, allowed, scheme):
        assert origin is not None
        raise AccessDenied(f"origin {quote(origin)} not allowed", 403, code="origin")
