"""
Message ids (C{EPOCH:SEQ}, SPEC section 9) and the decision a C{RESUME}
asks for.

An id names one message of a backplane with a history: C{EPOCH} is 1 to 32
characters C{[0-9a-z]}, fixed while the history is continuous; C{SEQ} is a
positive decimal number without sign or leading zeros, 1 for the first
message of an epoch and one more for each message after it.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Protocol

#: The most characters of an epoch.
MAX_EPOCH_LENGTH = 32
#: The most digits of a SEQ: every SEQ fits in a signed 64-bit integer.
MAX_SEQ_DIGITS = 18
#: The longest id L{parseId} reads; anything longer is refused unread.
MAX_ID_LENGTH = MAX_EPOCH_LENGTH + 1 + MAX_SEQ_DIGITS
#: The most bytes an id and the space after it add to a line a relay with
#: C{resume} reads from upstream (its pattern takes up to 20 digits), beyond
#: its C{max_line_length}.
ID_PREFIX_ROOM = MAX_EPOCH_LENGTH + 1 + 20 + 1
#: The characters of an epoch made by L{newEpoch}, and how many.
EPOCH_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
EPOCH_LENGTH = 10

_EPOCH = re.compile(rb"[0-9a-z]{1,%d}\Z" % MAX_EPOCH_LENGTH)
_SEQ = re.compile(rb"[1-9][0-9]{0,%d}\Z" % (MAX_SEQ_DIGITS - 1))
# How much of a bad input an error message shows.
_SHOWN = 64


def newEpoch(avoid: str | None = None) -> str:
    """
    A new random epoch: 10 characters C{[0-9a-z]} (about 51 bits) from
    L{secrets}, never equal to C{avoid}.
    """
    while True:
        epoch = "".join(secrets.choice(EPOCH_ALPHABET) for _ in range(EPOCH_LENGTH))
        if epoch != avoid:
            return epoch


def isEpoch(epoch: str) -> bool:
    """
    Whether C{epoch} is a valid epoch: 1 to 32 characters C{[0-9a-z]}.
    """
    return epoch.isascii() and _EPOCH.match(epoch.encode("ascii")) is not None


def formatId(epoch: str, seq: int) -> bytes:
    """
    The id C{b"EPOCH:SEQ"} of message C{seq} of C{epoch}.
    """
    return b"%s:%d" % (epoch.encode("ascii"), seq)


def _show(text: bytes | str) -> str:
    """
    C{text} for an error message: its first 64 bytes, quoted.
    """
    shown = repr(text[:_SHOWN])
    return shown + "..." if len(text) > _SHOWN else shown


def parseId(text: bytes | str) -> tuple[str, int]:
    """
    Read an id C{EPOCH:SEQ}: return C{(epoch, seq)}.

    @raise ValueError: C{text} is not an id; the message says why and shows
        at most 64 bytes of it.
    """
    if len(text) > MAX_ID_LENGTH:
        raise ValueError(f"not an id: {_show(text)} is longer than {MAX_ID_LENGTH} characters")
    if isinstance(text, str):
        if not text.isascii():
            raise ValueError(f"not an id: {_show(text)} is not ASCII")
        raw = text.encode("ascii")
    else:
        raw = text
    epoch, colon, seq = raw.partition(b":")
    if not colon:
        raise ValueError(f"not an id: {_show(raw)} has no ':' (an id is EPOCH:SEQ)")
    if _EPOCH.match(epoch) is None:
        raise ValueError(f"not an id: the epoch of {_show(raw)} is not 1 to "
                         f"{MAX_EPOCH_LENGTH} characters 0-9 a-z")
    if _SEQ.match(seq) is None:
        raise ValueError(f"not an id: the SEQ of {_show(raw)} is not a positive decimal "
                         f"number without sign or leading zeros, at most {MAX_SEQ_DIGITS} digits")
    return epoch.decode("ascii"), int(seq)


def withIds(epoch: str, firstSeq: int, data: bytes, count: int) -> bytes:
    """
    The chunk C{data} of C{count} lines with each line prefixed by its id and
    a space, C{b"EPOCH:SEQ "}, the first line's SEQ being C{firstSeq}: what a
    subscriber with C{ids = true} gets.

    Done once per chunk for every such subscriber; the lines are split once
    and joined by one C{%}-format, so no Python code runs per line.

    @param data: C{count} complete lines, each followed by C{b"\\n"}.
    """
    prefix = epoch.encode("ascii")
    if count == 1:
        return b"%s:%d %s" % (prefix, firstSeq, data)
    lines = data.split(b"\n")
    lines.pop()  # the empty piece after the last b"\n"
    arguments: list[object] = [None] * (2 * count)
    arguments[0::2] = range(firstSeq, firstSeq + count)
    arguments[1::2] = lines
    return ((prefix + b":%d %s\n") * count) % tuple(arguments)


class Positions(Protocol):
    """
    What L{resume} needs of a history: its epoch and the SEQs it keeps.
    """

    @property
    def epoch(self) -> str: ...

    @property
    def first(self) -> int: ...

    @property
    def last(self) -> int: ...


@dataclass(frozen=True)
class Resume:
    """
    What a subscriber that sent C{RESUME} gets: the messages from C{nextSeq}
    on, after a C{GAP} line if C{gap}.

    @ivar nextSeq: the SEQ of the first message to send it (in the
        history's epoch); the history's C{last + 1} for live messages only.
    @ivar gap: whether something it asked for is missing, so that it must be
        told (C{GAP <its id> <formatId(epoch, nextSeq)>}).
    """

    nextSeq: int
    gap: bool


def resume(history: Positions, text: bytes | str) -> Resume:
    """
    Decide what a subscriber that sent C{RESUME text} gets from C{history}.

      - C{"0"} ("everything you still keep"): from the oldest kept, no gap;
      - an id of the history's epoch whose SEQ is from C{first - 1} to
        C{last}: the messages after it, no gap;
      - an id of another epoch, or older than the oldest kept: everything
        kept, from C{first}, with a gap;
      - an id from the future (a SEQ past C{last}): live messages only, from
        C{last + 1}, with a gap.

    @param text: what the client sent after C{RESUME}, without the
        delimiter.
    @raise ValueError: C{text} is neither C{0} nor an id.
    """
    if text == b"0" or text == "0":
        return Resume(history.first, False)
    epoch, seq = parseId(text)
    first, last = history.first, history.last
    if epoch != history.epoch or seq < first - 1:
        return Resume(first, True)
    if seq > last:
        return Resume(last + 1, True)
    return Resume(seq + 1, False)
