"""
Signed tokens: JSON Web Tokens (RFC 7519) that a web application mints for
its pages, verified with PyJWT against one key (C{[auth] jwt_key_file}).

The key decides the one algorithm accepted, so that no token can choose
another: an HS256 secret accepts HS256 only, an Ed25519 public key EdDSA only,
an RSA public key RS256 only.  C{alg: none} is never accepted, and a public key
is never used as an HMAC secret (the HS256/RS256 confusion).
"""

from __future__ import annotations

import math
import os
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from twisted.internet.interfaces import IReactorTime

from backplane.auth.identity import AccessDenied, Identity, Permissions

#: The largest key file read (bytes): a PEM public key or a secret is far
#: smaller.
MAX_KEY_FILE = 64 * 1024
#: Seconds of clock difference between the token's minter and this server
#: that C{exp} and C{nbf} forgive.
DEFAULT_LEEWAY = 30.0
#: The shortest HS256 secret accepted (bytes): the hash's size, as RFC 7518
#: section 3.2 requires.
MIN_SECRET = 32
#: The smallest RSA key accepted (bits).
MIN_RSA_BITS = 2048
#: The name of an identity whose token has no C{sub} claim.
ANONYMOUS = "jwt"

Key = bytes | Ed25519PublicKey | RSAPublicKey


class KeyFileError(ValueError):
    """
    A key file cannot be used: unreadable, too big, or neither an HS256
    secret nor a supported public key.  The message says why.
    """


def loadKey(data: bytes) -> Key:
    """
    The key a key file's content holds: a public key if it is PEM, or else
    an HS256 secret (the bytes, one trailing newline stripped).

    @raise KeyFileError: it holds a private key, a certificate, an
        unsupported or too small public key, a key in another format, or a
        secret shorter than L{MIN_SECRET} bytes.
    """
    if b"-----BEGIN" in data:
        return _publicKey(data)
    start = data.lstrip()[:16]
    if start.startswith((b"ssh-", b"ecdsa-sha2-")):
        raise KeyFileError("it holds an OpenSSH public key: convert it to PEM "
                           "(ssh-keygen -e -m PKCS8 -f FILE)")
    if start.startswith(b"{"):
        raise KeyFileError("it looks like a JSON Web Key: give a PEM public key or an HS256 secret")
    secret = data[:-1] if data.endswith(b"\n") else data
    if not secret:
        raise KeyFileError("it is empty: write an HS256 secret or a PEM public key in it")
    if len(secret) < MIN_SECRET:
        raise KeyFileError(f"an HS256 secret must be at least {MIN_SECRET} bytes, this one is "
                           f"{len(secret)} (e.g. openssl rand -hex 32 > FILE)")
    return secret


def _publicKey(data: bytes) -> Key:
    if b"PRIVATE KEY" in data:
        raise KeyFileError("it holds a private key: give the public key only "
                           "(openssl pkey -in FILE -pubout)")
    if b"CERTIFICATE" in data:
        raise KeyFileError("it holds a certificate: give its public key "
                           "(openssl x509 -in FILE -pubkey -noout)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"not a valid PEM public key ({e})") from None
    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyFileError(f"an RSA key must have at least {MIN_RSA_BITS} bits, this one has "
                               f"{key.key_size}")
        return key
    raise KeyFileError(f"an unsupported public key ({type(key).__name__}): use an Ed25519 "
                       f"(EdDSA) or RSA (RS256) key")


def readKeyFile(path: str | Path) -> Key:
    """
    Read a key file (at most L{MAX_KEY_FILE} bytes) and L{loadKey} it.

    @raise KeyFileError: it is missing, unreadable, not a regular file, too
        big, or L{loadKey} refuses it.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise KeyFileError("not a regular file")
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as e:
        raise KeyFileError(f"cannot read it: {e.strerror}") from None
    if len(data) > MAX_KEY_FILE:
        raise KeyFileError(f"too big for a key: more than {MAX_KEY_FILE} bytes")
    return loadKey(data)


def _algorithm(key: Key) -> str:
    if isinstance(key, bytes):
        return "HS256"
    if isinstance(key, Ed25519PublicKey):
        return "EdDSA"
    if isinstance(key, RSAPublicKey):
        return "RS256"
    raise TypeError(f"a JWT key is an HS256 secret (bytes), an Ed25519 or an RSA public key, "
                    f"not {type(key).__name__}")


def _number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _patterns(claims: Mapping[str, Any], name: str) -> tuple[str, ...]:
    value = claims.get(name)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise AccessDenied(f"token claim {name!r} must be a string or a list of strings")


# What PyJWT's errors mean, in a few safe words each; the first that fits
# (subclasses first).
_REASONS: list[tuple[type[Exception], str, str]] = [
    (jwt.InvalidAlgorithmError, "token algorithm not allowed", "invalid"),
    (jwt.InvalidSignatureError, "token signature does not verify", "invalid"),
    (jwt.ExpiredSignatureError, "token expired", "expired"),
    (jwt.ImmatureSignatureError, "token not valid yet", "early"),
    (jwt.InvalidAudienceError, "token is for another audience", "invalid"),
    (jwt.InvalidIssuerError, "token is from another issuer", "invalid"),
    (jwt.DecodeError, "malformed token", "invalid"),
]


class JWTVerifier:
    """
    Verifies signed tokens against one key, and makes an L{Identity} of
    their claims.

    A token is accepted if its signature verifies with the key's one
    algorithm, it has an C{exp} claim (a number) that has not passed, an
    C{nbf} (if any) that has, and, where they are configured, the right
    C{aud} and C{iss}; a token with an C{aud} claim needs a configured
    audience.  Its C{publish} and C{subscribe} claims (a string or a list of
    backplane names and Redis glob patterns; none if absent) are its
    L{Permissions}; its C{sub}, if any, the identity's name.

    @ivar algorithm: the one algorithm accepted: C{"HS256"}, C{"EdDSA"} or
        C{"RS256"}.
    @ivar leeway: seconds of clock difference forgiven (L{DEFAULT_LEEWAY}).
    """

    def __init__(self, key: Key, *, leeway: float = DEFAULT_LEEWAY,
                 audience: str | None = None, issuer: str | None = None,
                 clock: IReactorTime | None = None) -> None:
        """
        @param key: an HS256 secret, or an Ed25519 or RSA public key.
        @param audience: if given, every token's C{aud} must name it.
        @param issuer: if given, every token's C{iss} must be it.
        @param clock: what tells the time (the system clock by default).
        """
        self.algorithm = _algorithm(key)
        self.leeway = leeway
        self.audience = audience
        self.issuer = issuer
        self._key = key
        self._now: Callable[[], float] = clock.seconds if clock is not None else time.time

    @classmethod
    def fromKeyFile(cls, path: str | Path, **options: Any) -> JWTVerifier:
        """
        A verifier for the key in a file: an HS256 secret (the file's
        bytes, one trailing newline stripped) or an Ed25519 or RSA public key
        in PEM.

        @param options: as for L{JWTVerifier}.
        @raise KeyFileError: the file cannot be used; the message says why.
        """
        return cls(readKeyFile(path), **options)

    def __repr__(self) -> str:
        return f"<JWTVerifier {self.algorithm}>"

    def verify(self, token: str) -> Identity:
        """
        The identity a signed token gives.

        @raise AccessDenied: (401) the token is not accepted; its reason says
            why in a few words, and quotes nothing of the token.
        """
        required = ["exp"]
        required += ["aud"] if self.audience is not None else []
        required += ["iss"] if self.issuer is not None else []
        try:
            # PyJWT checks the signature, the algorithm, aud and iss; exp, nbf
            # and sub are checked below (against this verifier's clock, and
            # alike whatever PyJWT's version); iat and jti are not used.
            claims = jwt.decode(
                token, self._key, algorithms=[self.algorithm], audience=self.audience,
                issuer=self.issuer,
                options={"require": required, "verify_exp": False, "verify_nbf": False,
                         "verify_iat": False, "verify_sub": False, "verify_jti": False},
            )
        except jwt.MissingRequiredClaimError as e:
            raise AccessDenied(f"token has no {e.claim!r} claim") from None
        except Exception as e:
            # Any error at all (PyJWT's own, or one it lets through on odd
            # input) is a token refused, in words that quote none of it.
            for kind, reason, code in _REASONS:
                if isinstance(e, kind):
                    raise AccessDenied(reason, code=code) from None
            raise AccessDenied("invalid token") from None
        now = self._now()
        expires = claims["exp"]
        if not _number(expires):
            raise AccessDenied("token claim 'exp' must be a number")
        if expires <= now - self.leeway:
            raise AccessDenied("token expired", code="expired")
        notBefore = claims.get("nbf")
        if notBefore is not None:
            if not _number(notBefore):
                raise AccessDenied("token claim 'nbf' must be a number")
            if notBefore > now + self.leeway:
                raise AccessDenied("token not valid yet", code="early")
        subject = claims.get("sub", ANONYMOUS)
        if not isinstance(subject, str) or not subject:
            raise AccessDenied("token claim 'sub' must be a non-empty string")
        permissions = Permissions(_patterns(claims, "publish"), _patterns(claims, "subscribe"))
        return Identity(subject, permissions, float(expires))
