"""The composition root of serving: a Socket.IO server behind the HTTP front, with the
operations endpoints and the metrics registry.

`Serving` wires the pieces that know nothing of each other: the router (the Engine.IO endpoint at
SIO_PATH, /health, /stats, /metrics, and whatever an application adds, such as the publish API),
the HTTP server that listens, the Prometheus registry, and what the operations endpoints read
(`OpsSources`: the server, its cluster when it has one, a presence). With OPS_PORT set the
operations endpoints get a router and an HTTP server of their own on OPS_HOST:OPS_PORT (same
limits, same loop), so /health, /stats and /metrics never face the internet: the public port
answers 404 for them. `Server` is the Socket.IO
server that owns a `Serving`: `gateway.Server`, whose `start`/`close` the CLI, the bench app,
the tests' apps and an application's `run(io.start, io.close)` call.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from .cluster.adapter import ClusterAdapter
from .config import Settings
from .engine.server import AllowRequest
from .http import HttpServer, Router
from .ops.cluster_metrics import cluster_metrics
from .ops.endpoints import ClusterView, OpsSources, mount_ops
from .ops.static import StaticFiles, mount_static
from .sio import server as sio_server
from .sio.adapter import Adapter
from .sio.namespace import Namespace

# The served server's lines keep the logger name operators and tests filter on.
log = logging.getLogger("gateway.server")


class ClusterOps:
    """A cluster adapter as the operations endpoints see it (`ClusterView`): health and INFO of
    its transport, its metric families."""

    __slots__ = ("adapter", "uid")

    def __init__(self, adapter: ClusterAdapter) -> None:
        self.adapter = adapter
        self.uid = adapter.uid

    def health(self) -> dict[str, Any]:
        return self.adapter.health()

    def redis_info(self) -> Awaitable[dict[str, Any]]:
        return self.adapter.transport.redis_info()

    def collect_metrics(self) -> Iterable[Metric]:
        return cluster_metrics(self.adapter)


def cluster_view(adapter: Adapter) -> ClusterView | None:
    """What ops reads of a server's main adapter: None for the in-memory adapter."""
    return ClusterOps(adapter) if isinstance(adapter, ClusterAdapter) else None


class Serving:
    """One Socket.IO server served over HTTP: router, HTTP server, operations endpoints and the
    metrics registry. Routes and collectors may be added until `start`."""

    def __init__(self, server: sio_server.Server, *, cluster: ClusterView | None = None) -> None:
        self.server = server
        self.settings: Settings = server.settings
        self.router = Router()
        self.router.mount(self.settings.sio_path, server.engine.handle)
        self.http: HttpServer | None = None
        self.port: int | None = None
        # The operations endpoints' own router when OPS_PORT is set (an application may add
        # internal routes there); otherwise the public router serves them too.
        self.ops_router = Router() if self.settings.ops_port is not None else self.router
        self.ops_http: HttpServer | None = None
        self.ops_port: int | None = None
        self.listening = False
        # One registry per served server, so several servers in one process do not collide.
        self.metrics = CollectorRegistry(auto_describe=False)
        self.ops = OpsSources(server, cluster, http=self._http, listening=self._listening)
        mount_ops(self.ops_router, self.ops, self.metrics)
        # The admin UI's files go on the public port: the UI connects back to the origin that served it.
        self.admin_ui: StaticFiles | None = None
        if self.settings.admin_ui_dir is not None:
            self.admin_ui = StaticFiles(self.settings.admin_ui_dir, max_file_bytes=self.settings.admin_ui_max_file_bytes, sio_path=self.settings.sio_path)
            mount_static(self.router, self.admin_ui)
            self.metrics.register(self.admin_ui)  # type: ignore[arg-type]

    def _http(self) -> HttpServer | None:
        return self.http

    def _listening(self) -> bool:
        return self.listening

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Open the operations port first (probes answer while the adapters join: live, and
        ready 503), then start the adapters and listen; returns the bound public port (0 picks
        a free one)."""
        settings = self.settings
        if self.ops_router is not self.router and settings.ops_port is not None:
            self.ops_http = HttpServer(self.ops_router, settings.max_payload, settings)
            self.ops_port = await self.ops_http.listen(settings.ops_host, settings.ops_port)
            log.info("ops_listening host=%s port=%d", settings.ops_host, self.ops_port)
        try:
            await self.server.open()
            self.http = HttpServer(self.router, settings.max_payload, settings)
            host = host or settings.host
            self.port = await self.http.listen(host, settings.port if port is None else port)
        except BaseException:
            await self._close_ops()
            raise
        self.listening = True
        log.info("listening host=%s port=%d path=%s", host, self.port, settings.sio_path)
        return self.port

    async def close(self, reason: str = "server shutting down") -> None:
        """Stop accepting, close every session with `reason`, the adapters, then the listener."""
        self.server.drain()
        self.listening = False
        if self.http is not None:
            self.http.stop_accepting()
        try:
            await self.server.shut(reason)
            if self.http is not None:
                await self.http.close()
        finally:
            # Last: probes keep answering (ready 503) for the whole drain.
            await self._close_ops()

    async def _close_ops(self) -> None:
        if self.ops_http is not None:
            ops, self.ops_http = self.ops_http, None
            await ops.close()


class Server(sio_server.Server):
    """A Socket.IO server served over HTTP with the operations endpoints (`/health`, `/stats`,
    `/metrics`): `io = Server(settings); await io.start(); ...; await io.close()`."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        adapter_factory: Callable[[Namespace], Adapter] | None = None,
        allow_request: AllowRequest | None = None,
    ) -> None:
        super().__init__(settings, adapter_factory=adapter_factory, allow_request=allow_request)
        self.serving = Serving(self, cluster=cluster_view(self.main.adapter))

    @property
    def router(self) -> Router:
        """Where an application adds its own HTTP routes (before `start`)."""
        return self.serving.router

    @property
    def metrics_registry(self) -> CollectorRegistry:
        """The registry /metrics serves; an application registers its collectors here."""
        return self.serving.metrics

    @property
    def http(self) -> HttpServer | None:
        return self.serving.http

    @property
    def port(self) -> int | None:
        return self.serving.port

    @property
    def ops_port(self) -> int | None:
        """The bound operations port when OPS_PORT is set (after `start`), else None."""
        return self.serving.ops_port

    async def start(self, host: str | None = None, port: int | None = None) -> int:
        """Listen and return the bound port (0 picks a free one)."""
        return await self.serving.start(host, port)

    async def close(self, reason: str = "server shutting down") -> None:
        await self.serving.close(reason)
