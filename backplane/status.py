"""
The status page: the monitor's C{/} and its assets, plain HTML, CSS and
JavaScript shipped in the package (C{backplane/web/}), read once.

The page polls C{stats} every two seconds and draws what it says: every
backplane with its subscribers, publishers and message rate (a chart of the
last five minutes), every port, clock, relay, file sink and the Redis bridge
with its state; and it opens C{tail/NAME} (L{backplane.tail}) for the live
tail of a backplane.  Every URL it uses is relative, so it works behind a
proxy that serves the monitor under a path of its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from importlib import resources
from typing import cast

from twisted.web.http import Request
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource

# The page loads nothing but its own assets and talks to nothing but the
# monitor; nothing may frame it.
CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# The files of backplane/web/, by the name they are served under, with their type.
ASSETS = {
    "status.css": "text/css; charset=utf-8",
    "status.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
INDEX = "index.html"


def readAsset(name: str) -> bytes:
    """
    The bytes of C{backplane/web/NAME}, as installed with the package.
    """
    return (resources.files("backplane") / "web" / name).read_bytes()


class Asset(Resource):
    """
    One file of the page, from memory, with an C{ETag} (a browser asks
    again each time and gets C{304 Not Modified} while it is the same) and
    the page's security headers.

    (Not L{twisted.web.static.Data}: importing C{twisted.web.static} warns
    of deprecations that are not ours.)
    """

    isLeaf = True

    def __init__(self, data: bytes, type: str,
                 counted: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.data = data
        self.type = type.encode("ascii")
        self.etag = b'"' + hashlib.sha256(data).hexdigest()[:20].encode("ascii") + b'"'
        self.counted = counted

    def render_GET(self, request: Request) -> bytes:
        self.counted()
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        request.setHeader(b"content-security-policy", CONTENT_SECURITY_POLICY)
        request.setHeader(b"content-type", self.type)
        if request.setETag(self.etag):
            # http.CACHED: the browser has it; 304 and no body.
            return b""
        request.setHeader(b"content-length", b"%d" % len(self.data))
        return b"" if request.method == b"HEAD" else self.data

    render_HEAD = render_GET


class Assets(Resource):
    """
    The folder of the page's assets: its files, and 404 for anything else.
    """

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()

    def render(self, request: Request) -> bytes:
        # IResource.render is unannotated; an error page renders at once, to bytes.
        return cast(bytes, notFound().render(request))


def statusPage(counted: Callable[[], None] = lambda: None) -> tuple[Asset, Assets]:
    """
    The page (for C{/}) and the folder of its assets (for C{/assets/}).

    @param counted: called once for each request served.
    """
    assets = Assets()
    for name, type in ASSETS.items():
        assets.putChild(name.encode("ascii"), Asset(readAsset(name), type, counted))
    return Asset(readAsset(INDEX), "text/html; charset=utf-8", counted), assets
