"""
Ports whose clients choose their backplanes by name (SPEC section 12):
L{ChosenBackplanes} holds a port's C{backplanes = [...]} (names and Redis
glob patterns) and its C{max_backplanes}, and creates on demand the
backplanes its clients name; L{pathName} reads the name a WebSocket or SSE
client asks for in its request's path (C{ws://host:port/chat.room1}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_to_bytes

from backplane.auth.glob import compileGlob
from backplane.service import Backplane, BackplaneService

#: The most backplanes a port creates on demand (C{max_backplanes}).
DEFAULT_MAX_BACKPLANES = 1000


class ChosenBackplanes:
    """
    The backplanes a port's clients may name, and those it created for them.

    @ivar patterns: the port's C{backplanes}: names and glob patterns.
    @ivar maxBackplanes: the most backplanes created on demand for this port
        that may exist at once.
    @ivar created: how many it created, all told.
    """

    def __init__(self, service: BackplaneService, patterns: Sequence[str], *,
                 max_backplanes: int = DEFAULT_MAX_BACKPLANES) -> None:
        self.service = service
        self.patterns = tuple(patterns)
        self._globs = tuple(compileGlob(pattern) for pattern in self.patterns)
        self.maxBackplanes = max_backplanes
        self.created = 0

    def serves(self, name: str) -> bool:
        """
        Whether backplane C{name} is one the port's clients may reach.
        """
        return any(glob.match(name) for glob in self._globs)

    def ensure(self, name: str) -> Backplane:
        """
        The backplane C{name} (which the port serves), created on demand if
        there is none (see L{BackplaneService.ensure}): the caller subscribes
        to it or counts itself as its publisher, and calls
        L{BackplaneService.release} when it no longer uses it.

        @raise backplane.errors.TooManyBackplanes: it would be one too many.
        """
        created = name not in self.service
        backplane = self.service.ensure(name, limit=self.maxBackplanes, owner=self)
        if created:
            self.created += 1
        return backplane

    @property
    def onDemand(self) -> int:
        """
        How many backplanes created on demand for this port exist now.
        """
        return self.service.onDemandFor(self)


def pathName(path: bytes | str) -> str | None:
    """
    The backplane a request's path names: the path without its leading
    C{/}, percent-decoded, as UTF-8; L{None} for an empty or malformed one.
    """
    if isinstance(path, str):
        path = path.encode("utf-8", "surrogateescape")
    try:
        name = unquote_to_bytes(path.split(b"?", 1)[0].lstrip(b"/")).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name or None


def choiceReport(choice: ChosenBackplanes | None) -> dict[str, Any]:
    """
    What a port whose clients choose their backplanes adds to its report
    (L{ListenService.report<backplane.ports.ListenService.report>}): nothing
    for a port of one backplane.
    """
    if choice is None:
        return {}
    return {"counters": {"created": choice.created},
            "gauges": {"backplanes_on_demand": choice.onDemand},
            "info": {"backplanes": ", ".join(choice.patterns),
                     "max_backplanes": choice.maxBackplanes}}
