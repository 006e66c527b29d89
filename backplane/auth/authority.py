"""
The one place that decides who a client is and what it may do: an
L{Authority} holds the users of the config file and the signed-token verifier,
counts its decisions (L{AccessCounters}) and logs its refusals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from backplane.auth.identity import AccessDenied, Identity, Permissions, quote
from backplane.auth.users import User, Users

if TYPE_CHECKING:
    from backplane.auth.signed import JWTVerifier
    from backplane.config import Config

#: The longest token considered (characters); a longer one is refused unread.
MAX_TOKEN_LENGTH = 8192

# Three base64url parts joined by dots (the last, the signature, may be empty
# in an unsigned token, which the verifier then refuses): a JWT's shape.
_JWT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


@dataclass
class AccessCounters:
    """
    What an L{Authority} decided, for C{/stats}.

    @ivar accepted: tokens and certificates accepted.
    @ivar refused: refusals, by their L{AccessDenied.code} (C{"missing"},
        C{"unknown"}, C{"invalid"}, C{"expired"}, C{"forbidden"}, ...).  A
        client whose token is accepted and who is then refused a backplane
        counts in both.
    """

    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)

    def accept(self) -> None:
        """
        Count a token or certificate accepted.
        """
        self.accepted += 1

    def refuse(self, code: str) -> None:
        """
        Count a refusal (a port counts its C{"origin"} refusals here too).
        """
        self.refused[code] = self.refused.get(code, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """
        The counters as plain JSON-ready values.
        """
        return {"accepted": self.accepted, "refused": dict(sorted(self.refused.items()))}


class Authority:
    """
    Decides who a client is (L{identify}, L{identifyCertificate}) and what
    it may do (L{authorize}), counting and logging every decision.

    One per port gives each port its counters; they may share one L{Users}
    and one L{JWTVerifier}.

    @ivar users: the users of the config file.
    @ivar jwt: the verifier of signed tokens, or L{None} if none is accepted.
    @ivar counters: what was decided.
    """

    log = Logger()

    def __init__(self, users: Users, jwt: JWTVerifier | None = None, *,
                 counters: AccessCounters | None = None) -> None:
        self.users = users
        self.jwt = jwt
        self.counters = counters if counters is not None else AccessCounters()

    @classmethod
    def fromConfig(cls, config: Config, *, clock: IReactorTime | None = None) -> Authority:
        """
        An authority for the C{[[user]]} tables and the C{[auth]} table of a
        validated config.

        @raise backplane.auth.signed.KeyFileError: the key file can no longer
            be used (the config checked it when it was read).
        """
        users = Users(
            User(entry.name, Permissions(entry.publish, entry.subscribe),
                 tokenSha256=bytes.fromhex(entry.token_sha256) if entry.token_sha256 else None,
                 cert=entry.cert)
            for entry in config.user
        )
        verifier = None
        if config.auth is not None:
            from backplane.auth.signed import JWTVerifier

            verifier = JWTVerifier.fromKeyFile(
                config.auth.jwt_key_file, audience=config.auth.jwt_audience,
                issuer=config.auth.jwt_issuer, clock=clock)
        return cls(users, verifier)

    def identify(self, token: str | bytes | None, *, peer: str = "?") -> Identity:
        """
        Who presents this token: a user of the config file, or the holder of
        a signed token.  A token shaped like a JWT (three base64url parts
        joined by dots) goes to the verifier of signed tokens if there is
        one, any other to the users.

        @param peer: who sent it, for the log line of a refusal.
        @raise AccessDenied: (401) no token, or one that is not accepted.
        """
        try:
            identity = self._identify(token)
        except AccessDenied as e:
            self._refused(e, peer)
            raise
        self._accepted(identity, peer, "token")
        return identity

    def _identify(self, token: str | bytes | None) -> Identity:
        if not token:
            raise AccessDenied("no token", code="missing")
        if len(token) > MAX_TOKEN_LENGTH:
            raise AccessDenied(f"token too long (more than {MAX_TOKEN_LENGTH} characters)")
        if isinstance(token, bytes):
            try:
                token = token.decode("utf-8")
            except UnicodeDecodeError:
                raise AccessDenied("malformed token: not UTF-8") from None
        if self.jwt is not None and _JWT.fullmatch(token):
            return self.jwt.verify(token)
        identity = self.users.authenticate(token)
        if identity is None:
            raise AccessDenied("unknown token", code="unknown")
        return identity

    def identifyCertificate(self, commonName: str | None, *, peer: str = "?") -> Identity:
        """
        Who presents a client certificate with this subject common name: the
        user whose C{cert} it is.

        @raise AccessDenied: (401) no user has this certificate.
        """
        identity = self.users.fromCertificate(commonName)
        if identity is None:
            denied = AccessDenied(
                "no user has this certificate" if commonName else "no client certificate",
                code="unknown" if commonName else "missing")
            self._refused(denied, peer)
            raise denied
        self._accepted(identity, peer, "certificate")
        return identity

    def authorize(self, identity: Identity, *, publish: str | bytes | None = None,
                  subscribe: str | bytes | None = None, peer: str = "?") -> None:
        """
        Check that C{identity} may publish to the backplane C{publish} and
        subscribe to C{subscribe} (either may be L{None}: not asked).

        @raise AccessDenied: (403, code C{"forbidden"}) it may not.
        """
        if publish is not None and not identity.permissions.mayPublish(publish):
            denied = AccessDenied(f"may not publish to {quote(publish)}", 403, code="forbidden")
        elif subscribe is not None and not identity.permissions.maySubscribe(subscribe):
            denied = AccessDenied(f"may not subscribe to {quote(subscribe)}", 403,
                                  code="forbidden")
        else:
            return
        self._refused(denied, peer, identity.name)
        raise denied

    def _accepted(self, identity: Identity, peer: str, how: str) -> None:
        self.counters.accept()
        self.log.debug("Accepted {peer} as {user} by {how}", peer=peer, user=identity.name,
                       how=how)

    def _refused(self, denied: AccessDenied, peer: str, user: str | None = None) -> None:
        self.counters.refuse(denied.code)
        self.log.info("Refused {peer} ({status}): {reason}", peer=peer, user=user,
                      status=denied.status, reason=denied.reason, code=denied.code)
