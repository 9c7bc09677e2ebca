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
SCENARIO_ORDER = ("fanout", "cross-node", "rooms", "rooms-cross-node", "rooms-cross-node-streams", "connections")


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
}


@dataclass
class Cell:
    """Medians over the successful runs of one (scenario, server)."""

    runs: int
    errors: list[str]
    values: dict[str, float | None]
    quantiles: list[float] | None

    def __getitem__(self, key: str) -> float | None:
        return self.values.get(key)


def medians(results: list[dict[str, Any]]) -> dict[tuple[str, str], Cell]:
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r.get("bench_scenario", "?"), r.get("server", "?")), []).append(r)
    cells = {}
    for key, runs in groups.items():
        # Equal-load runs only add a latency figure; they stay out of the main medians.
        ok = [r for r in runs if "error" not in r and not r.get("equal_load")]
        values: dict[str, float | None] = {}
        for name, path in METRICS.items():
            found = [v for v in (_get(r, path) for r in ok) if v is not None]
            values[name] = statistics.median(found) if found else None
        if ok:
            values["lost"] = max(r.get("lost", 0) for r in ok)  # any loss shows
        qs = [r["latency"]["quantiles_ms"] for r in ok if r.get("latency", {}).get("quantiles_ms")]
        quantiles = [statistics.median(col) for col in zip(*qs)] if qs else None
        cells[key] = Cell(len(ok), [r["error"] for r in runs if "error" in r], values, quantiles)
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
    label: str
    scenario: str
    metric: str
    against: str
    bound: float
    at_most: bool  # True: ours/against <= bound; False: ours/against >= bound


TARGETS = (
    Target("fanout 1×1000: server CPU µs per delivery", "fanout", "us", "node", 0.6, True),
    Target("fanout 1×1000: deliveries/s", "fanout", "dps", "node", 1.3, False),
    Target("cross-node fanout: server CPU µs per delivery (incl. Redis)", "cross-node", "us", "node", 0.7, True),
    Target("rooms 1000×2, one node: server CPU µs per delivery", "rooms", "us", "node", 0.8, True),
    Target("rooms 1000×2 across nodes: deliveries/s", "rooms-cross-node", "dps", "node", 1.0, False),
    Target("idle connection memory (KiB per connection)", "connections", "kib", "node", 0.7, True),
    Target("fanout p99 latency at 50 % load", "fanout", "p99", "node", 1.0, True),
    Target("rooms p99 latency at 50 % load", "rooms", "p99", "node", 1.0, True),
    # python-socketio has no streams adapter, so the streams scenario runs only ours and Node.js
    *(Target(f"{s}: deliveries/s vs python-socketio", s, "dps", "pysio", 5.0, False) for s in SCENARIO_ORDER if not s.endswith("-streams")),
)


def markdown(results: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    cells = medians(results)
    scenarios = [s for s in SCENARIO_ORDER if any(k[0] == s for k in cells)] + sorted({k[0] for k in cells} - set(SCENARIO_ORDER))
    servers = [s for s in SERVER_ORDER if any(k[1] == s for k in cells)]
    sweep = next((r.get("sweep") for r in results if r.get("sweep")), time.strftime("%Y%m%dT%H%M%S"))
    repeats = max((r.get("repeat", 0) for r in results), default=0) + 1
    lines = [
        "# Benchmark results",
        "",
        f"Sweep `{sweep}`, {repeats} run(s) per cell, medians shown. Machine: {machine.get('cpu', '?')}, "
        f"{machine.get('cores', '?')} cores, {machine.get('memory_gib', '?')} GiB, Linux {machine.get('kernel', '?')}, "
        f"Python {machine.get('python', '?')}, Node.js {machine.get('node', '?')}, {machine.get('redis', '?')}. "
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
    if any(k[0] == "connections" for k in cells):
        node = cells.get(("connections", "node"))
        lines += [
            "",
            "Idle connections: server RSS growth per connection after 10,000 clients connected and joined a room, and how fast they connected.",
            "",
            "| server | KiB per connection | × Node | connects/s | × Node |",
            "|---|---:|---:|---:|---:|",
        ]
        for server in servers:
            cell = cells.get(("connections", server))
            if cell is None or not cell.runs:
                continue
            lines.append(
                f"| {SERVER_LABELS[server]} | {_fmt(cell['kib'], 2)} | {_ratio(cell['kib'], node['kib'] if node else None)} | "
                f"{_fmt(cell['cps'])} | {_ratio(cell['cps'], node['cps'] if node else None)} |"
            )
    lines += ["", "Targets from the issue (ours against the named peer, same sweep):", "", "| target | ours / peer | bound | met |", "|---|---:|---:|:---:|"]
    for t in TARGETS:
        ours = cells.get((t.scenario, "ours"))
        peer = cells.get((t.scenario, t.against))
        if ours is None or peer is None or ours[t.metric] is None or not peer[t.metric]:
            lines.append(f"| {t.label} | – | {'≤' if t.at_most else '≥'} {t.bound} × {SERVER_LABELS[t.against]} | not measured |")
            continue
        ratio = ours[t.metric] / peer[t.metric]  # type: ignore[operator]
        met = ratio <= t.bound if t.at_most else ratio >= t.bound
        lines.append(f"| {t.label} | {ratio:.2f} | {'≤' if t.at_most else '≥'} {t.bound} × {SERVER_LABELS[t.against]} | {'yes' if met else '**no**'} |")
    equal = [r for r in results if r.get("equal_load") and "error" not in r and r.get("latency_equal_load")]
    if equal:
        lines += [
            "",
            "Latency at equal load: the rows above measure each server at 50 % of its own saturation rate, so a faster "
            "server carries more load there. Here ours is measured again at the load Node.js socket.io had in its latency phase:",
            "",
            "| scenario | load (deliveries/s) | ours p50 ms | ours p99 ms | Node.js p50 ms | Node.js p99 ms | p99 × Node |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for r in equal:
            name = r["bench_scenario"]
            node = cells.get((name, "node"))
            eq = r["latency_equal_load"]
            lines.append(
                f"| {name} | {_fmt(eq.get('deliveries_per_s'))} | {_fmt(eq.get('p50_ms'), 2)} | {_fmt(eq.get('p99_ms'), 2)} | "
                f"{_fmt(node['p50'] if node else None, 2)} | {_fmt(node['p99'] if node else None, 2)} | {_ratio(eq.get('p99_ms'), node['p99'] if node else None)} |"
            )
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
    """Deliveries/s and µs/delivery per scenario, the latency distribution, connection memory."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = medians(results)
    scenarios = [s for s in SCENARIO_ORDER if any(k[0] == s for k in cells)]
    servers = [s for s in SERVER_ORDER if any(k[1] == s for k in cells)]
    colors = {"ours": "#1f77b4", "node": "#2ca02c", "pysio": "#ff7f0e", "ceiling": "#7f7f7f"}
    written = []

    def bars(metric: str, title: str, ylabel: str, name: str, only: Callable[[str], bool] = lambda s: True) -> None:
        shown = [s for s in scenarios if only(s)]
        if not shown:
            return
        fig, ax = plt.subplots(figsize=(10, 5))
        width = 0.8 / max(1, len(servers))
        for i, server in enumerate(servers):
            xs, ys = [], []
            for j, scenario in enumerate(shown):
                cell = cells.get((scenario, server))
                if cell is not None and cell[metric] is not None:
                    xs.append(j + i * width)
                    ys.append(cell[metric])
            ax.bar(xs, ys, width, label=SERVER_LABELS[server], color=colors.get(server))
        ax.set_xticks([j + width * (len(servers) - 1) / 2 for j in range(len(shown))], shown)
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.legend()
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / name
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    bars("dps", "Deliveries per second at saturation (higher is better)", "deliveries/s", "deliveries_per_s.png")
    bars("us", "Server CPU per delivery, all server processes incl. Redis (lower is better)", "µs per delivery", "cpu_per_delivery.png")
    bars("kib", "Server memory per idle connection (lower is better)", "KiB per connection", "connection_memory.png", lambda s: s == "connections")

    latency_scenarios = [s for s in scenarios if s != "connections" and any(cells.get((s, v)) and cells[(s, v)].quantiles for v in servers)]
    if latency_scenarios:
        fig, axes = plt.subplots(1, len(latency_scenarios), figsize=(4.5 * len(latency_scenarios), 4.5), squeeze=False)
        for ax, scenario in zip(axes[0], latency_scenarios):
            for server in servers:
                cell = cells.get((scenario, server))
                if cell is None or not cell.quantiles:
                    continue
                ax.plot(cell.quantiles, [i / 100 for i in range(len(cell.quantiles))], label=SERVER_LABELS[server], color=colors.get(server))
            ax.set_xscale("log")
            ax.set_title(f"{scenario}: latency at 50 % load")
            ax.set_xlabel("ms (log)")
            ax.set_ylabel("fraction of deliveries")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / "latency.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
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


def main() -> None:
    from bench.run import machine

    path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "results" / "results.jsonl"
    results = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for written in write_report(results, machine(), path.parent):
        print(f"wrote {written}")


if __name__ == "__main__":
    main()
