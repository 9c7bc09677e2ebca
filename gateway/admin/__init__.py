"""@socket.io/admin-ui for the gateway: `instrument(server, settings)`, as Node's `instrument(io, opts)`.

    from gateway.admin import instrument
    admin = instrument(io, settings)     # ADMIN_USERNAME / ADMIN_PASSWORD_HASH / ADMIN_MODE ...
    await io.start(); admin.start()      # stats every 2 s; admin.close() before io.close()

The standalone gateway does this itself with ADMIN_UI=true (gateway/app.py).
"""

from __future__ import annotations

from typing import Any, Iterator

from ..config import Settings
from ..sio.server import Server
from .auth import AdminAuth, MemorySessions, RedisSessions, SessionStore, session_store
from .namespace import NAMESPACE, AdminUI, serialize, supported_features
from .stats import EventBuckets, NodeStats, server_id

__all__ = [
    "NAMESPACE",
    "AdminAuth",
    "AdminCollector",
    "AdminUI",
    "EventBuckets",
    "MemorySessions",
    "NodeStats",
    "RedisSessions",
    "SessionStore",
    "instrument",
    "serialize",
    "server_id",
    "session_store",
    "supported_features",
]


def instrument(server: Server, settings: Settings | None = None, *, sessions: SessionStore | None = None) -> AdminUI:
    """Add the /admin namespace to `server` and return it; call `start()` once the loop runs
    (the served `gateway.Server`'s metrics registry gets the admin counters at once)."""
    admin = AdminUI(server, settings or server.settings, sessions)
    registry = getattr(server, "metrics_registry", None)  # the served Server has one, the bare registry not
    if registry is not None:
        registry.register(AdminCollector(admin))
    return admin


class AdminCollector:
    """Prometheus counters of admin logins, actions and stats emissions."""

    def __init__(self, admin: AdminUI) -> None:
        self.admin = admin

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        admin = self.admin
        logins = CounterMetricFamily("sio_gateway_admin_logins", "Admin UI connection attempts, by outcome (full = ADMIN_MAX_CONNECTIONS, throttled = ADMIN_AUTH_FAILURES_PER_MIN)", labels=["outcome"])
        for outcome, count in admin.auth.stats.outcomes.items():
            logins.add_metric([outcome], count)
        yield logins
        actions = CounterMetricFamily("sio_gateway_admin_actions", "Admin UI actions, by action and outcome (refused = ADMIN_READONLY)", labels=["action", "outcome"])
        for (action, outcome), count in admin.actions.items():
            actions.add_metric([action, outcome], count)
        yield actions
        yield CounterMetricFamily("sio_gateway_admin_sessions_dropped", "Admin session ids forgotten early because ADMIN_MAX_SESSIONS was reached", value=admin.sessions.dropped)
        yield CounterMetricFamily("sio_gateway_admin_store_errors", "Admin session store look-ups or saves that failed (Redis unreachable)", value=admin.auth.stats.store_errors)
        yield CounterMetricFamily("sio_gateway_admin_stats_errors", "server_stats emissions that failed", value=admin.stats_errors)
        yield GaugeMetricFamily("sio_gateway_admin_sockets", "Admin UI sockets connected to this node", value=len(admin.nsp.sockets))
