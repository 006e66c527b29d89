"""
Redis glob patterns: L{globMatch} decides as Redis's C{stringmatchlen} does
(C{PSUBSCRIBE}, C{KEYS}, ACL channel patterns), so that a pattern in a
config file and one sent by a Redis client mean the same thing.

The rules, all of them Redis's (which differ from L{fnmatch}'s):

  - C{*} matches any run of bytes, C{?} any one byte; patterns and names are
    compared as bytes (a L{str} is taken as its UTF-8 encoding), so C{?}
    matches one byte of a multi-byte character.
  - C{[abc]}, C{[a-z]} (a reversed range C{[z-a]} is the same range) match one
    byte; C{[^a]} matches any byte but those.  C{[!a]} is I{not} a negation:
    it matches C{!} or C{a}.  A C{]} right after C{[} (or C{[^}) closes the
    class, so C{[]} matches nothing and C{[^]} any byte.  A class left open
    runs to the end of the pattern.
  - C{\\x} matches C{x} literally, outside a class and inside; a C{\\} at the
    very end of a pattern matches a C{\\}.
  - Nothing but the empty pattern matches the empty name (not even C{*}).
  - A pattern needing more than 1000 nested C{*} matches nothing (Redis's
    protection against abusive patterns).
  - Range bounds compare as C{char}, signed where C's C{char} is (x86-64, as
    Redis is mostly built): bytes of 0x80 and above sort below 0x00 there.

A pattern is compiled once (L{compileGlob}, cached) into a few fixed-length
regular expressions, one per run between C{*}s, matched left to right with no
backtracking across a C{*}: a hostile pattern such as C{*a*a*a*a*b} costs at
most O(len(pattern) * len(name)), never the exponential time of a naive
regular expression.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

#: Redis gives up on a pattern with more nested C{*} than this.
MAX_NESTING = 1000

_STAR = None  # a token that is a run of '*'
_ALL = frozenset(range(256))


def _signed(byte: int) -> int:
    """
    A byte as C's (signed) C{char}.
    """
    return byte - 256 if byte > 127 else byte


def _tokens(pattern: bytes) -> list[frozenset[int] | None]:
    """
    The pattern as a list of tokens: L{_STAR} for a run of C{*}, or the set
    of bytes one position may hold.  A transcription of Redis's
    C{stringmatchlen_impl} (src/util.c), whose reading of the pattern does
    not depend on the name.
    """
    tokens: list[frozenset[int] | None] = []
    n = len(pattern)
    i = 0
    while i < n:
        c = pattern[i]
        if c == 0x2A:  # '*'
            while i + 1 < n and pattern[i + 1] == 0x2A:
                i += 1
            tokens.append(_STAR)
        elif c == 0x3F:  # '?'
            tokens.append(_ALL)
        elif c == 0x5B:  # '['
            i += 1
            negate = i < n and pattern[i] == 0x5E  # '^'
            if negate:
                i += 1
            members: set[int] = set()
            while True:
                if i < n and pattern[i] == 0x5C and n - i >= 2:  # '\\' and one more
                    i += 1
                    members.add(pattern[i])
                elif i < n and pattern[i] == 0x5D:  # ']'
                    break
                elif i >= n:  # an open class: it ends with the pattern
                    i -= 1
                    break
                elif n - i >= 3 and pattern[i + 1] == 0x2D:  # 'a-z'
                    start, end = sorted((_signed(pattern[i]), _signed(pattern[i + 2])))
                    members.update(b for b in range(256) if start <= _signed(b) <= end)
                    i += 2
                else:
                    members.add(pattern[i])
                i += 1
            tokens.append(_ALL - members if negate else frozenset(members))
        elif c == 0x5C and n - i >= 2:  # '\\x'
            i += 1
            tokens.append(frozenset((pattern[i],)))
        else:
            tokens.append(frozenset((c,)))
        i += 1
    return tokens


def _regex(tokens: list[frozenset[int] | None]) -> re.Pattern[bytes]:
    """
    A regular expression matching exactly C{len(tokens)} bytes, each in its
    token's set.
    """
    parts = []
    for token in tokens:
        assert token is not None
        if token == _ALL:
            parts.append(b".")
        elif len(token) == 1:
            parts.append(re.escape(bytes(token)))
        elif not token:
            parts.append(b"(?!)")
        else:
            parts.append(b"[" + b"".join(b"\\x%02x" % b for b in sorted(token)) + b"]")
    return re.compile(b"".join(parts), re.DOTALL)


@dataclass(frozen=True)
class Glob:
    """
    A compiled Redis glob pattern (see L{compileGlob}).

    @ivar pattern: the pattern, as bytes.
    """

    pattern: bytes
    _segments: tuple[re.Pattern[bytes], ...]
    _lengths: tuple[int, ...]
    _never: bool

    def match(self, name: str | bytes) -> bool:
        """
        Whether C{name} matches the whole pattern.
        """
        if isinstance(name, str):
            name = name.encode("utf-8", "surrogateescape")
        if not name:
            return not self.pattern
        if self._never:
            return False
        segments, lengths = self._segments, self._lengths
        if len(segments) == 1:
            return segments[0].fullmatch(name) is not None
        # A run between two '*' has a fixed length, so its leftmost place
        # after the run before it is always the best one.
        if segments[0].match(name) is None:
            return False
        position = lengths[0]
        for segment in segments[1:-1]:
            found = segment.search(name, position)
            if found is None:
                return False
            position = found.end()
        start = len(name) - lengths[-1]
        return start >= position and segments[-1].fullmatch(name, start) is not None


@lru_cache(maxsize=4096)
def _compile(pattern: bytes) -> Glob:
    tokens = _tokens(pattern)
    runs: list[list[frozenset[int] | None]] = [[]]
    for token in tokens:
        if token is _STAR:
            runs.append([])
        else:
            runs[-1].append(token)
    stars = len(runs) - 1
    # Redis recurses once for each '*' it passes; past MAX_NESTING every
    # recursion fails, unless that '*' is the pattern's last token.
    never = stars > MAX_NESTING + 1 or (stars == MAX_NESTING + 1 and bool(runs[-1]))
    return Glob(pattern, tuple(_regex(run) for run in runs), tuple(len(run) for run in runs),
                never)


def compileGlob(pattern: str | bytes) -> Glob:
    """
    A Redis glob pattern, compiled; the last few thousand are cached, so
    calling this again with the same pattern is cheap.
    """
    if isinstance(pattern, str):
        pattern = pattern.encode("utf-8", "surrogateescape")
    return _compile(pattern)


def globMatch(pattern: str | bytes, name: str | bytes) -> bool:
    """
    Whether C{name} matches the Redis glob C{pattern}, as Redis's
    C{PSUBSCRIBE} would decide.
    """
    return compileGlob(pattern).match(name)
