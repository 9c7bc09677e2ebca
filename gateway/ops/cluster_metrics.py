"""Prometheus view of the cluster: the transport's link counters, its outbox, the publish latency
histogram, the link states and the requests pending on other nodes.

Read at scrape time from the plain counters the transports bump (`LinkStats`), so the hot path
never calls into prometheus_client; nothing here is yielded for a node without a cluster.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from ..cluster.adapter import ClusterAdapter
from ..cluster.transport import PUBLISH_BUCKETS

_COUNTERS = (
    ("published", "sio_gateway_redis_published", "Messages published to Redis"),
    ("received", "sio_gateway_redis_received", "Messages received from Redis"),
    ("bad_messages", "sio_gateway_redis_bad_messages", "Malformed or foreign Redis messages dropped"),
    ("request_timeouts", "sio_gateway_redis_request_timeouts", "Cluster requests that timed out"),
    ("reconnects", "sio_gateway_redis_reconnects", "Redis links re-established"),
    ("reconnect_attempts", "sio_gateway_redis_reconnect_attempts", "Failed Redis connection attempts"),
    ("watchdog_rebuilds", "sio_gateway_redis_watchdog_rebuilds", "Subscribers rebuilt because they stopped receiving"),
    ("stalls", "sio_gateway_redis_stalls", "Times Redis stopped answering while the links stayed open"),
    ("outbox_dropped", "sio_gateway_redis_outbox_dropped", "Cross-node messages dropped (outbox full or too old)"),
    ("publish_errors", "sio_gateway_redis_publish_errors", "Failed publish attempts"),
)


def cluster_metrics(adapter: Any) -> Iterator[Metric]:
    """The cluster's metric families when `adapter` (a server's main namespace adapter) is a
    `ClusterAdapter`; nothing otherwise."""
    if not isinstance(adapter, ClusterAdapter):
        return
    transport = adapter.transport
    s = transport.stats
    for attribute, name, documentation in _COUNTERS:
        yield CounterMetricFamily(name, documentation, value=getattr(s, attribute))
    yield GaugeMetricFamily("sio_gateway_redis_outbox", "Messages waiting to be published", value=len(transport.outbox))
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
    pending = sum(len(member.requests) for member in transport.members.values() if isinstance(member, ClusterAdapter))
    yield GaugeMetricFamily("sio_gateway_cluster_pending_requests", "Cluster requests awaiting answers", value=pending)
    for kind, name, documentation, value in transport.figures():
        family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        yield family(name, documentation, value=value)
