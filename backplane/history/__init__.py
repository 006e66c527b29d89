"""
The history of a backplane (SPEC section 9): every message gets an id
C{EPOCH:SEQ}, and the last ones are kept, in memory (L{MemoryHistory}), so
that a subscriber that comes back resumes where it was (L{resume}).
"""

from backplane.history.base import History, StoreError
from backplane.history.ids import Resume, formatId, newEpoch, parseId, resume, withIds
from backplane.history.memory import MemoryHistory

__all__ = [
    "History",
    "MemoryHistory",
    "Resume",
    "StoreError",
    "formatId",
    "newEpoch",
    "parseId",
    "resume",
    "withIds",
]


def _conforms(memory: MemoryHistory) -> History:
    """
    A memory history is a L{History} (checked by mypy).
    """
    return memory
