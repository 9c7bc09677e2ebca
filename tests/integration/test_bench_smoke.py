"""Every bench scenario, run tiny against our bench app, so the benchmark suite cannot rot.

Real processes as in `make bench` (bench.app nodes, a redis-server for the cross-node scenarios,
a 3-master Redis Cluster for the sharded ones, the raw Engine.IO load generator), a few dozen
clients and half-second phases. Nothing here is timed: a run must complete, deliver, and lose
nothing. The Redis Cluster is started once for the module (a start costs a few seconds) and
shared by the sharded runs, which only use pub/sub and leave nothing behind; they run one after
the other (their room channels would meet), in one of two lanes that keep the module short.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bench.report import README_BEGIN, README_END, markdown, splice_readme, write_report
from bench.run import RedisCluster, machine, run_one, scenarios

TINY = scenarios(scale=0.02, duration=0.5)


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.fail("redis-server and redis-cli are required for the sharded scenarios")
    cluster = RedisCluster(tmp_path_factory.mktemp("bench-redis-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def smoke_results(tmp_path_factory: pytest.TempPathFactory, redis_cluster: RedisCluster) -> dict[str, dict[str, Any]]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required for the cross-node scenarios")
    log_dir = tmp_path_factory.mktemp("bench-logs")

    def lane(names: list[str]) -> dict[str, dict[str, Any]]:
        done = {}
        for name in names:
            scenario = TINY[name]
            result = run_one("ours", scenario, log_dir, timeout=60.0, redis_cluster=redis_cluster)
            result.update({"server": "ours", "bench_scenario": name, "repeat": 0, "nodes": scenario.nodes, "curve": scenario.curve, "adapter": scenario.adapter})
            done[name] = result
        return done

    sharded = [name for name, s in TINY.items() if s.adapter == "sharded"]
    others = [name for name in TINY if name not in sharded]
    lanes = [sharded + others[: len(others) // 2 - len(sharded) // 2], others[len(others) // 2 - len(sharded) // 2 :]]
    results: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(len(lanes)) as pool:
        for done in pool.map(lane, lanes):
            results.update(done)
    assert set(results) == set(TINY)
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
    if TINY[name].loadgen == "connections":
        assert result["connections"] == TINY[name].args["subscribers"]
        assert result["connect_per_s"] > 0
        assert result["server_rss_after_kib"] > 0
    else:
        assert result["latency_phase"]["deliveries"] > 0


def test_cross_node_scenarios_really_cross(smoke_results: dict[str, dict[str, Any]]) -> None:
    # Half the subscribers sit on the second node, so deliveries there prove Redis carried them.
    for name in ("cross-node", "rooms-cross-node", "rooms-cross-node-streams", "rooms-cross-node-sharded"):
        assert smoke_results[name]["nodes"] == 2
        assert TINY[name].nodes == 2
    assert TINY["rooms-cross-node-streams"].adapter == "streams"
    assert TINY["rooms-cross-node-sharded"].adapter == "sharded"


def test_cluster_runs_split_cpu_per_node(smoke_results: dict[str, dict[str, Any]]) -> None:
    """Every clustered run reports each node's CPU apart from Redis's (the cluster-size curve),
    and the sharded runs count all three redis-server masters."""
    for name, scenario in TINY.items():
        if not scenario.clustered:
            continue
        saturation = smoke_results[name]["saturation"]
        redis = 3 if scenario.adapter == "sharded" else 1
        assert len(saturation["server_cpu_s_by_pid"]) == redis + scenario.nodes, name
        assert len(saturation["node_cpu_s"]) == scenario.nodes, name
        assert saturation["node_cpu_us_per_delivery_per_node"] is not None, name
    for nodes in (2, 3, 4):
        assert any(s.curve == "classic" and s.nodes == nodes for s in TINY.values())
        assert any(s.curve == "sharded" and s.nodes == nodes for s in TINY.values())


def test_non_member_node_holds_no_members(smoke_results: dict[str, dict[str, Any]]) -> None:
    result = smoke_results["rooms-non-member"]
    scenario = TINY["rooms-non-member"]
    assert scenario.nodes == 3 and scenario.member_nodes == 2
    assert result["idle_clients"] == scenario.args["idle_clients"]
    assert result["saturation"]["non_member_us_per_message"] >= 0


def test_report_renders_the_runs(smoke_results: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    runs = list(smoke_results.values())
    text = markdown(runs, machine())
    for name in TINY:
        assert f"| {name} | ours |" in text
    assert "failed" not in text
    assert "How cost grows with the cluster" in text
    assert "µs per non-member message" in text
    assert "a node with no member of the room (classic): its CPU per message" in text
    assert "the channel-name check alone, with the RESP parse, in process" in text
    check = smoke_results["rooms-non-member"]["channel_check"]
    assert check["check_us_per_message"] > 0 and check["parse_and_check_us_per_message"] > 0
    written = {p.name for p in write_report(runs, machine(), tmp_path)}
    assert {"results.md", "cluster_size.png", "deliveries_per_s.png", "latency.png"} <= written


def test_readme_gets_the_sweep_between_its_markers(smoke_results: dict[str, dict[str, Any]], tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n## Performance\n\nintro\n\n{README_BEGIN}\nold table\n{README_END}\n\nafter\n")
    text = markdown(list(smoke_results.values()), machine())
    splice_readme(readme, text)
    splice_readme(readme, text)  # again: the block is replaced, not appended
    spliced = readme.read_text()
    assert "old table" not in spliced and "# Benchmark results" not in spliced
    assert spliced.count("| fanout | ours |") == 1 and spliced.endswith("after\n") and "intro" in spliced
    # The project's own README carries the markers, with a sweep between them.
    own = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "| rooms-cross-node | ours |" in own[own.index(README_BEGIN) : own.index(README_END)]
