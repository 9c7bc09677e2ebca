"""The HTTP/1.1 front: one asyncio Protocol per TCP connection, parsed with httptools.

Requests are routed by path prefix to handlers. A handler answers with `Request.respond(...)`,
possibly later (a long-poll GET is held open until there is data), or takes the connection over
with `Request.upgrade(...)` (WebSocket). Requests that arrive on a connection while an earlier
response is still pending wait their turn, which keeps HTTP/1.1 ordering without tasks.

Everything a client can make the front hold is bounded (`HttpLimits`, from the settings), because
the clients are not ours:

- time: a request head must arrive within HTTP_HEADER_TIMEOUT_MS, its body within
  HTTP_BODY_TIMEOUT_MS, and a keep-alive connection with nothing pending is closed after
  HTTP_KEEPALIVE_TIMEOUT_MS. One timer per connection at most, moved only on request boundaries:
  a deadline is recorded and a timer that fires early re-arms itself for what is left;
- size: the request line plus headers (HTTP_MAX_HEADER_BYTES, HTTP_MAX_HEADERS), bodies
  (MAX_PAYLOAD_BYTES); repeated headers are collected and joined once;
- queued work: at most HTTP_MAX_PIPELINED requests (HTTP_MAX_PIPELINED_BYTES of bodies) wait
  behind a pending one, and nothing more is read while they wait or while the kernel is not
  taking our writes (the transport's pause_writing); large reads are parsed in slices so a burst
  stops being parsed as soon as that is so;
- connections: at most HTTP_MAX_CONNECTIONS TCP connections (upgraded or not). The listening
  socket is ours rather than `loop.create_server`'s so that the cap is applied before a transport
  exists and an accept that fails for lack of descriptors (EMFILE) is seen, logged and counted
  (uvloop drops those connections silently); accepting pauses briefly and existing connections
  keep being served.
"""

from .connection import HttpConnection
from .limits import PHASES, HttpLimits, HttpStats
from .request import Handler, Request, Router, Upgraded
from .server import HttpServer

__all__ = ["PHASES", "Handler", "HttpConnection", "HttpLimits", "HttpServer", "HttpStats", "Request", "Router", "Upgraded"]
