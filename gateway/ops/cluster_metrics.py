"""Prometheus view of the cluster: the transport's link counters, its outbox, the publish latency
histogram, the link states, the counted cross-node losses and the requests pending on other nodes.

Read at scrape time from the plain counters the transports bump (`LinkStats`) and from their
supervision objects (`Outbox`, `NodeLinks`, the watchdog), so the hot path never calls into
prometheus_client; nothing here is yielded for a node without a cluster.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..cluster.adapter import ClusterAdapter
from ..cluster.transport import PUBLISH_BUCKETS
from ..redis.supervision import EXPIRED, FULL

_STATS = (
    ("published", "sio_gateway_redis_published", "Messages published to Redis"),
    ("received", "sio_gateway_redis_received", "Messages received from Redis"),
    ("bad_messages", "sio_gateway_redis_bad_messages", "Malformed or foreign Redis messages dropped"),
    ("request_timeouts", "sio_gateway_redis_request_timeouts", "Cluster requests that timed out"),
    ("publish_errors", "sio_gateway_redis_publish_errors", "Failed publish attempts"),
    ("publish_short", "sio_gateway_cluster_publish_short", "Cross-node deliveries lost: a publish reached fewer nodes than were subscribed (one per node missed)"),
    ("subscriber_gaps", "sio_gateway_cluster_subscriber_gaps", "Subscribers replaced while Redis may still have delivered to them (messages in between are lost, uncountable one by one)"),
)
_DROP_REASONS = ((FULL, "full"), (EXPIRED, "expired"))


def cluster_metrics(adapter: Any) -> Iterator[Metric]:
    """The cluster's metric families when `adapter` (a server's main namespace adapter) is a
    `ClusterAdapter`; nothing otherwise."""
    if not isinstance(adapter, ClusterAdapter):
        return
    transport = adapter.transport
    s = transport.stats
    node = transport.node
    outbox = transport.outbox
    for attribute, name, documentation in _STATS:
        yield CounterMetricFamily(name, documentation, value=getattr(s, attribute))
    yield CounterMetricFamily("sio_gateway_redis_reconnects", "Redis links re-established", value=node.reconnects)
    yield CounterMetricFamily("sio_gateway_redis_reconnect_attempts", "Failed Redis connection attempts", value=node.reconnect_attempts)
    yield CounterMetricFamily("sio_gateway_redis_watchdog_rebuilds", "Subscribers rebuilt because they stopped receiving", value=transport.watchdog_rebuilds)
    yield CounterMetricFamily("sio_gateway_redis_stalls", "Times Redis stopped answering while the links stayed open", value=transport.stalls)
    yield CounterMetricFamily("sio_gateway_redis_outbox_dropped", "Cross-node messages dropped (outbox full or too old)", value=outbox.dropped_total)
    by_reason = CounterMetricFamily("sio_gateway_cluster_outbox_dropped", "Cross-node messages dropped, by reason (full: OUTBOX_MAX_MESSAGES while down; expired: OUTBOX_MAX_AGE_MS)", labels=["reason"])
    for key, reason in _DROP_REASONS:
        by_reason.add_metric([reason], outbox.dropped.get(key, 0))
    yield by_reason
    yield GaugeMetricFamily("sio_gateway_redis_outbox", "Messages waiting to be published", value=len(outbox))
    buckets = []
    running = 0
    for bound, count in zip(PUBLISH_BUCKETS, s.publish_buckets):
        running += count
        buckets.append((repr(bound), running))
    buckets.append(("+Inf", running + s.publish_buckets[-1]))
    yield HistogramMetricFamily("sio_gateway_redis_publish_seconds", "Round trip of one pipelined publish batch", buckets=buckets, sum_value=s.publish_sum)
    link = GaugeMetricFamily("sio_gateway_redis_link_up", "Redis link state (1 up, 0 down)", labels=["link"])
    link.add_metric(["publisher"], 1 if transport.pub_up else 0)
    link.add_metric(["subscriber"], 1 if transport.sub_up else 0)
    yield link
    yield GaugeMetricFamily("sio_gateway_cluster_single_node", "1 while the node serves local clients only (Redis unreachable past REDIS_RECONNECT_ATTEMPTS)", value=1 if node.single_node else 0)
    pending = sum(len(member.requests) for member in transport.members.values() if isinstance(member, ClusterAdapter))
    yield GaugeMetricFamily("sio_gateway_cluster_pending_requests", "Cluster requests awaiting answers", value=pending)
    for kind, name, documentation, value in transport.figures():
        family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        yield family(name, documentation, value=value)
