"""
Access control (backplane.auth): Redis glob patterns, users and their tokens,
signed tokens (JWT), origins, and the Authority that decides and counts.

Pure and synchronous, except the comparison with a real redis-server, which
runs PSUBSCRIBE and PUBLISH over a blocking socket.
"""

from __future__ import annotations

import hashlib
import socket

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from backplane.auth.glob import MAX_NESTING, compileGlob, globMatch
from backplane.auth.identity import QUOTE_LIMIT, AccessDenied, Identity, Permissions, quote
from backplane.auth.users import User, Users, hashToken, newToken


def redisStringMatch(pattern: bytes, string: bytes) -> bool:
    """
    Redis's C{stringmatchlen} (src/util.c, nocase=0), transcribed line by
    line, as the test oracle for L{globMatch}: C{char} is signed (x86-64),
    and the pattern is followed by a NUL, as Redis's strings are.
    """
    P, S = pattern + b"\0", string + b"\0"
    skipLongerMatches = [False]

    def signed(b: int) -> int:
        return b - 256 if b > 127 else b

    def impl(p: int, pl: int, s: int, sl: int, nesting: int) -> bool:
        if nesting > 1000:
            return False
        while pl and sl:
            c = P[p]
            if c == ord("*"):
                while pl and P[p + 1] == ord("*"):
                    p, pl = p + 1, pl - 1
                if pl == 1:
                    return True
                while sl:
                    if impl(p + 1, pl - 1, s, sl, nesting + 1):
                        return True
                    if skipLongerMatches[0]:
                        return False
                    s, sl = s + 1, sl - 1
                skipLongerMatches[0] = True
                return False
            elif c == ord("?"):
                s, sl = s + 1, sl - 1
            elif c == ord("["):
                p, pl = p + 1, pl - 1
                negate = P[p] == ord("^")
                if negate:
                    p, pl = p + 1, pl - 1
                match = False
                while True:
                    if P[p] == ord("\\") and pl >= 2:
                        p, pl = p + 1, pl - 1
                        match = match or P[p] == S[s]
                    elif P[p] == ord("]"):
                        break
                    elif pl == 0:
                        p, pl = p - 1, pl + 1
                        break
                    elif pl >= 3 and P[p + 1] == ord("-"):
                        start, end = sorted((signed(P[p]), signed(P[p + 2])))
                        p, pl = p + 2, pl - 2
                        match = match or start <= signed(S[s]) <= end
                    else:
                        match = match or P[p] == S[s]
                    p, pl = p + 1, pl - 1
                if negate:
                    match = not match
                if not match:
                    return False
                s, sl = s + 1, sl - 1
            else:
                if c == ord("\\") and pl >= 2:
                    p, pl = p + 1, pl - 1
                if P[p] != S[s]:
                    return False
                s, sl = s + 1, sl - 1
            p, pl = p + 1, pl - 1
            if sl == 0:
                while P[p] == ord("*"):
                    p, pl = p + 1, pl - 1
                break
        return pl == 0 and sl == 0

    return impl(0, len(pattern), 0, len(string), 0)


#: (pattern, name, whether Redis matches), each checked against the oracle,
#: against globMatch, and against a real redis-server.
GLOB_CASES: list[tuple[bytes, bytes, bool]] = [
    # plain names, * and ?
    (b"TIME", b"TIME", True),
    (b"TIME", b"time", False),
    (b"TIME", b"TIMES", False),
    (b"*", b"anything", True),
    (b"*", b"", False),  # Redis: nothing but "" matches ""
    (b"", b"", True),
    (b"", b"a", False),
    (b"**", b"", False),
    (b"chat.*", b"chat.room", True),
    (b"chat.*", b"chat.", True),
    (b"chat.*", b"chat", False),
    (b"chat.*", b"xchat.room", False),
    (b"*.log", b"a.b.log", True),
    (b"a*b*c", b"abc", True),
    (b"a*b*c", b"aXbYbZc", True),
    (b"a*b*c", b"acb", False),
    (b"a*a", b"a", False),
    (b"a*a", b"aa", True),
    (b"a***b", b"ab", True),
    (b"h?llo", b"hello", True),
    (b"h?llo", b"hllo", False),
    (b"?", b"\xc3\xa9", False),  # ? is one byte, not one character
    (b"??", b"\xc3\xa9", True),
    # classes
    (b"h[ae]llo", b"hallo", True),
    (b"h[ae]llo", b"hillo", False),
    (b"h[^e]llo", b"hallo", True),
    (b"h[^e]llo", b"hello", False),
    (b"h[!e]llo", b"h!llo", True),  # [! is no negation in Redis (fnmatch differs)
    (b"h[!e]llo", b"hello", True),
    (b"h[!e]llo", b"hallo", False),
    (b"h[a-b]llo", b"hbllo", True),
    (b"h[a-b]llo", b"hcllo", False),
    (b"h[b-a]llo", b"hallo", True),  # a reversed range is the same range
    (b"[0-9][0-9]", b"42", True),
    (b"[0-9]", b"-", False),
    (b"[a-]", b"-", False),  # a-] is the range ']'..'a'
    (b"[a-]", b"_", True),
    (b"[]]", b"]", False),  # ']' first closes the class: it matches nothing
    (b"[]", b"a", False),
    (b"[^]", b"a", True),
    (b"[]a]", b"a]", False),
    (b"[]a]", b"]", False),
    (b"[\\]]", b"]", True),
    (b"[\\^a]", b"^", True),
    (b"[\\a-c]", b"b", False),  # an escaped a, then '-' and 'c' one by one
    (b"[\\a-c]", b"-", True),
    (b"[abc", b"b", True),  # an open class runs to the end of the pattern
    (b"[abc", b"d", False),
    (b"a[bc", b"ac", True),
    (b"[", b"[", False),
    (b"[^", b"x", True),
    (b"[*]", b"*", True),
    (b"[*]", b"a", False),
    (b"[?]", b"a", False),
    (b"[[]", b"[", True),
    (b"[a-\\]", b"\\", True),  # no escape as a range's end
    (b"[\x80-\xff]", b"\x90", True),  # bounds compare as signed char:
    (b"[\x80-\xff]", b"a", False),
    (b"[a-\xff]", b"a", True),  # 'a'..0xff is -1..97: 0x00 to 'a', and 0xff
    (b"[a-\xff]", b"b", False),
    (b"[a-\xff]", b"\x00", True),
    (b"[a-\xff]", b"\xff", True),
    (b"[a-\xff]", b"\x90", False),
    # escapes
    (b"\\*", b"*", True),
    (b"\\*", b"a", False),
    (b"\\?", b"?", True),
    (b"\\[a]", b"[a]", True),
    (b"a\\", b"a\\", True),  # a \ at the end matches a \
    (b"\\\\", b"\\", True),
    (b"\\a", b"a", True),
    # bytes that are no special character
    (b"a\x00b", b"a\x00b", True),
    (b"caf\xc3\xa9", b"caf\xc3\xa9", True),
    # nesting: Redis gives up after 1000 nested '*'
    (b"a*" * MAX_NESTING + b"b", b"a" * (MAX_NESTING + 5) + b"b", True),
    (b"a*" * (MAX_NESTING + 1) + b"b", b"a" * (MAX_NESTING + 5) + b"b", False),
    (b"a*" * (MAX_NESTING + 1), b"a" * (MAX_NESTING + 5) + b"b", True),
    (b"a*" * (MAX_NESTING + 2), b"a" * (MAX_NESTING + 5) + b"b", False),
]


def _bytesOf(alphabet: bytes, size: int) -> st.SearchStrategy[bytes]:
    return st.lists(st.sampled_from(alphabet), max_size=size).map(bytes)


class GlobTests(SynchronousTestCase):
    def test_cases(self) -> None:
        for pattern, name, expected in GLOB_CASES:
            self.assertEqual(globMatch(pattern, name), expected, (pattern[:40], name[:40]))

    def test_oracleAgrees(self) -> None:
        """
        The transcription of Redis's C code gives the table's answers (the
        deep-nesting cases need Python's recursion limit raised).
        """
        import sys

        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(10000)
        self.addCleanup(sys.setrecursionlimit, limit)
        for pattern, name, expected in GLOB_CASES:
            self.assertEqual(redisStringMatch(pattern, name), expected,
                             (pattern[:40], name[:40]))

    def test_strAsUTF8(self) -> None:
        self.assertTrue(globMatch("café.*", "café.menu"))
        self.assertTrue(globMatch(b"caf\xc3\xa9", "café"))
        self.assertTrue(globMatch("caf??", "café"))
        self.assertFalse(globMatch("caf?", "café"))

    def test_compiledOnce(self) -> None:
        self.assertIs(compileGlob("chat.*"), compileGlob(b"chat.*"))
        glob = compileGlob("chat.*")
        self.assertTrue(glob.match("chat.x"))
        self.assertEqual(glob.pattern, b"chat.*")

    def test_hostilePatternsAreCheap(self) -> None:
        """
        Patterns that make a backtracking matcher take exponential or high
        polynomial time are matched in about linear time.
        """
        import time

        name = b"a" * 20000
        started = time.perf_counter()
        self.assertFalse(globMatch(b"*a" * 50 + b"b", name))
        self.assertFalse(globMatch(b"*" + b"?" * 100 + b"*b", name))
        self.assertFalse(globMatch(b"*a*a*a*a*a*a*a*a*a*a*a*ab", name))
        self.assertLess(time.perf_counter() - started, 2.0)

    @settings(max_examples=1000, deadline=None)
    @given(_bytesOf(b"ab*?[]^!-\\\x80\xff", 10), _bytesOf(b"ab*?[]^!-\\\x80\xff\x00", 8))
    def test_asRedisDoes(self, pattern: bytes, name: bytes) -> None:
        """
        For patterns and names made of the characters that matter, globMatch
        decides as Redis's C code does.
        """
        self.assertEqual(globMatch(pattern, name), redisStringMatch(pattern, name),
                         (pattern, name))


def _resp(reader: object, sock: socket.socket, count: int) -> list[object]:
    replies: list[object] = []
    while len(replies) < count:
        reply = reader.gets()  # type: ignore[attr-defined]
        if reply is False:
            data = sock.recv(1 << 20)
            assert data, "redis-server closed the connection"
            reader.feed(data)  # type: ignore[attr-defined]
        else:
            replies.append(reply)
    return replies


def test_globMatchAsRealRedis(redis_server) -> None:
    """
    A real redis-server's PSUBSCRIBE agrees with globMatch: the table, and
    random patterns and names made of the characters that matter.
    """
    import random

    import hiredis

    from tests.redis_helpers import encodeCommand

    rng = random.Random(11)
    alphabet = b"ab*?[]^!-\\\x80\xff"
    patterns = {pattern for pattern, _, _ in GLOB_CASES}
    while len(patterns) < 800:
        patterns.add(bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 7))))
    names = {name for _, name, _ in GLOB_CASES}
    while len(names) < 120:
        names.add(bytes(rng.choice(alphabet + b"\x00") for _ in range(rng.randint(0, 5))))
    ordered = sorted(patterns)
    reader = hiredis.Reader()
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=10) as sub:
        sub.sendall(encodeCommand(b"PSUBSCRIBE", *ordered))
        _resp(reader, sub, len(ordered))
        wrong = []
        for name in sorted(names):
            count = redis_server.publish(name, b"x")
            # PING after PUBLISH: its PONG comes after every pmessage.
            sub.sendall(encodeCommand(b"PING"))
            replies = _resp(reader, sub, count + 1)
            matched = {reply[1] for reply in replies[:-1]}  # type: ignore[index]
            assert replies[-1] == [b"pong", b""]
            wrong += [(pattern[:30], name[:30], pattern in matched) for pattern in ordered
                      if (pattern in matched) != globMatch(pattern, name)]
    assert not wrong, wrong[:20]


class PermissionsTests(SynchronousTestCase):
    def test_namesAndPatterns(self) -> None:
        permissions = Permissions(publish=("CHAT", "chat.*"), subscribe=("*",))
        self.assertTrue(permissions.mayPublish("CHAT"))
        self.assertTrue(permissions.mayPublish("chat.room"))
        self.assertTrue(permissions.mayPublish(b"chat.room"))
        self.assertFalse(permissions.mayPublish("chat"))
        self.assertFalse(permissions.mayPublish("TIME"))
        self.assertTrue(permissions.maySubscribe("TIME"))

    def test_nothingByDefault(self) -> None:
        self.assertFalse(Permissions().mayPublish("A"))
        self.assertFalse(Permissions().maySubscribe("A"))
        self.assertFalse(Permissions(publish=("A",)).maySubscribe("A"))


class AccessDeniedTests(SynchronousTestCase):
    def test_fields(self) -> None:
        denied = AccessDenied("unknown token", code="unknown")
        self.assertEqual((denied.reason, denied.status, denied.code),
                         ("unknown token", 401, "unknown"))
        self.assertEqual(str(denied), "unknown token")
        self.assertEqual(repr(denied), "AccessDenied('unknown token', 401, code='unknown')")
        self.assertEqual(AccessDenied("no", 403).status, 403)

    def test_onlyAuthStatuses(self) -> None:
        self.assertRaises(ValueError, AccessDenied, "no", 500)

    def test_quoteIsShortAndOneLine(self) -> None:
        self.assertEqual(quote("chat"), "'chat'")
        self.assertEqual(quote(b"a\nb\xff\x1b"), "'a\\nb\ufffd\\x1b'")
        long = quote("x" * 1000)
        self.assertLessEqual(len(long), QUOTE_LIMIT + 5)
        self.assertTrue(long.endswith("..."))


TOKEN = "s3cret-token-for-alice"
ALICE = User("alice", Permissions(("chat.*",), ("*",)),
             tokenSha256=hashlib.sha256(TOKEN.encode()).digest())
BOB = User("bob", Permissions((), ("TIME",)), cert="bob.example.com")
CAROL = User("carol", Permissions(("LOGS",)), tokenSha256=hashlib.sha256(b"carol").digest(),
             cert="carol")


class UsersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.users = Users([ALICE, BOB, CAROL])

    def test_hashToken(self) -> None:
        self.assertEqual(hashToken(TOKEN), hashlib.sha256(TOKEN.encode()).hexdigest())
        self.assertEqual(hashToken(b"abc"), hashToken("abc"))
        self.assertEqual(hashToken("café"), hashlib.sha256("café".encode()).hexdigest())

    def test_newToken(self) -> None:
        tokens = {newToken() for _ in range(20)}
        self.assertEqual(len(tokens), 20)
        for token in tokens:
            self.assertEqual(len(token), 43)
            self.assertRegex(token, r"^[A-Za-z0-9_-]+$")

    def test_authenticate(self) -> None:
        identity = self.users.authenticate(TOKEN)
        self.assertEqual(identity, Identity("alice", ALICE.permissions, None))
        self.assertEqual(self.users.authenticate(TOKEN.encode()), identity)
        self.assertEqual(self.users.authenticate("carol").name, "carol")

    def test_unknown(self) -> None:
        self.assertIsNone(self.users.authenticate("nope"))
        self.assertIsNone(self.users.authenticate(TOKEN + " "))
        self.assertIsNone(self.users.authenticate(""))
        self.assertIsNone(self.users.authenticate(hashToken(TOKEN)), "the hash is no token")

    def test_comparedInConstantTime(self) -> None:
        """
        Every user's digest is compared with hmac.compare_digest, all of
        them, however early the match.
        """
        import hmac

        calls = []
        original = hmac.compare_digest

        def compare(a: bytes, b: bytes) -> bool:
            calls.append((a, b))
            return original(a, b)

        self.patch(hmac, "compare_digest", compare)
        self.users.authenticate(TOKEN)
        self.assertEqual(len(calls), 2, "alice and carol have tokens")
        self.assertEqual(calls[0][0], hashlib.sha256(TOKEN.encode()).digest())

    def test_fromCertificate(self) -> None:
        self.assertEqual(self.users.fromCertificate("bob.example.com"),
                         Identity("bob", BOB.permissions))
        self.assertEqual(self.users.fromCertificate("carol").name, "carol")
        self.assertIsNone(self.users.fromCertificate("BOB.example.com"))
        self.assertIsNone(self.users.fromCertificate("alice"))
        self.assertIsNone(self.users.fromCertificate(""))
        self.assertIsNone(self.users.fromCertificate(None))

    def test_registry(self) -> None:
        self.assertEqual(len(self.users), 3)
        self.assertEqual([user.name for user in self.users], ["alice", "bob", "carol"])
        self.assertIn("bob", self.users)
        self.assertIs(self.users.get("bob"), BOB)
        self.assertIsNone(self.users.get("dave"))

    def test_unique(self) -> None:
        self.assertRaises(ValueError, Users, [ALICE, User("alice", Permissions())])
        error = self.assertRaises(ValueError, Users,
                                  [BOB, User("b2", Permissions(), cert=BOB.cert)])
        self.assertIn("same cert", str(error))
        error = self.assertRaises(ValueError, Users, [
            ALICE, User("a2", Permissions(), tokenSha256=ALICE.tokenSha256)])
        self.assertIn("token of another user", str(error))

    def test_digestSize(self) -> None:
        self.assertRaises(ValueError, User, "x", Permissions(), tokenSha256=b"short")

    def test_reprHidesTheDigest(self) -> None:
        assert ALICE.tokenSha256 is not None
        self.assertNotIn(ALICE.tokenSha256.hex()[:16], repr(ALICE))
        self.assertNotIn(repr(ALICE.tokenSha256)[:16], repr(ALICE))
