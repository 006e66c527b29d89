"""
Access control (SPEC section 11): who may connect, publish and subscribe.

  - L{globMatch}: Redis glob patterns, as C{PSUBSCRIBE} matches them.
  - L{Permissions}, L{Identity}, L{AccessDenied}: what a client may do, who
    it is, and the one refusal.
  - L{User}, L{Users}, L{hashToken}, L{newToken}: the C{[[user]]} tables.
  - L{JWTVerifier}, L{KeyFileError}: signed tokens (C{[auth] jwt_key_file}).
  - L{Authority}, L{AccessCounters}: the one entry point, and its counts.
  - L{Gate}, L{LineAdmission}: what a port checks when a client connects,
    and the C{AUTH} line of a line client.
  - L{originAllowed}, L{checkOrigin}: which web pages may connect.
  - L{authLine}, L{bearerToken}, L{subprotocolToken}: where a token travels.

Each name is loaded from its module on first use, so that a port that only
matches globs does not import PyJWT and cryptography.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from backplane.auth.authority import AccessCounters, Authority
    from backplane.auth.gate import Gate
    from backplane.auth.glob import compileGlob, globMatch
    from backplane.auth.identity import AccessDenied, Identity, Permissions
    from backplane.auth.lines import LineAdmission
    from backplane.auth.origins import checkOrigin, originAllowed
    from backplane.auth.signed import JWTVerifier, KeyFileError
    from backplane.auth.users import User, Users, hashToken, newToken
    from backplane.auth.wire import authLine, bearerToken, subprotocolToken

_WHERE = {
    "AccessCounters": "backplane.auth.authority",
    "AccessDenied": "backplane.auth.identity",
    "Authority": "backplane.auth.authority",
    "Gate": "backplane.auth.gate",
    "Identity": "backplane.auth.identity",
    "JWTVerifier": "backplane.auth.signed",
    "KeyFileError": "backplane.auth.signed",
    "LineAdmission": "backplane.auth.lines",
    "Permissions": "backplane.auth.identity",
    "User": "backplane.auth.users",
    "Users": "backplane.auth.users",
    "authLine": "backplane.auth.wire",
    "bearerToken": "backplane.auth.wire",
    "checkOrigin": "backplane.auth.origins",
    "compileGlob": "backplane.auth.glob",
    "globMatch": "backplane.auth.glob",
    "hashToken": "backplane.auth.users",
    "newToken": "backplane.auth.users",
    "originAllowed": "backplane.auth.origins",
    "subprotocolToken": "backplane.auth.wire",
}

__all__ = [
    "AccessCounters",
    "AccessDenied",
    "Authority",
    "Gate",
    "Identity",
    "JWTVerifier",
    "KeyFileError",
    "LineAdmission",
    "Permissions",
    "User",
    "Users",
    "authLine",
    "bearerToken",
    "checkOrigin",
    "compileGlob",
    "globMatch",
    "hashToken",
    "newToken",
    "originAllowed",
    "subprotocolToken",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'backplane.auth' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
