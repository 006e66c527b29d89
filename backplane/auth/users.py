"""
The users of the config file (C{[[user]]}): each has a token, stored only as
its SHA-256, and/or a client certificate's common name.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from backplane.auth.identity import Identity, Permissions


def hashToken(token: str | bytes) -> str:
    """
    What a C{[[user]]}'s C{token_sha256} holds for C{token}: the hex
    SHA-256 of the token (of its UTF-8 encoding, for a L{str}).
    """
    if isinstance(token, str):
        token = token.encode("utf-8")
    return hashlib.sha256(token).hexdigest()


def newToken() -> str:
    """
    A new random token: 256 bits from L{secrets}, in URL-safe base64 (43
    characters, no padding), so that it needs no escaping in a URL, a header,
    a line or a WebSocket subprotocol.
    """
    return secrets.token_urlsafe(32)


@dataclass(frozen=True)
class User:
    """
    One C{[[user]]} of the config file.

    @ivar tokenSha256: the SHA-256 digest (32 bytes) of the user's token, or
        L{None} if the user has none.
    @ivar cert: the subject common name of a client certificate that names
        this user, or L{None}.
    """

    name: str
    permissions: Permissions
    tokenSha256: bytes | None = field(default=None, repr=False)
    cert: str | None = None

    def __post_init__(self) -> None:
        if self.tokenSha256 is not None and len(self.tokenSha256) != 32:
            raise ValueError(f"user {self.name!r}: tokenSha256 must be a SHA-256 digest "
                             f"(32 bytes), not {len(self.tokenSha256)} bytes")

    @property
    def identity(self) -> Identity:
        """
        The identity of a client that proved to be this user.
        """
        return Identity(self.name, self.permissions)


class Users:
    """
    A registry of users: whose token is this, whose certificate.

    Names, certificates and tokens are each unique: a token or a
    certificate names one user or none.
    """

    def __init__(self, users: Iterable[User] = ()) -> None:
        """
        @raise ValueError: two users share a name, a certificate or a token.
        """
        self._users: dict[str, User] = {}
        self._certs: dict[str, User] = {}
        digests: set[bytes] = set()
        for user in users:
            if user.name in self._users:
                raise ValueError(f"two users are named {user.name!r}")
            if user.cert is not None:
                other = self._certs.get(user.cert)
                if other is not None:
                    raise ValueError(f"users {other.name!r} and {user.name!r} have the same "
                                     f"cert {user.cert!r}")
                self._certs[user.cert] = user
            if user.tokenSha256 is not None:
                if user.tokenSha256 in digests:
                    raise ValueError(f"user {user.name!r} has the token of another user")
                digests.add(user.tokenSha256)
            self._users[user.name] = user
        self._withTokens = [user for user in self._users.values() if user.tokenSha256]

    def __len__(self) -> int:
        return len(self._users)

    def __iter__(self) -> Iterator[User]:
        return iter(self._users.values())

    def __contains__(self, name: object) -> bool:
        return name in self._users

    def get(self, name: str) -> User | None:
        """
        The user named C{name}, or L{None}.
        """
        return self._users.get(name)

    def authenticate(self, token: str | bytes) -> Identity | None:
        """
        The identity of the user whose token this is, or L{None}.

        The token's SHA-256 is compared with every user's, each in constant
        time (L{hmac.compare_digest}), and all of them every time, so that how
        long it takes tells nothing of which user, if any, came close.  The
        token itself is never kept nor logged.
        """
        if isinstance(token, str):
            token = token.encode("utf-8")
        if not token:
            return None
        digest = hashlib.sha256(token).digest()
        found = None
        for user in self._withTokens:
            assert user.tokenSha256 is not None
            if hmac.compare_digest(digest, user.tokenSha256):
                found = user
        return None if found is None else found.identity

    def fromCertificate(self, commonName: str | None) -> Identity | None:
        """
        The identity of the user whose C{cert} is this client certificate's
        subject common name (compared exactly), or L{None}.
        """
        if not commonName:
            return None
        user = self._certs.get(commonName)
        return None if user is None else user.identity
