"""The shipped Grafana dashboard (docs/grafana/sio-gateway.json) queries only metrics a live node
exports, the way Prometheus would scrape it: the standalone gateway (`python -m gateway`, so the
presence metrics exist) joined to a real redis-server (so the cluster metrics exist), scraped on
its ops port.

Every `sio_gateway_*` name in every panel's PromQL must be a series of that node's /metrics
(a counter `X` gives `X_total`, a histogram `_bucket`/`_sum`/`_count`); what goes into `rate()`
or `increase()` must be a counter or a histogram's series; and the panels the dashboard promises
are there.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RedisServerProcess
from tests.gateway_process import REPO
from tests.integration.test_ops_port import OpsPortProcess, get

DASHBOARD = REPO / "docs" / "grafana" / "sio-gateway.json"
METRIC_NAME = re.compile(r"\bsio_gateway_[a-z0-9_]+\b")
RATED = re.compile(r"\b(?:rate|irate|increase)\(\s*(sio_gateway_[a-z0-9_]+)")
# What the dashboard is for (the list): each of these must be queried by some panel.
PROMISED = (
    "sio_gateway_connections",
    "sio_gateway_sockets",
    "sio_gateway_rooms",
    "sio_gateway_broadcasts_total",
    "sio_gateway_deliveries_total",
    "sio_gateway_redis_publish_seconds_bucket",
    "sio_gateway_redis_link_up",
    "sio_gateway_redis_outbox",
    "sio_gateway_redis_reconnects_total",
    "sio_gateway_redis_stalls_total",
    "sio_gateway_slow_consumer_disconnects_total",
    "sio_gateway_http_timeouts_total",
    "sio_gateway_http_connections_over_limit_total",
    "sio_gateway_presence_up",
    "sio_gateway_recoveries_total",
    "sio_gateway_bytes_total",
)


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def exported_series(text: str) -> tuple[set[str], set[str]]:
    """(every series name a scrape of `text` offers, the names that may be rated)."""
    names: set[str] = set()
    rateable: set[str] = set()
    for family in text_string_to_metric_families(text):
        if family.type == "counter":
            series = {family.name + "_total"}
            rateable |= series
        elif family.type == "histogram":
            series = {family.name + suffix for suffix in ("_bucket", "_sum", "_count")}
            rateable |= series
        else:
            series = {family.name}
        names |= series | {sample.name for sample in family.samples}
    return names, rateable


def test_dashboard_queries_only_metrics_a_live_node_exports(redis_server: RedisServerProcess, tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]
    assert exprs, "no queries in the dashboard"
    queried = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    assert not set(PROMISED) - queried, f"the dashboard shows none of {sorted(set(PROMISED) - queried)}"

    env = {"REDIS_URL": redis_server.url, "AUTH_MODE": "none", "LOG_LEVEL": "WARNING"}
    node = OpsPortProcess("gateway", env=env, log_dir=tmp_path).start()
    try:
        # Prometheus scrapes the ops port; the public port does not serve /metrics.
        assert get(node.url + "/metrics")[0] == 404
        status, body = get(node.ops_url + "/metrics")
        assert status == 200, body[:500]
        names, rateable = exported_series(body.decode())
    finally:
        node.stop()
    assert "sio_gateway_redis_link_up" in names and "sio_gateway_presence_up" in names, "not a node with Redis and presence"

    missing = sorted(queried - names)
    assert not missing, f"the dashboard queries metrics no node exports: {missing}"
    for expr in exprs:
        for name in RATED.findall(expr):
            assert name in rateable, f"{name} is a gauge, rate()/increase() of it means nothing: {expr}"


def test_dashboard_is_importable_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert METRIC_NAME.search(variables["instance"]["definition"])
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), expr
            assert 'instance=~"$instance"' in expr, f"{panel['title']}: ignores the node selector: {expr}"
