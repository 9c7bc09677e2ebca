"""`/health`, `/health/live`, `/health/ready`, `/stats` and `/metrics`, served by every gateway
process on its own port, or on its internal operations port when OPS_PORT is set (gateway.serve).

`/health` tells an operator how the node is; `/health/live` and `/health/ready` are the
Kubernetes-style probes: live means the process and its event loop answer (a restart would not
help otherwise), ready means the node may be given new clients (listening, joined to its cluster,
not draining).

Metrics are read from the plain counters the hot path bumps (no prometheus calls per packet): a
custom collector turns them into metric families at scrape time, in a registry owned by the
serving layer so several servers in one process (tests) do not collide.

The endpoints read what `OpsSources` hands them: the Socket.IO server, and, when there are some,
the cluster (`ClusterView`), a presence (`HealthSource`) and the HTTP front. The composition
root (`gateway.serve`) fills it in; nothing here looks for attributes on the server.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Iterator, Protocol

import orjson
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..http import HttpServer, Request, Router
from ..sio.recovery import RecoveryStats
from ..sio.server import Server
from . import loop_watchdog


class ClusterView(Protocol):
    """What the operations endpoints read of a cluster: this node's id, its links' health,
    Redis INFO figures for /stats, and its metric families for /metrics."""

    uid: str

    def health(self) -> dict[str, Any]: ...

    def redis_info(self) -> Awaitable[dict[str, Any]]: ...

    def collect_metrics(self) -> Iterable[Metric]: ...


class HealthSource(Protocol):
    """Something whose health /health reports beside the adapter's (the gateway's presence)."""

    def health(self) -> dict[str, Any] | None: ...


def _no_http() -> HttpServer | None:
    return None


def _not_listening() -> bool:
    return False


@dataclass(eq=False)
class OpsSources:
    """Everything /health, /stats and /metrics read, handed over by the composition root."""

    server: Server
    cluster: ClusterView | None = None
    presence: HealthSource | None = None
    http: Callable[[], HttpServer | None] = field(default=_no_http)
    # True once the public port accepts clients; readiness waits for it (the composition root
    # says when: the operations port may answer before the public one listens).
    listening: Callable[[], bool] = field(default=_not_listening)


def connection_counts(server: Server) -> dict[str, int]:
    counts = {"polling": 0, "websocket": 0}
    for session in server.engine.sessions.values():
        counts[session.transport_name] += 1
    return counts


def health(sources: OpsSources) -> tuple[int, dict[str, Any]]:
    server, cluster = sources.server, sources.cluster
    links = cluster.health() if cluster is not None else {"mode": "memory", "status": "healthy"}
    status = links.get("status", "healthy")
    # The standalone gateway's presence: untrusted presence degrades the node but it still
    # serves its local clients, so HTTP stays 200.
    presence = sources.presence
    presence_health = presence.health() if presence is not None else None
    if presence_health is not None and presence_health.get("status") == "degraded" and status == "healthy":
        status = "degraded"
    if server.draining:
        status = "unhealthy"
    body = {
        "status": status,
        "adapter": links,
        "node_id": cluster.uid if cluster is not None else None,
        "uptime_seconds": round(time.time() - server.started_at, 3),
        "connections": len(server.engine.sessions),
        "draining": server.draining,
    }
    if presence_health is not None:
        body["presence"] = presence_health
    return (503 if status == "unhealthy" else 200), body


class Readiness:
    """Whether this node should be sent new clients (`/health/ready`).

    Not ready while draining, before the public port listens, and, with a cluster, until the
    adapter has joined it: publisher and subscriber up, the subscriber's first probe through Redis
    come back (a transport reports its subscriber up only after that). Joining is remembered: a
    later Redis outage leaves the node ready, since it still serves its own clients (`/health`
    says `degraded`) and a probe failing on every node at once would take the whole service out
    of its balancer."""

    __slots__ = ("sources", "joined")

    def __init__(self, sources: OpsSources) -> None:
        self.sources = sources
        self.joined = sources.cluster is None

    def check(self) -> tuple[int, dict[str, Any]]:
        sources = self.sources
        if sources.server.draining:
            return 503, {"status": "not ready", "reason": "draining"}
        if not sources.listening():
            return 503, {"status": "not ready", "reason": "not listening"}
        if not self.joined:
            links = sources.cluster.health() if sources.cluster is not None else {}
            if links.get("publisher") != "up" or links.get("subscriber") != "up":
                return 503, {"status": "not ready", "reason": "joining cluster", "adapter": links}
            self.joined = True
        return 200, {"status": "ready"}


def stats(server: Server) -> dict[str, Any]:
    namespaces = {}
    for name, nsp in server.namespaces.items():
        namespaces[name] = {
            "sockets": len(nsp.sockets),
            "rooms": sum(1 for room in nsp.adapter.rooms if room not in nsp.sockets),
        }
    return {
        "connections": connection_counts(server),
        "namespaces": namespaces,
        "adapter": {
            "broadcasts_local": server.adapter_stats.broadcasts_local,
            "broadcasts_remote": server.adapter_stats.broadcasts_remote,
            "deliveries": server.adapter_stats.deliveries,
        },
    }


class GatewayCollector:
    """Prometheus view of one server's counters."""

    def __init__(self, sources: OpsSources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        server = self.sources.server
        conns = GaugeMetricFamily("sio_gateway_connections", "Open Engine.IO sessions by transport", labels=["transport"])
        for transport, count in connection_counts(server).items():
            conns.add_metric([transport], count)
        yield conns
        yield GaugeMetricFamily("sio_gateway_namespaces", "Namespaces on this node", value=len(server.namespaces))
        rooms = GaugeMetricFamily("sio_gateway_rooms", "Rooms with members on this node (socket-id rooms excluded)", labels=["namespace"])
        sockets = GaugeMetricFamily("sio_gateway_sockets", "Connected sockets", labels=["namespace"])
        for name, nsp in server.namespaces.items():
            rooms.add_metric([name], sum(1 for room in nsp.adapter.rooms if room not in nsp.sockets))
            sockets.add_metric([name], len(nsp.sockets))
        yield rooms
        yield sockets
        engine = server.engine.stats
        yield CounterMetricFamily("sio_gateway_sessions_opened", "Engine.IO sessions opened", value=engine.sessions_opened)
        yield CounterMetricFamily("sio_gateway_upgrades", "Polling sessions upgraded to WebSocket", value=engine.upgrades)
        bad = CounterMetricFamily("sio_gateway_bad_packets", "Malformed packets received, by protocol layer", labels=["layer"])
        for layer in ("engineio", "socketio", "cluster"):
            bad.add_metric([layer], engine.bad_packets.get(layer, 0))
        yield bad
        yield CounterMetricFamily("sio_gateway_http_errors", "Engine.IO requests answered with an error", value=engine.http_errors)
        slow = CounterMetricFamily("sio_gateway_slow_consumer_disconnects", "Connections dropped for holding more than MAX_BUFFERED_BYTES unsent", labels=["transport"])
        for transport, count in engine.slow_consumer_disconnects.items():
            slow.add_metric([transport], count)
        yield slow
        yield CounterMetricFamily("sio_gateway_handshakes_refused", "Handshakes refused by the allow_request hook (or its failure)", value=engine.handshakes_refused)
        a = server.adapter_stats
        broadcasts = CounterMetricFamily("sio_gateway_broadcasts", "Broadcasts delivered on this node, by origin", labels=["origin"])
        broadcasts.add_metric(["local"], a.broadcasts_local - a.broadcasts_remote)
        broadcasts.add_metric(["remote"], a.broadcasts_remote)
        yield broadcasts
        yield CounterMetricFamily("sio_gateway_deliveries", "Packets written to sockets by broadcasts", value=a.deliveries)
        packets = CounterMetricFamily("sio_gateway_packets", "Socket.IO packets received from and sent to clients", labels=["direction"])
        packets.add_metric(["in"], engine.messages_in)
        packets.add_metric(["out"], engine.messages_out + a.deliveries)
        yield packets
        traffic = CounterMetricFamily("sio_gateway_bytes", "Engine.IO bytes read from and written to clients (WebSocket frames, polling bodies)", labels=["direction"])
        traffic.add_metric(["in"], engine.bytes_in)
        traffic.add_metric(["out"], engine.bytes_out)
        yield traffic
        yield CounterMetricFamily("sio_gateway_volatile_dropped", "Volatile packets dropped for a busy transport", value=a.dropped_volatile)
        yield CounterMetricFamily("sio_gateway_loop_lag_warnings", "Event-loop heartbeats late by half of LOOP_STALL_MS or more", value=loop_watchdog.stats.lag_warnings)
        yield CounterMetricFamily("sio_gateway_loop_pauses", "Whole-process pauses (SIGSTOP, frozen VM) not held against the loop by the watchdog", value=loop_watchdog.stats.pauses)
        yield from recovery_metrics(a.recovery)
        http = self.sources.http()
        if http is not None:
            yield from http_metrics(http)
        cluster = self.sources.cluster
        if cluster is not None:
            yield from cluster.collect_metrics()


def recovery_metrics(r: RecoveryStats) -> Iterator[Metric]:
    """Connection state recovery (STATE_RECOVERY_MS): how reconnecting clients' `{pid, offset}`
    were answered, what was replayed, and what the in-memory store's bounds dropped."""
    results = CounterMetricFamily("sio_gateway_recoveries", "Reconnections that asked for their earlier socket, by result", labels=["result"])
    for result, count in r.results.items():
        results.add_metric([result], count)
    yield results
    yield CounterMetricFamily("sio_gateway_recovery_replayed_packets", "Missed packets written to recovered sockets", value=r.replayed_packets)
    evicted = CounterMetricFamily(
        "sio_gateway_recovery_packets_evicted", "Packets dropped from the recovery store by STATE_RECOVERY_MAX_PACKETS / STATE_RECOVERY_MAX_BYTES", labels=["bound"]
    )
    for bound, count in r.packets_evicted.items():
        evicted.add_metric([bound], count)
    yield evicted
    yield CounterMetricFamily("sio_gateway_recovery_sessions_evicted", "Disconnected sessions dropped by STATE_RECOVERY_MAX_SESSIONS", value=r.sessions_evicted)


def http_metrics(http: HttpServer) -> Iterator[Metric]:
    """The HTTP front's bounds (gateway/http/): every time a limit trips, so an operator sees
    hostile or broken clients without logs."""
    s = http.stats
    yield GaugeMetricFamily("sio_gateway_http_connections", "Open TCP connections (upgraded or not)", value=len(http.connections))
    timeouts = CounterMetricFamily("sio_gateway_http_timeouts", "HTTP connections timed out, by phase (header, body, keepalive)", labels=["phase"])
    for phase, count in s.timeouts.items():
        timeouts.add_metric([phase], count)
    yield timeouts
    yield CounterMetricFamily("sio_gateway_http_connections_over_limit", "TCP connections closed at once for HTTP_MAX_CONNECTIONS", value=s.connections_over_limit)
    accept = CounterMetricFamily("sio_gateway_http_accept_errors", "Failed accepts (emfile/enfile: out of descriptors), by error", labels=["error"])
    for kind, count in s.accept_errors.items():
        accept.add_metric([kind], count)
    yield accept
    yield CounterMetricFamily("sio_gateway_http_headers_too_large", "Requests refused with 431/414 (HTTP_MAX_HEADER_BYTES, HTTP_MAX_HEADERS)", value=s.headers_too_large)
    yield CounterMetricFamily("sio_gateway_http_bad_requests", "Requests the HTTP parser refused (400)", value=s.bad_requests)
    yield CounterMetricFamily("sio_gateway_http_read_pauses", "Times reading paused for pipelined requests or an unread write buffer", value=s.read_pauses)


# The operations endpoints only read: anything but GET (and HEAD, its headers) is refused.
_ALLOW = [("Allow", "GET, HEAD")]


def _read_only(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
    def guarded(request: Request) -> Any:
        if request.method not in ("GET", "HEAD"):
            request.respond(405, b'{"error":"method not allowed"}', _ALLOW, content_type="application/json", close=True)
            return None
        return handler(request)

    return guarded


def mount_ops(router: Router, sources: OpsSources, registry: CollectorRegistry) -> None:
    """Route /health, /health/live, /health/ready, /stats and /metrics to what `sources` holds;
    the gateway's own counters join `registry`, which the caller owns (and may add collectors to)."""
    registry.register(GatewayCollector(sources))  # type: ignore[arg-type]
    readiness = Readiness(sources)

    def live_handler(request: Request) -> None:
        # Answered from the event loop itself: an answer proves the loop runs.
        request.respond(200, b'{"status":"live"}', content_type="application/json")

    def ready_handler(request: Request) -> None:
        status, body = readiness.check()
        request.respond(status, orjson.dumps(body), content_type="application/json")

    def health_handler(request: Request) -> None:
        status, body = health(sources)
        request.respond(status, orjson.dumps(body), content_type="application/json")

    async def stats_handler(request: Request) -> None:
        body = stats(sources.server)
        if sources.cluster is not None:
            body["redis"] = await sources.cluster.redis_info()
        request.respond(200, orjson.dumps(body), content_type="application/json")

    def metrics_handler(request: Request) -> None:
        request.respond(200, generate_latest(registry), content_type="text/plain; version=0.0.4; charset=utf-8")

    router.add("/health", _read_only(health_handler))
    router.add("/health/live", _read_only(live_handler))
    router.add("/health/ready", _read_only(ready_handler))
    router.add("/stats", _read_only(stats_handler))
    router.add("/metrics", _read_only(metrics_handler))
