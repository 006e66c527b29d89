"""
The history of a backplane (SPEC section 9): every message gets an id
C{EPOCH:SEQ}, and the last ones are kept, in memory (L{MemoryHistory}) or in
files (L{DiskStore}), so that a subscriber that comes back resumes where it
was (L{resume}).  docs/history.md describes the files and what survives what.
"""

from backplane.history.base import History, StoreError
from backplane.history.disk import DiskStore
from backplane.history.ids import Resume, formatId, newEpoch, parseId, resume, withIds
from backplane.history.memory import MemoryHistory

__all__ = [
    "DiskStore",
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

