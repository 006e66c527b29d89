"""
Who a client is and what it may do: L{Permissions}, L{Identity}, and
L{AccessDenied}, the one error every refusal raises.
"""

from __future__ import annotations

from dataclasses import dataclass

from backplane.auth.glob import globMatch

#: How much of what a client sent a refusal's reason may quote.
QUOTE_LIMIT = 64


def quote(value: str | bytes, limit: int = QUOTE_LIMIT) -> str:
    """
    Something a client sent, made safe for a refusal's reason and a log
    line: its L{repr} (one line, control characters escaped), cut to about
    C{limit} characters.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if len(value) > limit:
        return repr(value[:limit]) + "..."
    return repr(value)


class AccessDenied(Exception):
    """
    A client may not do what it asked: no token, a token that is not
    accepted, or one that does not allow this backplane.

    @ivar reason: a short message that is safe to send to the client and to
        log: it holds no secret and quotes at most L{QUOTE_LIMIT} characters of
        what the client sent.
    @ivar status: the HTTP status that fits: 401 (no token, or one that is
        not accepted) or 403 (an accepted token that does not allow this).
    @ivar code: a short word for the statistics: C{"missing"}, C{"unknown"},
        C{"invalid"}, C{"expired"}, C{"forbidden"}, C{"origin"}, ...
    """

    def __init__(self, reason: str, status: int = 401, *, code: str = "invalid") -> None:
        if status not in (401, 403):
            raise ValueError(f"status must be 401 or 403, not {status!r}")
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return self.reason

    def __repr__(self) -> str:
        return f"AccessDenied({self.reason!r}, {self.status}, code={self.code!r})"


@dataclass(frozen=True)
class Permissions:
    """
    The backplanes a client may publish to and subscribe to: names or Redis
    glob patterns (L{globMatch}).  Empty lists allow nothing.
    """

    publish: tuple[str, ...] = ()
    subscribe: tuple[str, ...] = ()

    def mayPublish(self, name: str | bytes) -> bool:
        """
        Whether the backplane C{name} may be published to.
        """
        return any(globMatch(pattern, name) for pattern in self.publish)

    def maySubscribe(self, name: str | bytes) -> bool:
        """
        Whether the backplane C{name} may be subscribed to.
        """
        return any(globMatch(pattern, name) for pattern in self.subscribe)


@dataclass(frozen=True)
class Identity:
    """
    A client whose token (or certificate) was accepted.

    @ivar name: the user's name, or a signed token's C{sub} (for log lines
        and statistics; it grants nothing by itself).
    @ivar permissions: what it may do.
    @ivar expires: when a signed token stops being accepted (POSIX time), or
        L{None} for a user of the config file.  Access is decided when a
        client connects or first uses a backplane, so a connection may
        outlive its token.
    """

    name: str
    permissions: Permissions
    expires: float | None = None
