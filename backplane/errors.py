"""
The errors of backplane, in a module of their own (as C{twisted.words} keeps
C{ewords.py}), so that any module may raise them without importing the one
that usually does.
"""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(Exception):
    """
    The configuration is wrong: the one error type for every user mistake in
    a config file.  Its message names the file, the entry and the key.
    """

    def __init__(self, message: str, *, path: str | None = None, where: str | None = None) -> None:
        self.path = path
        self.where = where
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return ": ".join(part for part in (self.path, self.where, self.message) if part)


class CannotListen(ConfigError):
    """
    A port could not listen (an address in use, a permission denied): a
    L{ConfigError} naming the entry and its C{endpoint}, which the twistd
    plugin prints as one line.
    """


class BackplaneExists(ValueError):
    """
    A backplane of that name is already registered.
    """


class UnknownBackplane(KeyError):
    """
    No backplane of that name is registered.

    A L{KeyError}, so C{except KeyError} works; its message names the backplane
    and lists the known ones.
    """

    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        listed = ", ".join(repr(n) for n in self.known) or "none"
        super().__init__(f"no backplane named {name!r} (known: {listed})")

    def __str__(self) -> str:
        # KeyError.__str__ would show the message in quotes.
        return str(self.args[0])


class TooManyBackplanes(Exception):
    """
    A backplane cannot be created on demand: as many as a port allows
    (C{max_backplanes}) exist already.
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        super().__init__(f"cannot create backplane {name!r}: max_backplanes ({limit}) reached")


class NotAcknowledged(Exception):
    """
    Lines sent to an C{acks = true} port will not be acknowledged: they were
    dropped before upstream acknowledged them (past the bound of the
    outbox), or the outbox was closed first.  The message says which.
    """
