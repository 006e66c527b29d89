"""
The one backoff policy of every kept connection (relays, the Redis bridge):
a L{ClientService} retry policy with exponential growth, a cap and jitter.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable

from twisted.application.internet import backoffPolicy as _twistedBackoff

DEFAULT_INITIAL_DELAY = 1.0
DEFAULT_MAX_DELAY = 60.0
DEFAULT_FACTOR = 2.0
DEFAULT_JITTER = 0.1


def backoffPolicy(
    initialDelay: float = DEFAULT_INITIAL_DELAY,
    maxDelay: float = DEFAULT_MAX_DELAY,
    *,
    factor: float = DEFAULT_FACTOR,
    jitter: float = DEFAULT_JITTER,
    random: Callable[[], float] = _random.random,
) -> Callable[[int], float]:
    """
    A L{ClientService} retry policy: exponential backoff with jitter, capped.

    The wait before retry C{n} (1, 2, ...) after consecutive failures is
    C{min(initialDelay * factor ** (n - 1), maxDelay)}, shortened at random
    by up to the fraction C{jitter} so that many clients cut off together do
    not come back in step.  It never exceeds C{maxDelay}.

    @param random: returns a float in [0, 1); inject a seeded one in tests.
    @raise ValueError: an argument out of range.
    """
    if initialDelay <= 0 or maxDelay < initialDelay:
        raise ValueError("need 0 < initial_delay <= max_delay")
    if factor < 1:
        raise ValueError("factor must be 1 or more")
    if not 0 <= jitter < 1:
        raise ValueError("jitter is a fraction: 0 <= jitter < 1")
    grow = _twistedBackoff(initialDelay, maxDelay, factor, jitter=lambda: 0.0)

    def policy(attempt: int) -> float:
        return float(grow(max(attempt - 1, 0))) * (1.0 - jitter * random())

    return policy
