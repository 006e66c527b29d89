"""
Where a Redis server is: C{redis://} URLs, parsed without importing a Redis
client, so that the config can check them cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit


@dataclass(frozen=True)
class RedisAddress:
    """
    Where a Redis server is, and how to log in, as given by a C{redis://} URL.

    C{db} is accepted for the sake of common URLs, but pub/sub ignores it:
    channels are shared by every database of a server (use the channel prefix
    to keep deployments apart).
    """

    host: str
    port: int
    db: int
    username: str | None = None
    password: str | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"


def parseURL(url: str) -> RedisAddress:
    """
    Parse C{redis://[[username]:password@]host[:port][/db]}.

    The host defaults to 127.0.0.1, the port to 6379, the database to 0.

    @raise ValueError: the URL is not of that form.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise ValueError(f"bad Redis URL {url!r}: {e}") from None
    if parts.scheme != "redis":
        raise ValueError(
            f"bad Redis URL {url!r}: expected redis://[[username]:password@]host[:port][/db]"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"bad Redis URL {url!r}: it takes no query or fragment")
    path = parts.path.lstrip("/")
    if not (path == "" or path.isdigit()):
        raise ValueError(f"bad Redis URL {url!r}: the path must be a database number")
    return RedisAddress(
        host=parts.hostname or "127.0.0.1",
        port=6379 if port is None else port,
        db=int(path or 0),
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
    )
