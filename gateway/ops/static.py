"""The admin UI's files (`ADMIN_UI_DIR`, the built `@socket.io/admin-ui`) served at `/admin/`.

The UI is a handful of files an operator's browser fetches once per page load, so they are read
from disk per request (bounded by `ADMIN_UI_MAX_FILE_BYTES`), never listed, and only from inside
the folder: the request path is decoded once and refused when it still holds a `%` (double
encoding), a NUL, a backslash or a segment starting with a dot (`..`, hidden files); the file's
real path, symlinks resolved, must lie under the folder's real path. Only GET and HEAD.

Caching follows the UI's build: file names carrying a content hash (`app.0d7d7845.js`) never
change, so browsers keep them a year; everything else (`index.html`, `favicon.png`) is
revalidated on every load, so a newer UI is picked up at once.

The UI keeps the server it connects to in its browser's localStorage and starts with none. The
page served here seeds it with its own origin (and SIO_PATH) when nothing is saved yet, so the UI
served by a gateway connects back to that gateway (through the same proxy) without the operator
typing its address; anything the operator saved in the UI wins.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from typing import Iterator

import orjson
from prometheus_client.core import CounterMetricFamily, Metric

from ..http import Request, Router

log = logging.getLogger("gateway.ops.static")

# Where the UI is served; `/admin` alone is redirected here (its files are named relative to it).
MOUNT = "/admin"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".map": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".ttf": "font/ttf",
}
DEFAULT_CONTENT_TYPE = "application/octet-stream"

# Vue CLI names built assets name.<8+ hex digits>.ext: such a file's content never changes.
_HASHED = re.compile(r"\.[0-9a-f]{8,}\.")
CACHE_IMMUTABLE = "public, max-age=31536000, immutable"
CACHE_REVALIDATE = "no-cache"

REFUSAL_REASONS = ("method", "path", "too_large")

_ALLOW = ("Allow", "GET, HEAD")
_NOSNIFF = ("X-Content-Type-Options", "nosniff")


@dataclass
class StaticStats:
    """Requests refused, by reason: a method other than GET/HEAD, a path that tries to leave the
    folder (or is malformed), a file over the size bound."""

    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REFUSAL_REASONS, 0))


def seed_script(sio_path: str) -> bytes:
    """The inline script that points a fresh browser's admin UI at the origin it was served
    from; `</` cannot appear in it, whatever SIO_PATH holds."""
    path = orjson.dumps(sio_path).decode().replace("<", "\\u003c")
    return (
        "<script>(function(){try{var s=window.localStorage;"
        'if(!s.getItem("server_url")){s.setItem("server_url",location.origin);'
        f's.setItem("path",{path})}}}}catch(e){{}}}})();</script>'
    ).encode()


def inject_seed(html: bytes, script: bytes) -> bytes:
    """`script` ahead of the page's first script (the UI reads localStorage when its app starts)."""
    for marker in (b"<script", b"</head>"):
        at = html.find(marker)
        if at >= 0:
            return html[:at] + script + html[at:]
    return script + html


class StaticFiles:
    """Serves one folder below `mount`: `handle` is the router handler for `mount` and
    everything below it."""

    def __init__(self, root: str, *, max_file_bytes: int, sio_path: str = "/socket.io", mount: str = MOUNT) -> None:
        self.root = os.path.realpath(root)
        self.index = os.path.join(self.root, "index.html")
        self.max_file_bytes = max_file_bytes
        self.mount = mount.rstrip("/")
        self.seed = seed_script(sio_path)
        self.stats = StaticStats()

    def _refuse(self, request: Request, reason: str, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.stats.refused[reason] += 1
        log.debug("admin_ui_refused reason=%s method=%s path=%r", reason, request.method, request.raw_path[:200])
        request.respond(status, body, [_NOSNIFF, *(headers or [])])

    def handle(self, request: Request) -> None:
        if request.method not in ("GET", "HEAD"):
            self._refuse(request, "method", 405, b"method not allowed\n", [_ALLOW])
            return
        path = request.path  # decoded once by the HTTP front
        if path == self.mount:
            location = self.mount + "/" + ("?" + request.query_string if request.query_string else "")
            request.respond(301, b"", [("Location", location), _NOSNIFF])
            return
        rel = path[len(self.mount) + 1 :]
        segments = [s for s in rel.split("/") if s]
        if "\x00" in rel or "\\" in rel or "%" in rel or any(s.startswith(".") for s in segments):
            self._refuse(request, "path", 400, b"bad path\n")
            return
        target = os.path.realpath(os.path.join(self.root, *segments))
        if target != self.root and not target.startswith(self.root + os.sep):
            # A symlink leading out of the folder: answered as if there were nothing there.
            self._refuse(request, "path", 404, b"not found\n")
            return
        if os.path.isdir(target):
            target = os.path.join(target, "index.html")
        self._send_file(request, target)

    def _send_file(self, request: Request, target: str) -> None:
        try:
            with open(target, "rb") as f:
                info = os.fstat(f.fileno())
                if not stat.S_ISREG(info.st_mode):
                    raise FileNotFoundError(target)
                if info.st_size > self.max_file_bytes:
                    self.stats.refused["too_large"] += 1
                    log.warning("admin_ui_file_too_large path=%s size=%d limit=%d", target, info.st_size, self.max_file_bytes)
                    request.respond(404, b"not found\n", [_NOSNIFF])
                    return
                body = f.read(self.max_file_bytes + 1)
        except OSError:  # missing, unreadable, a directory without index.html
            request.respond(404, b"not found\n", [_NOSNIFF])
            return
        if len(body) > self.max_file_bytes:  # grew since fstat
            self.stats.refused["too_large"] += 1
            request.respond(404, b"not found\n", [_NOSNIFF])
            return
        name = os.path.basename(target)
        content_type = CONTENT_TYPES.get(os.path.splitext(name)[1].lower(), DEFAULT_CONTENT_TYPE)
        headers = [_NOSNIFF, ("Cache-Control", CACHE_IMMUTABLE if _HASHED.search(name) else CACHE_REVALIDATE)]
        if target == self.index:
            body = inject_seed(body, self.seed)
        if content_type.startswith("text/html"):
            headers.append(("X-Frame-Options", "DENY"))
        request.respond(200, body, headers, content_type=content_type)

    def collect(self) -> Iterator[Metric]:
        """The refusal counter, for the serving layer's Prometheus registry."""
        refused = CounterMetricFamily("sio_gateway_admin_ui_refused", "Requests for the admin UI's files refused, by reason (method, path, too_large)", labels=["reason"])
        for reason, count in self.stats.refused.items():
            refused.add_metric([reason], count)
        yield refused


def mount_static(router: Router, files: StaticFiles) -> None:
    """Route `files.mount` (redirected) and everything below it to `files`."""
    router.mount(files.mount, files.handle)
    log.info("admin_ui_serving dir=%s path=%s/", files.root, files.mount)
