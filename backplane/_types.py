"""
Types shared by the modules: the reactor they need, as one interface (as
treq's C{_types.py} does), and the one place that picks the global reactor.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.interfaces import (
    IReactorCore,
    IReactorPluggableNameResolver,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
    IReactorUNIX,
)


class IBackplaneReactor(
    IReactorCore, IReactorTCP, IReactorSSL, IReactorUNIX, IReactorTime,
    IReactorPluggableNameResolver,
):
    """
    What backplane needs of a reactor: to run, connect and listen (TCP, TLS,
    UNIX) and keep time.  Every real reactor provides it; tests pass a
    L{MemoryReactorClock<twisted.internet.testing.MemoryReactorClock>}
    (or a L{Clock<twisted.internet.task.Clock>} where only time is used,
    under a C{clock=} parameter).
    """


def defaultReactor(reactor: IBackplaneReactor | None = None) -> IBackplaneReactor:
    """
    C{reactor}, or the global reactor if it is L{None}: the one place that
    imports C{twisted.internet.reactor}, and only when asked.
    """
    if reactor is None:
        from twisted.internet import reactor as globalReactor

        return cast(IBackplaneReactor, globalReactor)
    return reactor
