"""Every bench scenario, run tiny against our bench app, so the benchmark suite cannot rot.

Real processes as in `make bench` (bench.app nodes, a redis-server for the cross-node scenarios,
the raw Engine.IO load generator), a few dozen clients and half-second phases. Nothing here is
timed: a run must complete, deliver, and lose nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from bench.report import markdown
from bench.run import machine, run_one, scenarios

TINY = scenarios(scale=0.02, duration=0.5)


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required for the cross-node scenarios")
    log_dir = tmp_path_factory.mktemp("bench-logs")
    results = {}
    for name, scenario in TINY.items():
        result = run_one("ours", scenario, log_dir, timeout=60.0)
        result.update({"server": "ours", "bench_scenario": name, "repeat": 0})
        results[name] = result
    return results


@pytest.mark.parametrize("name", list(TINY))
def test_scenario_delivers_everything(smoke_results: dict[str, dict[str, Any]], name: str) -> None:
    result = smoke_results[name]
    assert "error" not in result, result.get("error", "") + "\n" + result.get("server_log", "")
    saturation = result["saturation"]
    assert saturation["deliveries"] > 0
    assert saturation["server_cpu_s"] >= 0
    assert result["lost"] == 0
    assert result["unknown_messages"] == 0
    assert result["closed_connections"] == 0
    assert result["latency"]["count"] > 0
    if name == "connections":
        assert result["connections"] == TINY[name].args["subscribers"]
        assert result["connect_per_s"] > 0
        assert result["server_rss_after_kib"] > 0
    else:
        assert result["latency_phase"]["deliveries"] > 0


def test_cross_node_scenarios_really_cross(smoke_results: dict[str, dict[str, Any]]) -> None:
    # Half the subscribers sit on the second node, so deliveries there prove Redis carried them.
    for name in ("cross-node", "rooms-cross-node", "rooms-cross-node-streams"):
        assert smoke_results[name]["nodes"] == 2
        assert TINY[name].nodes == 2
    assert TINY["rooms-cross-node-streams"].adapter == "streams"


def test_report_renders_the_runs(smoke_results: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    text = markdown(list(smoke_results.values()), machine())
    for name in TINY:
        assert f"| {name} | ours |" in text
    assert "failed" not in text
