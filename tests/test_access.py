"""
Access control (backplane.auth): Redis glob patterns, users and their tokens,
signed tokens (JWT), origins, and the Authority that decides and counts.

Pure and synchronous, except the comparison with a real redis-server, which
runs PSUBSCRIBE and PUBLISH over a blocking socket.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import socket
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from backplane.auth.authority import MAX_TOKEN_LENGTH, AccessCounters, Authority
from backplane.auth.glob import MAX_NESTING, compileGlob, globMatch
from backplane.auth.identity import QUOTE_LIMIT, AccessDenied, Identity, Permissions, quote
from backplane.auth.origins import Origin, checkOrigin, originAllowed, parseOrigin
from backplane.auth.signed import (
    ANONYMOUS,
    DEFAULT_LEEWAY,
    MAX_KEY_FILE,
    JWTVerifier,
    KeyFileError,
    loadKey,
)
from backplane.auth.users import User, Users, hashToken, newToken
from backplane.auth.wire import SUBPROTOCOL, authLine, bearerToken, subprotocolToken
from backplane.config import parseConfig
from tests.helpers import tempDir


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


class _Replies:
    """
    Redis replies read from a blocking socket, parsed by the tests' own RESP
    parser.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def read(self, count: int) -> list[object]:
        from tests.redis_helpers import _parse

        replies: list[object] = []
        while len(replies) < count:
            parsed = _parse(self.buffer, 0)
            if parsed is None:
                data = self.sock.recv(1 << 20)
                assert data, "redis-server closed the connection"
                self.buffer += data
            else:
                reply, end = parsed
                self.buffer = self.buffer[end:]
                replies.append(reply)
        return replies


def test_globMatchAsRealRedis(redis_server) -> None:
    """
    A real redis-server's PSUBSCRIBE agrees with globMatch: the table, and
    random patterns and names made of the characters that matter.
    """
    import random

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
    with socket.create_connection(("127.0.0.1", redis_server.port), timeout=10) as sub:
        replies = _Replies(sub)
        sub.sendall(encodeCommand(b"PSUBSCRIBE", *ordered))
        replies.read(len(ordered))
        wrong = []
        for name in sorted(names):
            count = redis_server.publish(name, b"x")
            # PING after PUBLISH: its PONG comes after every pmessage.
            sub.sendall(encodeCommand(b"PING"))
            *messages, pong = replies.read(count + 1)
            assert pong == [b"pong", b""], pong
            matched = {message[1] for message in messages}  # type: ignore[index]
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
        carol = self.users.authenticate("carol")
        assert carol is not None
        self.assertEqual(carol.name, "carol")

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
        carol = self.users.fromCertificate("carol")
        assert carol is not None
        self.assertEqual(carol.name, "carol")
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


# Signed tokens.

NOW = 1_700_000_000.0
SECRET = b"0123456789abcdef0123456789abcdef-backplane"


@functools.cache
def _ed25519() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@functools.cache
def _rsa(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


PrivateKey = Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _publicPEM(private: PrivateKey,
               form: serialization.PublicFormat = serialization.PublicFormat.SubjectPublicKeyInfo
               ) -> bytes:
    return private.public_key().public_bytes(serialization.Encoding.PEM, form)


def _privatePEM(private: PrivateKey) -> bytes:
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """
    A token signed by hand with HMAC-SHA256 (PyJWT refuses to use a PEM key
    as an HMAC secret, which is what an attacker would do).
    """
    signingInput = _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, signingInput.encode(), hashlib.sha256).digest()
    return signingInput + "." + _b64(signature)


def _clock(now: float = NOW) -> Clock:
    clock = Clock()
    clock.advance(now)
    return clock


class JWTVerifierTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.verifier = JWTVerifier(SECRET, clock=_clock())

    def claims(self, **claims: Any) -> dict[str, Any]:
        return {"exp": NOW + 60, **claims}

    def hs256(self, **claims: Any) -> str:
        return jwt.encode(self.claims(**claims), SECRET, algorithm="HS256")

    def assertDenied(self, verifier: JWTVerifier, token: str, reason: str,
                     code: str = "invalid") -> AccessDenied:
        denied: AccessDenied = self.assertRaises(AccessDenied, verifier.verify, token)
        self.assertEqual((denied.reason, denied.status, denied.code), (reason, 401, code))
        return denied

    def test_hs256(self) -> None:
        identity = self.verifier.verify(
            self.hs256(sub="page-17", publish=["chat.*", "CHAT"], subscribe="TIME"))
        self.assertEqual(identity, Identity(
            "page-17", Permissions(("chat.*", "CHAT"), ("TIME",)), NOW + 60))
        self.assertEqual(self.verifier.algorithm, "HS256")

    def test_noSubNoRights(self) -> None:
        identity = self.verifier.verify(self.hs256())
        self.assertEqual(identity, Identity(ANONYMOUS, Permissions(), NOW + 60))

    def test_eddsa(self) -> None:
        verifier = JWTVerifier(_ed25519().public_key(), clock=_clock())
        self.assertEqual(verifier.algorithm, "EdDSA")
        token = jwt.encode(self.claims(subscribe=["*"]), _ed25519(), algorithm="EdDSA")
        self.assertEqual(verifier.verify(token).permissions, Permissions((), ("*",)))

    def test_rs256(self) -> None:
        verifier = JWTVerifier(_rsa().public_key(), clock=_clock())
        self.assertEqual(verifier.algorithm, "RS256")
        token = jwt.encode(self.claims(publish="LOGS"), _rsa(), algorithm="RS256")
        self.assertEqual(verifier.verify(token).permissions, Permissions(("LOGS",)))

    def test_expired(self) -> None:
        self.assertDenied(self.verifier, self.hs256(exp=NOW - DEFAULT_LEEWAY - 1),
                          "token expired", "expired")
        self.assertDenied(self.verifier, self.hs256(exp=NOW - DEFAULT_LEEWAY),
                          "token expired", "expired")

    def test_leeway(self) -> None:
        self.verifier.verify(self.hs256(exp=NOW - DEFAULT_LEEWAY + 1))
        self.verifier.verify(self.hs256(nbf=NOW + DEFAULT_LEEWAY))
        strict = JWTVerifier(SECRET, leeway=0, clock=_clock())
        self.assertDenied(strict, self.hs256(exp=NOW - 1), "token expired", "expired")

    def test_clock(self) -> None:
        clock = _clock()
        verifier = JWTVerifier(SECRET, clock=clock)
        token = self.hs256(exp=NOW + 10)
        verifier.verify(token)
        clock.advance(10 + DEFAULT_LEEWAY)
        self.assertDenied(verifier, token, "token expired", "expired")

    def test_notYetValid(self) -> None:
        self.assertDenied(self.verifier, self.hs256(nbf=NOW + DEFAULT_LEEWAY + 1),
                          "token not valid yet", "early")

    def test_missingExp(self) -> None:
        token = jwt.encode({"subscribe": "*"}, SECRET, algorithm="HS256")
        self.assertDenied(self.verifier, token, "token has no 'exp' claim")

    def test_expNotANumber(self) -> None:
        for exp in ["soon", True, None, [NOW], float("inf")]:
            token = jwt.encode({"exp": exp}, SECRET, algorithm="HS256")
            reason = "token has no 'exp' claim" if exp is None else \
                "token claim 'exp' must be a number"
            self.assertDenied(self.verifier, token, reason)
        token = jwt.encode(self.claims(nbf="now"), SECRET, algorithm="HS256")
        self.assertDenied(self.verifier, token, "token claim 'nbf' must be a number")

    def test_wrongClaimTypes(self) -> None:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"publish": 5}, "token claim 'publish' must be a string or a list of strings"),
            ({"subscribe": ["A", 1]},
             "token claim 'subscribe' must be a string or a list of strings"),
            ({"subscribe": {"A": 1}},
             "token claim 'subscribe' must be a string or a list of strings"),
            ({"sub": 17}, "token claim 'sub' must be a non-empty string"),
            ({"sub": ""}, "token claim 'sub' must be a non-empty string"),
        ]
        for claims, reason in cases:
            self.assertDenied(self.verifier, self.hs256(**claims), reason)

    def test_tampered(self) -> None:
        header, payload, signature = self.hs256(subscribe="TIME").split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["subscribe"] = "*"
        tampered = f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"
        self.assertDenied(self.verifier, tampered, "token signature does not verify")
        flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
        self.assertDenied(self.verifier, f"{header}.{payload}.{flipped}",
                          "token signature does not verify")

    def test_wrongKey(self) -> None:
        token = jwt.encode(self.claims(), b"another secret, 32 bytes or more!!", algorithm="HS256")
        self.assertDenied(self.verifier, token, "token signature does not verify")
        other = Ed25519PrivateKey.generate()
        verifier = JWTVerifier(_ed25519().public_key(), clock=_clock())
        self.assertDenied(verifier, jwt.encode(self.claims(), other, algorithm="EdDSA"),
                          "token signature does not verify")

    def test_algNone(self) -> None:
        unsigned = jwt.encode(self.claims(subscribe="*"), "", algorithm="none")
        self.assertTrue(unsigned.endswith("."))
        for verifier in [self.verifier, JWTVerifier(_ed25519().public_key(), clock=_clock()),
                         JWTVerifier(_rsa().public_key(), clock=_clock())]:
            self.assertDenied(verifier, unsigned, "token algorithm not allowed")
        forged = _forged({"alg": "none"}, self.claims(subscribe="*"), b"")
        self.assertDenied(self.verifier, forged.rsplit(".", 1)[0] + ".",
                          "token algorithm not allowed")

    def test_publicKeyIsNoHMACSecret(self) -> None:
        """
        The HS256/RS256 confusion: a token signed with HMAC, using the
        server's public key (which anyone may have) as the secret, is refused.
        """
        privates: list[Ed25519PrivateKey | rsa.RSAPrivateKey] = [_rsa(), _ed25519()]
        for private in privates:
            pem = _publicPEM(private)
            verifier = JWTVerifier(private.public_key(), clock=_clock())
            for alg in ["HS256", "HS384", "HS512"]:
                forged = _forged({"alg": alg, "typ": "JWT"}, self.claims(publish="*"), pem)
                self.assertDenied(verifier, forged, "token algorithm not allowed")

    def test_otherAlgorithms(self) -> None:
        rs256 = jwt.encode(self.claims(), _rsa(), algorithm="RS256")
        eddsa = jwt.encode(self.claims(), _ed25519(), algorithm="EdDSA")
        hs512 = jwt.encode(self.claims(), SECRET * 2, algorithm="HS512")
        self.assertDenied(self.verifier, rs256, "token algorithm not allowed")
        self.assertDenied(self.verifier, eddsa, "token algorithm not allowed")
        self.assertDenied(self.verifier, hs512, "token algorithm not allowed")
        verifier = JWTVerifier(_rsa().public_key(), clock=_clock())
        self.assertDenied(verifier, eddsa, "token algorithm not allowed")
        ps256 = jwt.encode(self.claims(), _rsa(), algorithm="PS256")
        self.assertDenied(verifier, ps256, "token algorithm not allowed")

    def test_malformed(self) -> None:
        for token in ["a.b.c", "x", "..", "a.b", "eyJhbGciOiJIUzI1NiJ9.!!!.x", "é.é.é",
                      _b64(b"[1]") + "." + _b64(b"{}") + ".x",
                      _forged({"alg": "HS256"}, self.claims(), SECRET).replace(".", ". ", 1)]:
            denied = self.assertRaises(AccessDenied, self.verifier.verify, token)
            self.assertEqual(denied.status, 401)
            self.assertIn(denied.reason, ("malformed token", "invalid token",
                                          "token signature does not verify"), token)

    def test_payloadNotAnObject(self) -> None:
        token = _forged({"alg": "HS256"}, self.claims(), SECRET)
        header, _, _ = token.split(".")
        signingInput = header + "." + _b64(b"[1, 2]")
        signature = hmac.new(SECRET, signingInput.encode(), hashlib.sha256).digest()
        self.assertDenied(self.verifier, signingInput + "." + _b64(signature), "malformed token")

    def test_audience(self) -> None:
        verifier = JWTVerifier(SECRET, audience="backplane", clock=_clock())
        verifier.verify(self.hs256(aud="backplane"))
        verifier.verify(self.hs256(aud=["other", "backplane"]))
        self.assertDenied(verifier, self.hs256(aud="other"), "token is for another audience")
        self.assertDenied(verifier, self.hs256(), "token has no 'aud' claim")
        self.assertDenied(self.verifier, self.hs256(aud="backplane"),
                          "token is for another audience")

    def test_issuer(self) -> None:
        verifier = JWTVerifier(SECRET, issuer="https://app.example.com", clock=_clock())
        verifier.verify(self.hs256(iss="https://app.example.com"))
        self.assertDenied(verifier, self.hs256(iss="https://evil.example"),
                          "token is from another issuer")
        self.assertDenied(verifier, self.hs256(), "token has no 'iss' claim")
        self.verifier.verify(self.hs256(iss="anyone"))

    def test_reasonsQuoteNothing(self) -> None:
        secretish = "A" * 200
        for token in [secretish, f"{secretish}.{secretish}.{secretish}"]:
            denied = self.assertRaises(AccessDenied, self.verifier.verify, token)
            self.assertNotIn("AAAA", denied.reason)
            self.assertLess(len(denied.reason), 64)

    def test_keyTypes(self) -> None:
        self.assertRaises(TypeError, JWTVerifier, "a str secret")
        self.assertRaises(TypeError, JWTVerifier, _ed25519())

    def test_reprHidesTheSecret(self) -> None:
        self.assertEqual(repr(self.verifier), "<JWTVerifier HS256>")


class KeyFileTests(SynchronousTestCase):
    def write(self, data: bytes) -> str:
        path = tempDir(self) / "key"
        path.write_bytes(data)
        return str(path)

    def assertKeyFileError(self, data: bytes | str, *fragments: str) -> None:
        path = self.write(data) if isinstance(data, bytes) else data
        error = self.assertRaises(KeyFileError, JWTVerifier.fromKeyFile, path)
        for fragment in fragments:
            self.assertIn(fragment, str(error))

    def test_secretOneNewlineStripped(self) -> None:
        verifier = JWTVerifier.fromKeyFile(self.write(SECRET + b"\n"), clock=_clock())
        self.assertEqual(verifier.algorithm, "HS256")
        claims = {"exp": NOW + 60}
        verifier.verify(jwt.encode(claims, SECRET, algorithm="HS256"))
        self.assertRaises(AccessDenied, verifier.verify,
                          jwt.encode(claims, SECRET + b"\n", algorithm="HS256"))
        twice = JWTVerifier.fromKeyFile(self.write(SECRET + b"\n\n"), clock=_clock())
        twice.verify(jwt.encode(claims, SECRET + b"\n", algorithm="HS256"))
        verbatim = JWTVerifier.fromKeyFile(self.write(SECRET), clock=_clock())
        verbatim.verify(jwt.encode(claims, SECRET, algorithm="HS256"))

    def test_binarySecret(self) -> None:
        secret = bytes(range(256))
        verifier = JWTVerifier.fromKeyFile(self.write(secret), clock=_clock())
        verifier.verify(jwt.encode({"exp": NOW + 60}, secret, algorithm="HS256"))

    def test_publicKeys(self) -> None:
        ed = JWTVerifier.fromKeyFile(self.write(_publicPEM(_ed25519())))
        self.assertEqual(ed.algorithm, "EdDSA")
        rsaKey = JWTVerifier.fromKeyFile(self.write(_publicPEM(_rsa())))
        self.assertEqual(rsaKey.algorithm, "RS256")
        pkcs1 = _publicPEM(_rsa(), serialization.PublicFormat.PKCS1)
        self.assertIn(b"BEGIN RSA PUBLIC KEY", pkcs1)
        self.assertEqual(JWTVerifier.fromKeyFile(self.write(pkcs1)).algorithm, "RS256")

    def test_shortSecret(self) -> None:
        self.assertKeyFileError(b"x" * 31 + b"\n", "at least 32 bytes", "this one is 31")
        self.assertKeyFileError(b"", "it is empty")
        self.assertKeyFileError(b"\n", "it is empty")

    def test_privateKey(self) -> None:
        self.assertKeyFileError(_privatePEM(_ed25519()), "private key", "-pubout")
        self.assertKeyFileError(_privatePEM(_rsa()), "private key")

    def test_certificate(self) -> None:
        from tests.certs import Certificates

        certs = Certificates.make(tempDir(self))
        self.assertKeyFileError(str(certs.ca.path), "certificate", "-pubkey")

    def test_unsupportedPublicKeys(self) -> None:
        self.assertKeyFileError(_publicPEM(ec.generate_private_key(ec.SECP256R1())),
                                "unsupported public key", "Ed25519", "RSA")
        self.assertKeyFileError(_publicPEM(_rsa(1024)), "at least 2048 bits", "1024")

    def test_neverAnHMACSecret(self) -> None:
        """
        Anything that looks like a key but cannot be loaded as a public key
        is refused, never taken as an HS256 secret.
        """
        self.assertKeyFileError(b"-----BEGIN PUBLIC KEY-----\nbroken\n-----END PUBLIC KEY-----\n",
                                "not a valid PEM public key")
        openssh = _ed25519().public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                       serialization.PublicFormat.OpenSSH)
        self.assertKeyFileError(openssh + b" user@host\n", "OpenSSH public key", "ssh-keygen")
        self.assertKeyFileError(b'{"kty": "OKP", "crv": "Ed25519", "x": "' + b"A" * 43 + b'"}',
                                "JSON Web Key")

    def test_unreadable(self) -> None:
        folder = tempDir(self)
        self.assertKeyFileError(str(folder / "nope"), "cannot read it: No such file")
        self.assertKeyFileError(str(folder), "not a regular file")

    def test_devZero(self) -> None:
        """
        A device that never ends is not read.
        """
        self.assertKeyFileError("/dev/zero", "not a regular file")

    def test_tooBig(self) -> None:
        self.assertKeyFileError(b"x" * (MAX_KEY_FILE + 1), "too big")
        JWTVerifier.fromKeyFile(self.write(b"x" * MAX_KEY_FILE))

    def test_loadKey(self) -> None:
        self.assertEqual(loadKey(SECRET + b"\n"), SECRET)
        self.assertIsInstance(loadKey(_publicPEM(_ed25519())), Ed25519PublicKey)


class OriginTests(SynchronousTestCase):
    """
    originAllowed: SPEC section 11's default (same origin, or no Origin at
    all) and the origins a port lists.
    """

    def assertAllowed(self, origin: str | None, host: str | None, scheme: str = "http",
                      allowed: tuple[str, ...] | None = None) -> None:
        self.assertTrue(originAllowed(origin, host, allowed, scheme), (origin, host, scheme))

    def assertRefused(self, origin: str | None, host: str | None, scheme: str = "http",
                      allowed: tuple[str, ...] | None = None) -> None:
        self.assertFalse(originAllowed(origin, host, allowed, scheme), (origin, host, scheme))

    def test_noOrigin(self) -> None:
        self.assertAllowed(None, "example.com")
        self.assertAllowed(None, None)
        self.assertAllowed(None, None, allowed=())

    def test_sameOrigin(self) -> None:
        self.assertAllowed("http://example.com", "example.com")
        self.assertAllowed("http://example.com:8080", "example.com:8080")
        self.assertAllowed("https://example.com", "example.com", "https")
        self.assertAllowed("http://127.0.0.1:1502", "127.0.0.1:1502")

    def test_defaultPorts(self) -> None:
        self.assertAllowed("http://example.com:80", "example.com")
        self.assertAllowed("http://example.com", "example.com:80")
        self.assertAllowed("https://example.com", "example.com:443", "https")
        self.assertAllowed("https://example.com:443", "example.com", "https")
        self.assertAllowed("http://example.com", "example.com:", "http")

    def test_otherPort(self) -> None:
        self.assertRefused("http://example.com:8080", "example.com")
        self.assertRefused("http://example.com", "example.com:8080")
        self.assertRefused("http://example.com:443", "example.com:80")

    def test_otherScheme(self) -> None:
        self.assertRefused("https://example.com", "example.com", "http")
        self.assertRefused("http://example.com", "example.com", "https")
        self.assertRefused("http://example.com:443", "example.com", "https")
        self.assertRefused("https://example.com:80", "example.com", "http")

    def test_webSocketSchemes(self) -> None:
        self.assertAllowed("https://example.com", "example.com", "wss")
        self.assertAllowed("http://example.com", "example.com", "ws")
        self.assertAllowed("http://example.com", "example.com", "WS")
        self.assertRefused("https://example.com", "example.com", "ws")

    def test_otherHost(self) -> None:
        self.assertRefused("http://evil.example", "example.com")
        self.assertRefused("http://example.com.evil.example", "example.com")
        self.assertRefused("http://localhost:1502", "127.0.0.1:1502")
        self.assertRefused("http://sub.example.com", "example.com")

    def test_case(self) -> None:
        self.assertAllowed("HTTP://Example.COM", "example.com")
        self.assertAllowed("http://example.com", "EXAMPLE.com")
        self.assertAllowed("http://example.com", "example.com", "HTTP")

    def test_trailingDot(self) -> None:
        self.assertAllowed("http://example.com.", "example.com")
        self.assertAllowed("http://example.com", "example.com.:80")
        self.assertAllowed("http://example.com.", "example.com.")
        self.assertRefused("http://example.com..", "example.com")

    def test_ipv6(self) -> None:
        self.assertAllowed("http://[::1]:8080", "[::1]:8080")
        self.assertAllowed("http://[::1]", "[::1]")
        self.assertAllowed("http://[::1]", "[0:0:0:0:0:0:0:1]:80")
        self.assertAllowed("http://[2001:DB8::1]", "[2001:db8::1]")
        self.assertRefused("http://[::2]:8080", "[::1]:8080")
        self.assertRefused("http://[::1]:8080", "[::1]")
        self.assertRefused("http://[::1]", "::1")
        self.assertRefused("http://[::1", "[::1")
        self.assertRefused("http://[example.com]", "[example.com]")
        self.assertRefused("http://[::1]x", "[::1]x")

    def test_null(self) -> None:
        """
        C{Origin: null} (a sandboxed frame, a file: page, some redirects) is
        no same origin, and only C{"*"} allows it.
        """
        self.assertRefused("null", "example.com")
        self.assertRefused("null", "null")
        self.assertRefused("null", "example.com", allowed=("null", "http://example.com"))
        self.assertAllowed("null", "example.com", allowed=("*",))

    def test_malformed(self) -> None:
        for origin in ["", "example.com", "http://", "http://example.com/",
                       "http://example.com/page", "http://user@example.com",
                       "http://example.com?x", "http://example.com https://example.com",
                       "http://example.com:99999", "http://example.com:0", "http://exa mple.com",
                       "http://example.com:+80", "http://example.com:-1", "http:// example.com"]:
            self.assertRefused(origin, "example.com", allowed=("http://example.com",))

    def test_badHost(self) -> None:
        self.assertRefused("http://example.com", None)
        self.assertRefused("http://example.com", "")
        self.assertRefused("http://example.com", "example.com:http")
        self.assertRefused("http://example.com", "example.com:80:80")
        self.assertRefused("http://example.com", "example.com/")

    def test_listed(self) -> None:
        allowed = ("https://app.example.com", "http://localhost:3000")
        for origin in ["https://app.example.com", "https://app.example.com:443",
                       "https://APP.example.com", "https://app.example.com.",
                       "http://localhost:3000"]:
            self.assertAllowed(origin, "backplane.example.com", "https", allowed)
        for origin in ["https://evil.example", "http://app.example.com",
                       "https://app.example.com:8443", "https://app.example.com.evil.example",
                       "http://localhost:3001", "http://localhost"]:
            self.assertRefused(origin, "backplane.example.com", "https", allowed)

    def test_listedKeepsSameOrigin(self) -> None:
        self.assertAllowed("https://backplane.example.com", "backplane.example.com", "https",
                           ("https://app.example.com",))
        self.assertAllowed("https://app.example.com", None, "https", ("https://app.example.com",))

    def test_star(self) -> None:
        for origin in ["https://evil.example", "null", "garbage"]:
            self.assertAllowed(origin, "example.com", "https", ("https://app.example.com", "*"))

    def test_parseOrigin(self) -> None:
        self.assertEqual(parseOrigin("HTTPS://App.Example.com:443"),
                         Origin("https", "app.example.com", 443))
        self.assertEqual(str(parseOrigin("https://app.example.com:443")),
                         "https://app.example.com")
        self.assertEqual(str(parseOrigin("http://[0::1]:8080")), "http://[::1]:8080")
        self.assertEqual(parseOrigin("chrome-extension://abc"),
                         Origin("chrome-extension", "abc", None))
        error = self.assertRaises(ValueError, parseOrigin, "https://app.example.com/")
        self.assertIn("scheme://host[:port]", str(error))
        self.assertRaises(ValueError, parseOrigin, "null")

    def test_checkOrigin(self) -> None:
        checkOrigin(None, "example.com", None, "http")
        checkOrigin("http://example.com", "example.com", None, "http")
        denied = self.assertRaises(AccessDenied, checkOrigin, "https://evil.example/" + "x" * 200,
                                   "example.com", None, "https")
        self.assertEqual((denied.status, denied.code), (403, "origin"))
        self.assertTrue(denied.reason.startswith("origin 'https://evil.example/x"))
        self.assertLess(len(denied.reason), 100)


class AuthorityTests(SynchronousTestCase):
    """
    Authority: the one entry point, which counts and logs every decision.
    """

    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.authority = Authority(Users([ALICE, BOB, CAROL]),
                                   JWTVerifier(SECRET, clock=_clock()))

        @provider(ILogObserver)
        def observe(event: LogEvent) -> None:
            self.events.append(event)

        self.authority.log = Logger(observer=observe)

    def signed(self, **claims: Any) -> str:
        return jwt.encode({"exp": NOW + 60, **claims}, SECRET, algorithm="HS256")

    def assertDenied(self, token: Any, reason: str, code: str) -> AccessDenied:
        denied: AccessDenied = self.assertRaises(AccessDenied, self.authority.identify, token)
        self.assertEqual((denied.reason, denied.status, denied.code), (reason, 401, code))
        return denied

    def test_userToken(self) -> None:
        self.assertEqual(self.authority.identify(TOKEN), ALICE.identity)
        self.assertEqual(self.authority.identify(TOKEN.encode()), ALICE.identity)
        self.assertEqual(self.authority.counters.accepted, 2)

    def test_signedToken(self) -> None:
        identity = self.authority.identify(self.signed(sub="page", subscribe=["TIME"]))
        self.assertEqual(identity, Identity("page", Permissions((), ("TIME",)), NOW + 60))

    def test_signedTokenRefused(self) -> None:
        """
        A token shaped like a JWT goes to the verifier, whose reason is the
        refusal's; it is never looked up among the users.
        """
        self.assertDenied(self.signed(exp=NOW - 3600), "token expired", "expired")
        self.assertDenied("aaa.bbb.ccc", "malformed token", "invalid")
        self.assertDenied("aaa.bbb.", "malformed token", "invalid")

    def test_jwtShapedUserTokenWithoutVerifier(self) -> None:
        dotted = "abc.def.ghi"
        user = User("dotted", Permissions(), tokenSha256=hashlib.sha256(dotted.encode()).digest())
        authority = Authority(Users([user]))
        self.assertEqual(authority.identify(dotted).name, "dotted")
        self.assertIsNone(authority.jwt)
        denied = self.assertRaises(AccessDenied, authority.identify, self.signed())
        self.assertEqual(denied.reason, "unknown token")

    def test_noToken(self) -> None:
        for token in [None, "", b""]:
            self.assertDenied(token, "no token", "missing")

    def test_unknownToken(self) -> None:
        self.assertDenied("guess", "unknown token", "unknown")
        self.assertDenied(hashToken(TOKEN), "unknown token", "unknown")

    def test_tooLong(self) -> None:
        self.assertDenied("x" * (MAX_TOKEN_LENGTH + 1),
                          f"token too long (more than {MAX_TOKEN_LENGTH} characters)", "invalid")
        self.assertDenied("x" * MAX_TOKEN_LENGTH, "unknown token", "unknown")

    def test_notUTF8(self) -> None:
        self.assertDenied(b"\xff\xfe", "malformed token: not UTF-8", "invalid")

    def test_certificate(self) -> None:
        self.assertEqual(self.authority.identifyCertificate("bob.example.com"), BOB.identity)
        denied = self.assertRaises(AccessDenied, self.authority.identifyCertificate, "mallory")
        self.assertEqual((denied.reason, denied.status, denied.code),
                         ("no user has this certificate", 401, "unknown"))
        denied = self.assertRaises(AccessDenied, self.authority.identifyCertificate, None)
        self.assertEqual((denied.reason, denied.code), ("no client certificate", "missing"))

    def test_authorize(self) -> None:
        alice = self.authority.identify(TOKEN)
        self.authority.authorize(alice, publish="chat.room", subscribe="TIME")
        self.authority.authorize(alice, subscribe=b"anything")
        self.authority.authorize(alice)
        denied = self.assertRaises(AccessDenied, self.authority.authorize, alice, publish="TIME")
        self.assertEqual((denied.reason, denied.status, denied.code),
                         ("may not publish to 'TIME'", 403, "forbidden"))
        bob = self.authority.identifyCertificate("bob.example.com")
        denied = self.assertRaises(AccessDenied, self.authority.authorize, bob,
                                   publish=None, subscribe="chat." + "x" * 500)
        self.assertEqual(denied.status, 403)
        self.assertTrue(denied.reason.startswith("may not subscribe to 'chat.xxx"))
        self.assertLess(len(denied.reason), 100)

    def test_counters(self) -> None:
        self.authority.identify(TOKEN)
        alice = self.authority.identify(self.signed(publish="A"))
        self.assertRaises(AccessDenied, self.authority.authorize, alice, publish="B")
        for token in [None, "guess", "guess", self.signed(exp=0), "a.b.c"]:
            self.assertRaises(AccessDenied, self.authority.identify, token)
        self.assertRaises(AccessDenied, self.authority.identifyCertificate, "mallory")
        self.authority.counters.refuse("origin")
        self.assertEqual(self.authority.counters.snapshot(), {
            "accepted": 2,
            "refused": {"expired": 1, "forbidden": 1, "invalid": 1, "missing": 1,
                        "origin": 1, "unknown": 3},
        })
        self.assertEqual(AccessCounters().snapshot(), {"accepted": 0, "refused": {}})

    def test_ownCounters(self) -> None:
        counters = AccessCounters()
        authority = Authority(Users([ALICE]), counters=counters)
        authority.identify(TOKEN)
        self.assertIs(authority.counters, counters)
        self.assertEqual(counters.accepted, 1)

    def test_logged(self) -> None:
        self.assertRaises(AccessDenied, self.authority.identify, "guess", peer="10.0.0.7:5000")
        alice = self.authority.identify(TOKEN, peer="10.0.0.8:5000")
        self.assertRaises(AccessDenied, self.authority.authorize, alice, publish="X",
                          peer="10.0.0.8:5000")
        refused, accepted, forbidden = self.events
        self.assertEqual(formatEvent(refused), "Refused 10.0.0.7:5000 (401): unknown token")
        self.assertEqual((refused["log_level"], refused["code"], refused["user"]),
                         (LogLevel.info, "unknown", None))
        self.assertEqual(accepted["log_level"], LogLevel.debug)
        self.assertEqual(formatEvent(accepted), "Accepted 10.0.0.8:5000 as alice by token")
        self.assertEqual(formatEvent(forbidden),
                         "Refused 10.0.0.8:5000 (403): may not publish to 'X'")
        self.assertEqual(forbidden["user"], "alice")

    def test_tokensNeverLogged(self) -> None:
        signed = self.signed(exp=0)
        for token in [TOKEN, "guess-" + "s" * 30, signed, "x" * (MAX_TOKEN_LENGTH + 1)]:
            try:
                self.authority.identify(token)
            except AccessDenied as e:
                self.assertNotIn(token[:20], e.reason)
        logged = repr(self.events)
        for secret in [TOKEN, "guess-sss", signed[:20], "x" * 20]:
            self.assertNotIn(secret, logged)

    def test_fromConfig(self) -> None:
        folder = tempDir(self)
        (folder / "jwt.key").write_bytes(SECRET + b"\n")
        config = parseConfig({
            "user": [{"name": "alice", "token_sha256": hashToken(TOKEN),
                      "publish": ["chat.*"], "subscribe": ["*"]},
                     {"name": "bob", "cert": "bob.example.com", "subscribe": ["TIME"]}],
            "auth": {"jwt_key_file": "jwt.key", "jwt_audience": "backplane"},
        }, folder=folder)
        authority = Authority.fromConfig(config, clock=_clock())
        self.assertEqual(authority.identify(TOKEN), ALICE.identity)
        self.assertEqual(authority.identifyCertificate("bob.example.com"), BOB.identity)
        assert authority.jwt is not None
        self.assertEqual((authority.jwt.algorithm, authority.jwt.audience), ("HS256", "backplane"))
        self.assertEqual(authority.identify(self.signed(aud="backplane", sub="p")).name, "p")
        self.assertIsNone(Authority.fromConfig(parseConfig({})).jwt)
        self.assertEqual(len(Authority.fromConfig(parseConfig({})).users), 0)


class WireTests(SynchronousTestCase):
    """
    Where tokens travel: the AUTH line, the Authorization header, the
    WebSocket subprotocols.
    """

    def test_authLine(self) -> None:
        self.assertEqual(authLine(b"AUTH s3cret"), b"s3cret")
        self.assertEqual(authLine(b"AUTH a.b.c"), b"a.b.c")
        for line in [b"AUTH", b"AUTH ", b"auth s3cret", b"AUTH a b", b"AUTH  s3cret",
                     b"PUBLISH x", b"", b"s3cret"]:
            denied = self.assertRaises(AccessDenied, authLine, line)
            self.assertEqual((denied.reason, denied.status, denied.code),
                             ("expected AUTH TOKEN as the first line", 401, "missing"), line)

    def test_bearerToken(self) -> None:
        self.assertEqual(bearerToken("Bearer abc"), "abc")
        self.assertEqual(bearerToken("bearer abc"), "abc")
        self.assertEqual(bearerToken(b"BEARER  a.b.c "), "a.b.c")
        for header in [None, "", "Bearer", "Bearer ", "Basic YWxhZGRpbjpvcGVu", "Bearer a b",
                       "Bearerabc"]:
            self.assertIsNone(bearerToken(header), header)

    def test_subprotocolToken(self) -> None:
        self.assertEqual(SUBPROTOCOL, "backplane")
        self.assertEqual(subprotocolToken(["backplane", "tok"]), "tok")
        self.assertEqual(subprotocolToken(["tok", "backplane"]), "tok")
        for offered in [[], ["tok"], ["backplane"], ["backplane", "a", "b"], ["a", "b"]]:
            self.assertIsNone(subprotocolToken(offered), offered)


class PackageTests(SynchronousTestCase):
    def test_publicNames(self) -> None:
        import backplane.auth

        self.assertEqual(sorted(backplane.auth.__all__), sorted(backplane.auth._WHERE))
        for name in backplane.auth.__all__:
            self.assertIsNotNone(getattr(backplane.auth, name), name)
        self.assertRaises(AttributeError, getattr, backplane.auth, "nothing")

    def test_lightImports(self) -> None:
        """
        A port that matches globs, decides through an Authority or checks
        origins imports neither PyJWT nor cryptography.
        """
        import subprocess
        import sys

        code = ("import sys, backplane.auth, backplane.auth.glob, backplane.auth.authority, "
                "backplane.auth.origins, backplane.auth.wire, backplane.auth.gate, "
                "backplane.auth.lines; "
                "print(sorted({'jwt', 'cryptography'} & set(sys.modules)))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                check=True)
        self.assertEqual(result.stdout.strip(), "[]")
