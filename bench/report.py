"""Turning a sweep's JSON lines into the Markdown table of medians and the PNG plots.

    .venv/bin/python -m bench.report bench/results/results.jsonl     # re-render without re-running

Every ratio is against Node.js socket.io measured in the same sweep, because on a shared 2-core
box only same-run comparisons mean anything. The issue's targets are checked here and shown as
met or missed; nothing is adjusted to make them pass.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

SERVER_ORDER = ("ours", "node", "pysio", "ceiling")
SERVER_LABELS = {
    "ours": "ours",
    "node": "Node.js socket.io",
    "pysio": "python-socketio",
    "ceiling": "ceiling",
}
SCENARIO_ORDER = (
    "fanout",
    "cross-node",
    "rooms",
    "rooms-cross-node",
    "rooms-cross-node-streams",
    "rooms-cross-node-sharded",
    "rooms-cross-node-3",
    "rooms-cross-node-4",
    "rooms-cross-node-sharded-3",
    "rooms-cross-node-sharded-4",
    "rooms-non-member",
    "polling",
    "rooms-polling",
    "connections",
    "connections-default",
)


def _get(result: dict[str, Any], path: str) -> float | None:
    value: Any = result
    for key in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value if isinstance(value, (int, float)) else None


METRICS: dict[str, str] = {
    "dps": "saturation.deliveries_per_s",
    "us": "saturation.server_cpu_us_per_delivery",
    "server_cores": "saturation.server_cpu_cores",
    "gen_cores": "saturation.gen_cpu_cores",
    "gen_us": "saturation.gen_cpu_us_per_delivery",
    "p50": "latency.p50_ms",
    "p99": "latency.p99_ms",
    "lost": "lost",
    "kib": "rss_kib_per_connection",
    "cps": "connect_per_s",
    "connect_us": "connect_phase.server_cpu_us_per_connection",
    # the gateway nodes only (Redis apart), per delivery and per node holding room members
    "node_us": "saturation.node_cpu_us_per_delivery_per_node",
    "redis_us": "saturation.redis_cpu_us_per_delivery",
    "non_member_us": "saturation.non_member_us_per_message",
    # our channel-name check alone, in process (bench/channel_check.py), beside that whole bill
    "check_us": "channel_check.check_us_per_message",
    "parse_check_us": "channel_check.parse_and_check_us_per_message",
    # ours measured again at the load Node.js had in its latency phase (same sweep)
    "eq_load": "latency_equal_load.deliveries_per_s",
    "eq_p50": "latency_equal_load.p50_ms",
    "eq_p99": "latency_equal_load.p99_ms",
}
EQUAL_LOAD_METRICS = ("eq_load", "eq_p50", "eq_p99")


@dataclass
class Cell:
    """Medians over the successful runs of one (scenario, server)."""

    runs: int
    errors: list[str]
    values: dict[str, float | None]
    quantiles: list[float] | None
    equal_quantiles: list[float] | None = None
    nodes: int = 1
    curve: str = ""

    def __getitem__(self, key: str) -> float | None:
        return self.values.get(key)


def medians(results: list[dict[str, Any]]) -> dict[tuple[str, str], Cell]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r.get("bench_scenario", "?"), r.get("server", "?")), []).append(r)
    cells = {}
    for key, runs in groups.items():
        # Separate equal-load runs (older sweeps ran them apart) only add a latency figure; they
        # stay out of the main medians. Newer sweeps carry it in ours' own runs.
        ok = [r for r in runs if "error" not in r and not r.get("equal_load")]
        equal = [r for r in runs if "error" not in r and r.get("latency_equal_load")]
        values: dict[str, float | None] = {}
        for name, path in METRICS.items():
            found = [v for v in (_get(r, path) for r in (equal if name in EQUAL_LOAD_METRICS else ok)) if v is not None]
            values[name] = statistics.median(found) if found else None
        if ok:
            values["lost"] = max(r.get("lost", 0) for r in ok)  # any loss shows
        qs = [r["latency"]["quantiles_ms"] for r in ok if r.get("latency", {}).get("quantiles_ms")]
        quantiles = [statistics.median(col) for col in zip(*qs)] if qs else None
        eqs = [r["latency_equal_load"]["quantiles_ms"] for r in equal if r["latency_equal_load"].get("quantiles_ms")]
        equal_quantiles = [statistics.median(col) for col in zip(*eqs)] if eqs else None
        first = (ok or runs)[0]
        curve = first.get("curve") or ""
        cells[key] = Cell(len(ok), [r["error"] for r in runs if "error" in r], values, quantiles, equal_quantiles, int(first.get("nodes") or 1), curve)
    return cells


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "–"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "–"
    return f"{value / base:.2f}×"


@dataclass(frozen=True)
class Target:
    """ours[metric] / against[peer_metric] within bound; with `against` empty, ours[metric]
    itself (an absolute figure, strictly below the bound when at_most)."""

    label: str
    scenario: str
    metric: str
    against: str
    bound: float
    at_most: bool  # True: ours/against <= bound; False: ours/against >= bound
    peer_metric: str = ""

    @property
    def bound_text(self) -> str:
        if not self.against:
            return f"{'<' if self.at_most else '>'} {self.bound:g} µs"
        return f"{'≤' if self.at_most else '≥'} {self.bound} × {SERVER_LABELS[self.against]}"


# Issue 15's list; scenarios a sweep did not run are left out of the table.
TARGETS = (
    Target("rooms 1000×2 across 2 nodes (classic): server CPU µs per delivery, Redis incl.", "rooms-cross-node", "us", "node", 0.6, True),
    Target("rooms 1000×2 across 2 nodes (classic): deliveries/s", "rooms-cross-node", "dps", "node", 1.4, False),
    Target("rooms 1000×2, one node: server CPU µs per delivery", "rooms", "us", "node", 0.5, True),
    Target("connection storm, 10,000 WebSocket clients: connects/s", "connections", "cps", "node", 1.5, False),
    Target("connection storm, 10,000 WebSocket clients: idle KiB per connection", "connections", "kib", "node", 0.5, True),
    Target("connection storm, 2,000 default clients (polling, then upgrade): connects/s", "connections-default", "cps", "node", 1.5, False),
    Target("connection storm, 2,000 default clients: idle KiB per connection", "connections-default", "kib", "node", 0.5, True),
    Target("polling subscribers: deliveries/s", "polling", "dps", "node", 2.0, False),
    Target("polling subscribers: server CPU µs per delivery", "polling", "us", "node", 0.5, True),
    Target("rooms on polling: deliveries/s", "rooms-polling", "dps", "node", 2.0, False),
    Target("rooms on polling: server CPU µs per delivery", "rooms-polling", "us", "node", 0.5, True),
    Target("sharded (3-master Redis Cluster) rooms across nodes: server CPU µs per delivery, Redis incl.", "rooms-cross-node-sharded", "us", "node", 0.6, True),
    Target("streams with connection state recovery, rooms across nodes: server CPU µs per delivery, Redis incl.", "rooms-cross-node-streams", "us", "node", 0.6, True),
    Target("a node with no member of the room (classic): its CPU per message", "rooms-non-member", "non_member_us", "", 1.0, True),
    Target("the channel-name check alone, with the RESP parse, in process", "rooms-non-member", "parse_check_us", "", 1.0, True),
    # kept from the earlier issues
    Target("fanout 1×1000: server CPU µs per delivery", "fanout", "us", "node", 0.6, True),
    Target("fanout 1×1000: deliveries/s", "fanout", "dps", "node", 1.3, False),
    Target("cross-node fanout: server CPU µs per delivery (incl. Redis)", "cross-node", "us", "node", 0.7, True),
    *(Target(f"{s}: deliveries/s vs python-socketio", s, "dps", "pysio", 5.0, False) for s in SCENARIO_ORDER),
)


def equal_load_targets(scenarios: list[str]) -> list[Target]:
    """p99 <= 0.7x Node.js at equal load, for every scenario with a latency phase."""
    return [Target(f"{s}: p99 latency at Node.js's load", s, "eq_p99", "node", 0.7, True, peer_metric="p99") for s in scenarios]


def check(target: Target, cells: dict[tuple[str, str], Cell]) -> tuple[float | None, bool | None]:
    """(ours / peer or ours' own figure, met); (None, None) when not measured."""
    ours = cells.get((target.scenario, "ours"))
    value = ours[target.metric] if ours else None
    if value is None:
        return None, None
    if not target.against:
        return value, (value < target.bound) if target.at_most else (value > target.bound)
    peer = cells.get((target.scenario, target.against))
    base = peer[target.peer_metric or target.metric] if peer else None
    if not base:
        return None, None
    ratio = value / base
    return ratio, ratio <= target.bound if target.at_most else ratio >= target.bound


def _order(cells: dict[tuple[str, str], Cell]) -> list[str]:
    return [s for s in SCENARIO_ORDER if any(k[0] == s for k in cells)] + sorted({k[0] for k in cells} - set(SCENARIO_ORDER))


def curve_points(cells: dict[tuple[str, str], Cell]) -> dict[tuple[str, str], list[tuple[int, Cell]]]:
    """(line, server) -> [(nodes, cell)] for the cluster-size curve, lines "classic"/"sharded"."""
    points: dict[tuple[str, str], list[tuple[int, Cell]]] = {}
    for (scenario, server), cell in cells.items():
        if cell.curve and cell.runs:
            points.setdefault((cell.curve, server), []).append((cell.nodes, cell))
    for line in points.values():
        line.sort(key=lambda p: p[0])
    return points


def machine_text(machine: dict[str, Any]) -> str:
    text = (
        f"Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, {machine.get('memory_gib', '?')} GiB, "
        f"Linux {machine.get('kernel', '?')}, Python {machine.get('python', '?')}, Node.js {machine.get('node', '?')}, {machine.get('redis', '?')}."
    )
    packages = machine.get("packages") or {}
    if packages:
        text += " Versions: " + ", ".join(f"{name} {version}" for name, version in packages.items()) + "."
    return text


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    cells = medians(results)
    scenarios = _order(cells)
    servers = [s for s in SERVER_ORDER if any(k[1] == s for k in cells)]
    sweep = next((r.get("sweep") for r in results if r.get("sweep")), time.strftime("%Y%m%dT%H%M%S"))
    repeats = max((r.get("repeat", 0) for r in results), default=0) + 1
    lines = [
        "# Benchmark results",
        "",
        f"Sweep `{sweep}`, {repeats} run(s) per cell, medians shown. {machine_text(machine)} "
        "Generator and servers share the box, loopback only. Ratios (×) are against Node.js socket.io in the same sweep.",
        "",
        "deliveries/s: at saturation (a window of messages in flight). server µs/delivery: CPU (user+sys, from /proc) of every "
        "server process, Redis included, per delivery at saturation. generator: cores the load generator used. p50/p99: "
        "publish-to-delivery latency at 50 % of the saturation rate. lost: deliveries missing after the drain.",
        "",
        "| scenario | server | deliveries/s | × Node | server µs/delivery | × Node | generator cores | p50 ms | p99 ms | × Node | lost |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario in scenarios:
        node = cells.get((scenario, "node"))
        for server in servers:
            cell = cells.get((scenario, server))
            if cell is None:
                continue
            if not cell.runs:
                lines.append(f"| {scenario} | {SERVER_LABELS[server]} | failed: {cell.errors[0][:80]} | | | | | | | | |")
                continue
            lines.append(
                "| {sc} | {sv} | {dps} | {rdps} | {us} | {rus} | {gen} | {p50} | {p99} | {rp99} | {lost} |".format(
                    sc=scenario,
                    sv=SERVER_LABELS[server],
                    dps=_fmt(cell["dps"]),
                    rdps=_ratio(cell["dps"], node["dps"] if node else None),
                    us=_fmt(cell["us"], 2),
                    rus=_ratio(cell["us"], node["us"] if node else None),
                    gen=_fmt(cell["gen_cores"], 2),
                    p50=_fmt(cell["p50"], 2),
                    p99=_fmt(cell["p99"], 2),
                    rp99=_ratio(cell["p99"], node["p99"] if node else None),
                    lost=_fmt(cell["lost"]),
                )
            )

    storms = [s for s in scenarios if any(c.runs and (c["kib"] is not None or c["cps"] is not None) for k, c in cells.items() if k[0] == s)]
    if storms:
        lines += [
            "",
            "Connection storms: clients connecting all at once (how fast they were all connected, and the server CPU that "
            "took per connection), then the server RSS growth per connection once they had joined a room and sat idle.",
            "",
            "| scenario | server | connects/s | × Node | server CPU µs per connect | × Node | KiB per connection | × Node |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for scenario in storms:
            node = cells.get((scenario, "node"))
            for server in servers:
                cell = cells.get((scenario, server))
                if cell is None or not cell.runs:
                    continue
                lines.append(
                    f"| {scenario} | {SERVER_LABELS[server]} | {_fmt(cell['cps'])} | {_ratio(cell['cps'], node['cps'] if node else None)} | "
                    f"{_fmt(cell['connect_us'])} | {_ratio(cell['connect_us'], node['connect_us'] if node else None)} | "
                    f"{_fmt(cell['kib'], 2)} | {_ratio(cell['kib'], node['kib'] if node else None)} |"
                )

    points = curve_points(cells)
    if points:
        lines += [
            "",
            "How cost grows with the cluster: rooms 1000×2 with the two members of each room on different nodes, spread "
            "round-robin over N nodes. per node: CPU of the gateway nodes / N / deliveries (Redis apart); total: every "
            "server process, Redis included, per delivery.",
            "",
            "| adapter | nodes | ours µs/delivery per node | Node.js µs/delivery per node | × Node | ours total µs/delivery | Node.js total | × Node | ours deliveries/s | Node.js deliveries/s |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for line in ("classic", "sharded"):
            by_nodes: dict[int, dict[str, Cell]] = {}
            for server in ("ours", "node"):
                for nodes, cell in points.get((line, server), []):
                    by_nodes.setdefault(nodes, {})[server] = cell
            for nodes in sorted(by_nodes):
                o, n = by_nodes[nodes].get("ours"), by_nodes[nodes].get("node")
                lines.append(
                    f"| {line} | {nodes} | {_fmt(o['node_us'] if o else None, 2)} | {_fmt(n['node_us'] if n else None, 2)} | "
                    f"{_ratio(o['node_us'] if o else None, n['node_us'] if n else None)} | {_fmt(o['us'] if o else None, 2)} | "
                    f"{_fmt(n['us'] if n else None, 2)} | {_ratio(o['us'] if o else None, n['us'] if n else None)} | "
                    f"{_fmt(o['dps'] if o else None)} | {_fmt(n['dps'] if n else None)} |"
                )

    non_member = [s for s in scenarios if any(c["non_member_us"] is not None for k, c in cells.items() if k[0] == s)]
    if non_member:
        lines += [
            "",
            "What a node pays for a message to a room it has no member in (classic mode: every node hears every message "
            "and must tell by the channel that it has nobody to deliver to): the CPU of a node holding only idle connections "
            "during saturation, per message published. Beside it, our code's share alone, measured in process on the "
            "same objects (bench/channel_check.py): the check of a parsed push, and the hiredis parse of a read's "
            "pushes plus the check; the rest of the node's bill is the kernel's receive and the event loop's wake-up "
            "per push Redis sends.",
            "",
            "| scenario | server | µs per non-member message | × Node | check alone µs | parse + check µs | member nodes' µs/delivery per node |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for scenario in non_member:
            node = cells.get((scenario, "node"))
            for server in servers:
                cell = cells.get((scenario, server))
                if cell is None or cell["non_member_us"] is None:
                    continue
                lines.append(
                    f"| {scenario} | {SERVER_LABELS[server]} | {_fmt(cell['non_member_us'], 2)} | "
                    f"{_ratio(cell['non_member_us'], node['non_member_us'] if node else None)} | "
                    f"{_fmt(cell['check_us'], 2)} | {_fmt(cell['parse_check_us'], 2)} | {_fmt(cell['node_us'], 2)} |"
                )

    equal = [s for s in scenarios if cells.get((s, "ours")) and cells[(s, "ours")]["eq_p99"] is not None]
    if equal:
        lines += [
            "",
            "Latency at equal load: the main table measures each server at 50 % of its own saturation rate, so a faster "
            "server carries more load there. Here ours is measured again (in the same run) at the load Node.js socket.io had "
            "in its latency phase; the issue's target is p99 ≤ 0.7× Node.js at that load. The 50 %-of-own-saturation p99 "
            "ratio is beside it.",
            "",
            "| scenario | load (deliveries/s) | ours p50 ms | ours p99 ms | Node.js p50 ms | Node.js p99 ms | p99 × Node | ≤ 0.7× | at 50 % of own saturation: ours p99 ms | × Node |",
            "|---|---:|---:|---:|---:|---:|---:|:---:|---:|---:|",
        ]
        for name in equal:
            ours = cells[(name, "ours")]
            node = cells.get((name, "node"))
            ratio, met = check(equal_load_targets([name])[0], cells)
            lines.append(
                f"| {name} | {_fmt(ours['eq_load'])} | {_fmt(ours['eq_p50'], 2)} | {_fmt(ours['eq_p99'], 2)} | "
                f"{_fmt(node['p50'] if node else None, 2)} | {_fmt(node['p99'] if node else None, 2)} | "
                f"{_ratio(ours['eq_p99'], node['p99'] if node else None)} | {'–' if met is None else 'yes' if met else '**no**'} | "
                f"{_fmt(ours['p99'], 2)} | {_ratio(ours['p99'], node['p99'] if node else None)} |"
            )

    # Equal-load rows for every scenario Node.js had a latency phase in (storms have none).
    latency_scenarios = [s for s in scenarios if cells.get((s, "node")) and cells[(s, "node")]["p99"] is not None and s not in storms]
    lines += ["", "Targets from the issue (ours against the named peer, same sweep):", "", "| target | ours / peer | bound | met |", "|---|---:|---:|:---:|"]
    ran = {k[0] for k in cells}
    for t in [*TARGETS, *equal_load_targets(latency_scenarios)]:
        if t.scenario not in ran or (t.against and (t.scenario, t.against) not in cells):
            continue  # not part of this sweep
        value, met = check(t, cells)
        if met is None:
            lines.append(f"| {t.label} | – | {t.bound_text} | not measured |")
            continue
        shown = f"{value:.2f} µs" if not t.against else f"{value:.2f}"
        lines.append(f"| {t.label} | {shown} | {t.bound_text} | {'yes' if met else '**no**'} |")

    ceiling_rows = [s for s in scenarios if cells.get((s, "ceiling")) and cells[(s, "ceiling")].runs]
    if ceiling_rows:
        lines += ["", "Generator ceiling (the same generator against a trivial pre-encoded-frame server): a result near it is bound by the generator and the box, not by the server."]
        for s in ceiling_rows:
            ceiling = cells[(s, "ceiling")]["dps"]
            ours = cells.get((s, "ours"))
            share = f"; ours reaches {ours['dps'] / ceiling:.0%} of it" if ours and ours["dps"] and ceiling else ""
            lines.append(f"- {s}: {_fmt(ceiling)} deliveries/s{share}")
    failures = [(k, c.errors) for k, c in cells.items() if c.errors]
    if failures:
        lines += ["", "Failed runs:"]
        for (scenario, server), errors in failures:
            for e in errors:
                lines.append(f"- {scenario} × {server}: {e.splitlines()[0][:200]}")
    lines.append("")
    return "\n".join(lines)


def plots(results: list[dict[str, Any]], out: Path) -> list[Path]:
    """Deliveries/s and µs/delivery per scenario, the latency distributions, connection storms,
    and the cluster-size curve (per-node CPU per delivery at 2, 3, 4 nodes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = medians(results)
    scenarios = _order(cells)
    servers = [s for s in SERVER_ORDER if any(k[1] == s for k in cells)]
    colors = {"ours": "#1f77b4", "node": "#2ca02c", "pysio": "#ff7f0e", "ceiling": "#7f7f7f"}
    written = []
    storm = {s for s in scenarios if any(c.runs and c["cps"] is not None for k, c in cells.items() if k[0] == s)}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    def bars(metric: str, title: str, ylabel: str, name: str, only: Callable[[str], bool] = lambda s: True) -> None:
        shown = [s for s in scenarios if only(s) and any(cells.get((s, v)) and cells[(s, v)][metric] is not None for v in servers)]
        if not shown:
            return
        fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(shown) + 2), 5.5))
        width = 0.8 / max(1, len(servers))
        for i, server in enumerate(servers):
            xs, ys = [], []
            for j, scenario in enumerate(shown):
                cell = cells.get((scenario, server))
                if cell is not None and cell[metric] is not None:
                    xs.append(j + i * width)
                    ys.append(cell[metric])
            ax.bar(xs, ys, width, label=SERVER_LABELS[server], color=colors.get(server))
        ax.set_xticks([j + width * (len(servers) - 1) / 2 for j in range(len(shown))], shown, rotation=30, ha="right")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        save(fig, name)

    bars("dps", "Deliveries per second at saturation (higher is better)", "deliveries/s", "deliveries_per_s.png", lambda s: s not in storm)
    bars("us", "Server CPU per delivery, all server processes incl. Redis (lower is better)", "µs per delivery", "cpu_per_delivery.png", lambda s: s not in storm)
    bars("kib", "Server memory per idle connection (lower is better)", "KiB per connection", "connection_memory.png", lambda s: s in storm)
    bars("cps", "Connection storm: clients connected per second (higher is better)", "connects/s", "connects_per_s.png", lambda s: s in storm)

    points = curve_points(cells)
    if points:
        fig, (left, right) = plt.subplots(1, 2, figsize=(12, 5))
        for (line, server), pts in sorted(points.items()):
            style = "-" if line == "classic" else "--"
            label = f"{SERVER_LABELS.get(server, server)}, {line}"
            for ax, metric in ((left, "node_us"), (right, "us")):
                xy = [(n, c[metric]) for n, c in pts if c[metric] is not None]
                if xy:
                    ax.plot([x for x, _ in xy], [y for _, y in xy], style, marker="o", label=label, color=colors.get(server))
        left.set_title("Per-node CPU per delivery (gateway nodes / N, Redis apart)")
        right.set_title("Total server CPU per delivery (every node + Redis)")
        for ax in (left, right):
            ax.set_xlabel("nodes (rooms 1000×2, members of a room on different nodes)")
            ax.set_ylabel("µs per delivery" + (" per node" if ax is left else ""))
            ax.set_xticks(sorted({n for pts in points.values() for n, _ in pts}))
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        save(fig, "cluster_size.png")

    latency_scenarios = [s for s in scenarios if s not in storm and any(cells.get((s, v)) and cells[(s, v)].quantiles for v in servers)]
    if latency_scenarios:
        columns = min(4, len(latency_scenarios))
        rows = -(-len(latency_scenarios) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 4.2 * rows), squeeze=False)
        for ax in axes.flat[len(latency_scenarios) :]:
            ax.set_visible(False)
        for ax, scenario in zip(axes.flat, latency_scenarios):
            for server in servers:
                cell = cells.get((scenario, server))
                if cell is None:
                    continue
                if cell.quantiles:
                    ax.plot(cell.quantiles, [i / 100 for i in range(len(cell.quantiles))], label=SERVER_LABELS[server], color=colors.get(server))
                if cell.equal_quantiles:
                    ax.plot(cell.equal_quantiles, [i / 100 for i in range(len(cell.equal_quantiles))], ":", label=f"{SERVER_LABELS[server]} at Node's load", color=colors.get(server))
            ax.set_xscale("log")
            ax.set_title(f"{scenario}: latency at 50 % load", fontsize=9)
            ax.set_xlabel("ms (log)")
            ax.set_ylabel("fraction of deliveries")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        save(fig, "latency.png")
    return written


def write_report(results: list[dict[str, Any]], machine: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    md = out / "results.md"
    md.write_text(markdown(results, machine))
    written = [md]
    try:
        written += plots(results, out)
    except ImportError:
        print("matplotlib is not installed: no plots (pip install -e '.[bench]')", file=sys.stderr)
    return written


README_BEGIN = "<!-- bench results: begin (python -m bench.report --readme README.md) -->"
README_END = "<!-- bench results: end -->"


def splice_readme(readme: Path, results_md: str) -> None:
    """Put a sweep's tables (results.md without its title) into the README between the markers,
    so the Performance section shows exactly what the sweep wrote and nothing typed by hand."""
    text = readme.read_text()
    begin, end = text.find(README_BEGIN), text.find(README_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"{readme}: the markers {README_BEGIN!r} and {README_END!r} are missing")
    body = results_md.split("\n", 1)[1].strip() if results_md.startswith("# ") else results_md.strip()
    readme.write_text(text[: begin + len(README_BEGIN)] + "\n\n" + body + "\n\n" + text[end:])


def main() -> None:
    import argparse

    from bench.run import machine

    parser = argparse.ArgumentParser(description="Re-render a sweep's report from its JSON lines.")
    parser.add_argument("results", nargs="?", type=Path, default=Path(__file__).parent / "results" / "results.jsonl")
    parser.add_argument("--readme", type=Path, help="also put the tables into this README's Performance section")
    args = parser.parse_args()
    results = [json.loads(line) for line in args.results.read_text().splitlines() if line.strip()]
    for written in write_report(results, machine(), args.results.parent):
        print(f"wrote {written}")
    if args.readme is not None:
        splice_readme(args.readme, (args.results.parent / "results.md").read_text())
        print(f"wrote {args.readme}")


if __name__ == "__main__":
    main()
