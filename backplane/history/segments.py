"""
The segment files of a L{backplane.history.DiskStore}: records of chunks,
one after another, and a sparse index of them in memory.

A record is a 24-byte header, then the chunk's data::

    magic   4 bytes  b"BPh1"
    seq     8 bytes  the SEQ of the chunk's first message (little-endian)
    count   4 bytes  its messages
    length  4 bytes  the bytes of its data
    crc     4 bytes  CRC-32 of seq, count and length (as above) then data
    data    length bytes: count lines, each followed by b"\\n"

A segment file is named by the SEQ of its first message, 20 digits, and
C{.seg}; its records follow on without a hole (each one's C{seq} is the
previous one's C{seq + count}).

A record of a chunk published by an acknowledged publisher (SPEC section
10) is followed, in the same C{write}, by a mark record: how many of that
publisher's lines are now published, so that the mark is on disk exactly
when the lines are, even when the process is killed between two fsyncs::

    magic   4 bytes  b"BPk1"
    length  4 bytes  the bytes of the publisher id
    mark    8 bytes  the publisher's lines published
    crc     4 bytes  CRC-32 of length and mark (as above) then the id
    id      length bytes (ASCII)
"""

from __future__ import annotations

import mmap
import os
import re
import struct
import zlib
from array import array
from bisect import bisect_right
from dataclasses import dataclass, field

MAGIC = b"BPh1"
MARK_MAGIC = b"BPk1"
#: The header of a mark record: magic, length, mark, crc.
MARK_HEADER = struct.Struct("<4sIQI")
MARK_FIELDS = struct.Struct("<IQ")
#: The header of a record: magic, seq, count, length, crc.
HEADER = struct.Struct("<4sQIII")
#: The fields of the header the CRC covers, before the data.
FIELDS = struct.Struct("<QII")
#: A record is indexed at least every this many bytes of its segment.
INDEX_INTERVAL = 4096
_NAME = re.compile(r"([0-9]{20})\.seg\Z")


def segmentName(seq: int) -> str:
    """
    The file name of the segment whose first message is C{seq}.
    """
    return f"{seq:020d}.seg"


def segmentSeq(name: str) -> int | None:
    """
    The first SEQ of the segment file C{name}; None if it is not one.
    """
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def record(seq: int, count: int, data: bytes) -> bytes:
    """
    The record of a chunk: header and data, ready for one C{write}.
    """
    length = len(data)
    crc = zlib.crc32(data, zlib.crc32(FIELDS.pack(seq, count, length)))
    return HEADER.pack(MAGIC, seq, count, length, crc) + data


def markRecord(publisherId: str, mark: int) -> bytes:
    """
    The record of a publisher's mark, to follow the record of its chunk in
    the same C{write}.
    """
    name = publisherId.encode("ascii")
    crc = zlib.crc32(name, zlib.crc32(MARK_FIELDS.pack(len(name), mark)))
    return MARK_HEADER.pack(MARK_MAGIC, len(name), mark, crc) + name


class Segment:
    """
    One segment file: its range of SEQs, its size, and a sparse index (the
    offset of a record at least every L{INDEX_INTERVAL} bytes) that tells a
    read where to start.

    @ivar path: the file.
    @ivar first: the SEQ of its first message.
    @ivar next: the SEQ after its last message (C{first} while empty).
    @ivar size: its bytes.
    """

    __slots__ = ("first", "next", "offsets", "path", "seqs", "size")

    def __init__(self, path: str, first: int) -> None:
        self.path = path
        self.first = first
        self.next = first
        self.size = 0
        self.seqs = array("Q")
        self.offsets = array("Q")

    def add(self, seq: int, count: int, size: int) -> None:
        """
        Take note of a record of C{size} bytes, at the end of the file.
        """
        offsets = self.offsets
        if not offsets or self.size - offsets[-1] >= INDEX_INTERVAL:
            self.seqs.append(seq)
            offsets.append(self.size)
        self.next = seq + count
        self.size += size

    def extend(self, size: int) -> None:
        """
        Take note of a mark record of C{size} bytes, at the end of the file.
        """
        self.size += size

    def locate(self, seq: int) -> int:
        """
        The offset of an indexed record from which C{seq} (in this segment)
        is at most L{INDEX_INTERVAL} bytes of records away.
        """
        index = bisect_right(self.seqs, seq) - 1
        return self.offsets[max(index, 0)]


@dataclass
class Scan:
    """
    What L{scan} found in a segment file.

    @ivar segment: its valid records, indexed.
    @ivar problem: why the file does not end after its last valid record
        (None if it does).
    @ivar torn: whether the problem is only an incomplete last record (a
        header or data cut short by the end of the file), as a process
        killed while writing leaves.
    @ivar marks: the publishers' marks its mark records hold, the last of
        each.
    """

    segment: Segment
    problem: str | None = None
    torn: bool = False
    marks: dict[str, int] = field(default_factory=dict)


def scan(path: str, first: int) -> Scan:
    """
    Read and check every record of the segment file C{path}, whose first
    SEQ is C{first}, and index them.

    A record is valid if its magic, SEQ (following on from the one before),
    counts and CRC are right and its data ends with C{b"\\n"}; the scan stops
    at the first that is not.
    """
    segment = Segment(path, first)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return Scan(segment)
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as view, \
                memoryview(view) as data:
            position = 0
            expected = first
            marks: dict[str, int] = {}
            while position < size:
                if bytes(data[position:position + 4]) == MARK_MAGIC:
                    if size - position < MARK_HEADER.size:
                        return Scan(segment, f"an incomplete mark at offset {position}", True,
                                    marks)
                    _, length, mark, crc = MARK_HEADER.unpack_from(data, position)
                    begin = position + MARK_HEADER.size
                    end = begin + length
                    if not 0 < length <= 256:
                        return Scan(segment, f"a bad mark at offset {position}", False, marks)
                    if end > size:
                        return Scan(segment, f"an incomplete mark at offset {position}", True,
                                    marks)
                    if zlib.crc32(data[begin:end],
                                  zlib.crc32(MARK_FIELDS.pack(length, mark))) != crc:
                        return Scan(segment, f"a bad CRC at offset {position}", False, marks)
                    marks[bytes(data[begin:end]).decode("ascii", "replace")] = mark
                    segment.extend(end - position)
                    position = end
                    continue
                if size - position < HEADER.size:
                    if MAGIC.startswith(bytes(data[position:position + len(MAGIC)])) \
                            or MARK_MAGIC.startswith(bytes(data[position:position + 4])):
                        return Scan(segment, f"an incomplete header at offset {position}", True,
                                    marks)
                    return Scan(segment, f"no record at offset {position}", False, marks)
                magic, seq, count, length, crc = HEADER.unpack_from(data, position)
                begin = position + HEADER.size
                end = begin + length
                problem = None
                if magic != MAGIC:
                    problem = "no record"
                elif seq != expected:
                    problem = f"SEQ {seq} where {expected} was due"
                elif not 0 < count <= length:
                    problem = f"a count of {count} for {length} bytes"
                elif end > size:
                    return Scan(segment, f"an incomplete record at offset {position} "
                                         f"({size - begin} of its {length} bytes)", True, marks)
                elif zlib.crc32(data[begin:end], zlib.crc32(FIELDS.pack(seq, count, length))) \
                        != crc or data[end - 1] != 0x0A:
                    problem = "a bad CRC"
                if problem is not None:
                    return Scan(segment, f"{problem} at offset {position}", False, marks)
                segment.add(seq, count, end - position)
                expected = seq + count
                position = end
            return Scan(segment, marks=marks)
