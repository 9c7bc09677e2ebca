"""The benchmark sweep: every scenario against our gateway and its peers, on this box, in one run.

    .venv/bin/python -m bench.run                     # the sweep `make bench` runs (40 runs, ~8 min on 2 cores)
    .venv/bin/python -m bench.run --servers ours,node --scenarios fanout --repeats 3

Each run starts fresh server processes (and a redis-server for the cross-node scenarios, or a
3-master Redis Cluster for the sharded ones) on free loopback ports, points `bench.loadgen` at
them with their PIDs (CPU and memory are read from /proc for all of them, Redis included), and
stops everything by PID. Results go to
`bench/results/`: `results.jsonl` (a JSON line per run), `results.md` (medians, ratios against
Node.js socket.io, the issue's targets) and PNG plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bench import channel_check

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
LOOPBACK = "127.0.0.1"

SERVERS = ("ours", "node", "pysio", "ceiling")


class BenchError(RuntimeError):
    """A server did not come up or the load generator failed."""


@dataclass(frozen=True)
class Scenario:
    """One row of the sweep: what the load generator runs and on how many nodes."""

    name: str
    loadgen: str
    nodes: int = 1
    args: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    # How the nodes share rooms: "classic" (@socket.io/redis-adapter's channels), "sharded"
    # (createShardedAdapter on a 3-master Redis Cluster, dynamic subscriptions) or "streams"
    # (one Redis stream as @socket.io/redis-streams-adapter, with connection state recovery on).
    adapter: str = "classic"
    # The servers this scenario is for (empty: every server that can run it).
    servers: tuple[str, ...] = ()
    # A point of the cluster-size curve (rooms across 2, 3, 4 nodes): its line, "classic" or "sharded".
    curve: str = ""

    @property
    def clustered(self) -> bool:
        return self.nodes > 1

    @property
    def member_nodes(self) -> int:
        """Nodes holding room members; the others hold only idle connections (non-member cost)."""
        return int(self.args.get("member_nodes") or self.nodes)


def scenarios(scale: float = 1.0, duration: float = 3.0) -> dict[str, Scenario]:
    """The issue's scenarios; `scale` shrinks the counts (the smoke test uses a tiny one)."""

    def n(value: int) -> int:
        return max(2, int(value * scale))

    timed = {"duration": duration, "ramp": min(0.5, duration / 4)}
    return {
        "fanout": Scenario("fanout", "fanout", 1, {"subscribers": n(1000), **timed}, "1 room x 1000 subscribers, one node"),
        "cross-node": Scenario("cross-node", "fanout", 2, {"subscribers": n(1000), **timed}, "1 room x 1000 subscribers split over 2 nodes + Redis, publisher on node 1"),
        "rooms": Scenario("rooms", "rooms", 1, {"rooms": n(1000), "window": n(1000), **timed}, "1000 rooms x 2 members, every room publishing, one node"),
        "rooms-cross-node": Scenario("rooms-cross-node", "rooms", 2, {"rooms": n(1000), "window": n(1000), **timed}, "1000 rooms x 2 members, the two members of each room on different nodes + Redis", curve="classic"),
        "rooms-cross-node-streams": Scenario(
            "rooms-cross-node-streams",
            "rooms",
            2,
            {"rooms": n(1000), "window": n(1000), **timed},
            "rooms-cross-node over one Redis stream with connection state recovery on (ours REDIS_MODE=streams, Node @socket.io/redis-streams-adapter)",
            adapter="streams",
        ),
        "connections": Scenario("connections", "connections", 1, {"subscribers": n(10000), "idle": min(1.0, duration)}, "10000 idle connections, then 3 broadcasts to all"),
        # Long-polling only (WebSocket blocked on the way), the polling target: subscribers
        # on HTTP long-polling, the publisher on WebSocket; one room, so a poll answer carries
        # several broadcasts at saturation (the shared-records path). Ceiling speaks WebSocket only.
        "polling": Scenario(
            "polling",
            "fanout",
            1,
            {"subscribers": n(500), "transport": "polling", **timed},
            "1 room x 500 subscribers on HTTP long-polling only, publisher on WebSocket, one node",
            servers=("ours", "node", "pysio"),
        ),
        # Chat behind such a proxy: both members of each room poll, and publish by POST.
        "rooms-polling": Scenario(
            "rooms-polling",
            "rooms",
            1,
            {"rooms": n(500), "window": n(500), "transport": "polling", **timed},
            "500 rooms x 2 members on HTTP long-polling only (they publish by POST), one node",
            servers=("ours", "node", "pysio"),
        ),
        # A default client's upgrade waits for the server's noop check (100 ms in engine.io and
        # ours), so with 200 handshakes in flight (as `connections`) the rate is capped near
        # 2,000/s by that wait, not by the server; 500 in flight lifts the cap and stays under
        # Node's default listen backlog (511), so no SYN of either server is dropped and retried.
        "connections-default": Scenario(
            "connections-default",
            "connections",
            1,
            {"subscribers": n(2000), "transport": "default", "connect_concurrency": 500, "idle": min(1.0, duration)},
            "2000 default clients, 500 handshakes in flight (polling handshake, POST 40, poll, WebSocket upgrade 2probe/3probe/5), then 3 broadcasts to all",
        ),
        **cluster_scenarios(n, timed),
    }


def cluster_scenarios(n: Callable[[int], int], timed: dict[str, float]) -> dict[str, Scenario]:
    """Rooms across a growing cluster, classic and sharded, and the cost of a node with no members.

    The two members of each room sit on different nodes, round-robin over all of them
    (bench.loadgen.room_member_target); 2 nodes classic is rooms-cross-node. Ours and Node.js
    only: python-socketio has no sharded adapter, and the ceiling server no cluster."""
    rooms = {"rooms": n(1000), "window": n(1000), **timed}
    peers = ("ours", "node")
    table = {
        "rooms-cross-node-sharded": Scenario(
            "rooms-cross-node-sharded",
            "rooms",
            2,
            rooms,
            "rooms-cross-node on a 3-master Redis Cluster: ours REDIS_MODE=sharded, Node createShardedAdapter (dynamic subscriptions)",
            adapter="sharded",
            servers=peers,
            curve="sharded",
        )
    }
    for nodes in (3, 4):
        table[f"rooms-cross-node-{nodes}"] = Scenario(
            f"rooms-cross-node-{nodes}", "rooms", nodes, rooms, f"1000 rooms x 2 members over {nodes} nodes (members of a room on different nodes) + Redis", servers=peers, curve="classic"
        )
        table[f"rooms-cross-node-sharded-{nodes}"] = Scenario(
            f"rooms-cross-node-sharded-{nodes}",
            "rooms",
            nodes,
            rooms,
            f"1000 rooms x 2 members over {nodes} nodes on a 3-master Redis Cluster, sharded adapters",
            adapter="sharded",
            servers=peers,
            curve="sharded",
        )
    table["rooms-non-member"] = Scenario(
        "rooms-non-member",
        "rooms",
        3,
        {**rooms, "member_nodes": 2, "idle_clients": n(1000)},
        "rooms-cross-node on nodes 1-2 + a node 3 with 1000 idle connections and no room members (classic): node 3's CPU per message published",
        servers=peers,
    )
    return table


STREAMS_SERVERS = ("ours", "node")
SHARDED_SERVERS = ("ours", "node")


def servers_for(scenario: Scenario, wanted: list[str]) -> list[str]:
    """The ceiling server has no cluster, no polling and no reason to hold idle connections; only ours and
    Node.js have a streams and a sharded adapter (python-socketio has neither). Node.js runs
    first, so ours can be measured at Node's latency load in the same sweep."""
    if scenario.servers:
        wanted = [s for s in wanted if s in scenario.servers]
    if scenario.adapter == "streams":
        wanted = [s for s in wanted if s in STREAMS_SERVERS]
    elif scenario.adapter == "sharded":
        wanted = [s for s in wanted if s in SHARDED_SERVERS]
    if scenario.clustered or scenario.loadgen == "connections" or scenario.args.get("transport", "websocket") != "websocket":
        wanted = [s for s in wanted if s != "ceiling"]  # the ceiling server speaks WebSocket only
    return sorted(wanted, key=lambda s: s != "node")


# -- processes -----------------------------------------------------------------------------------


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class ManagedProcess:
    """A child process we started, known by PID, with its output in a log file."""

    def __init__(self, name: str, cmd: list[str], port: int, log_dir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.port = port
        self.log_path = log_dir / f"{name}-{port}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        full_env["PYTHONPATH"] = str(REPO) + (os.pathsep + full_env["PYTHONPATH"] if full_env.get("PYTHONPATH") else "")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=full_env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise BenchError(f"{self.name} did not listen on {self.port} within {timeout}s: {self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL; always reaps."""
        self.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def stop_all(processes: list[ManagedProcess]) -> None:
    """SIGTERM to every one first (they close in parallel), then reap each, in reverse order."""
    for proc in reversed(processes):
        proc.terminate()
    for proc in reversed(processes):
        proc.stop()


def server_command(kind: str, port: int, redis_url: str | None, adapter: str = "classic", cluster_nodes: list[str] | None = None) -> list[str]:
    """The command line of one node; `cluster_nodes` (host:port seeds) for the sharded adapter."""
    python = sys.executable
    extra = ["--redis", redis_url] if redis_url else []
    if adapter == "sharded":
        if kind not in SHARDED_SERVERS:
            raise BenchError(f"{kind} has no sharded adapter")
        if not cluster_nodes:
            raise BenchError("the sharded adapter needs a Redis Cluster")
        extra += ["--adapter", "sharded", "--redis-cluster", ",".join(cluster_nodes)]
    elif adapter != "classic":
        if kind not in STREAMS_SERVERS:
            raise BenchError(f"{kind} has no {adapter} adapter")
        extra += ["--adapter", adapter]
    if kind == "ours":
        return [python, "-m", "bench.app", "--port", str(port), *extra]
    if kind == "pysio":
        return [python, "-m", "bench.peers.pysio_app", "--port", str(port), *extra]
    if kind == "node":
        node = shutil.which("node")
        if node is None:
            raise BenchError("node is not installed")
        if not (BENCH / "node" / "node_modules" / "socket.io").exists():
            raise BenchError("bench/node dependencies are missing: run `npm ci --prefix bench/node`")
        if adapter == "streams" and not (BENCH / "node" / "node_modules" / "@socket.io" / "redis-streams-adapter").exists():
            raise BenchError("@socket.io/redis-streams-adapter is missing: run `npm ci --prefix bench/node`")
        return [node, str(BENCH / "node" / "server.mjs"), "--port", str(port), *extra]
    if kind == "ceiling":
        if redis_url:
            raise BenchError("the ceiling server has no cluster mode")
        return [python, "-m", "bench.ceiling_server", "--port", str(port)]
    raise BenchError(f"unknown server {kind!r}")


def start_redis(log_dir: Path) -> ManagedProcess:
    server = shutil.which("redis-server")
    if server is None:
        raise BenchError("redis-server is not installed")
    (port,) = free_ports(1)
    cmd = [server, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no", "--protected-mode", "yes"]
    proc = ManagedProcess("redis", cmd, port, log_dir)
    proc.wait_listening()
    return proc


def cluster_ports(count: int) -> list[int]:
    """Ports for cluster nodes: each also listens on its bus port P+10000, and Redis refuses
    P > 55535, so the kernel's ephemeral ports (often above that) will not do."""

    def bindable(port: int) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((LOOPBACK, port))
            except OSError:
                return False
        return True

    rng = random.Random()
    chosen: list[int] = []
    while len(chosen) < count:
        port = rng.randrange(20000, 45000)
        if all(abs(port - other) > 1 and abs(port + 10000 - other) > 1 for other in chosen) and bindable(port) and bindable(port + 10000):
            chosen.append(port)
    return chosen


class RedisCluster:
    """Three redis-server masters with --cluster-enabled yes, joined by `redis-cli --cluster
    create`, each with its config in a temporary directory; stopped by PID."""

    def __init__(self, log_dir: Path, masters: int = 3, timeout: float = 30.0) -> None:
        self.log_dir = log_dir
        self.masters = masters
        self.timeout = timeout
        self.processes: list[ManagedProcess] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="bench-redis-cluster-", dir=log_dir))

    @property
    def nodes(self) -> list[str]:
        return [f"{LOOPBACK}:{p.port}" for p in self.processes]

    def _cli(self, port: int, *args: str, timeout: float = 5.0) -> str:
        try:
            done = subprocess.run(["redis-cli", "-h", LOOPBACK, "-p", str(port), *args], capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return ""
        return done.stdout + done.stderr

    def start(self) -> "RedisCluster":
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise BenchError("redis-server and redis-cli are needed for the sharded scenarios")
        deadline = time.monotonic() + self.timeout
        try:
            for port in cluster_ports(self.masters):
                node_dir = self.workdir / str(port)
                node_dir.mkdir()
                cmd = [
                    server, "--port", str(port), "--bind", LOOPBACK, "--cluster-enabled", "yes",
                    "--cluster-config-file", str(node_dir / "nodes.conf"), "--cluster-node-timeout", "5000",
                    "--save", "", "--appendonly", "no", "--dir", str(node_dir),
                ]  # fmt: skip
                self.processes.append(ManagedProcess("redis-cluster", cmd, port, self.log_dir))
            for proc in self.processes:
                proc.wait_listening(max(1.0, deadline - time.monotonic()))
            try:
                created = subprocess.run([cli, "--cluster", "create", *self.nodes, "--cluster-yes"], capture_output=True, text=True, timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise BenchError(f"redis-cli --cluster create did not finish within {self.timeout}s") from None
            if created.returncode != 0:
                raise BenchError(f"redis-cli --cluster create failed: {(created.stdout + created.stderr)[-400:]}")
            for proc in self.processes:
                while True:
                    info = self._cli(proc.port, "CLUSTER", "INFO")
                    if "cluster_state:ok" in info and "cluster_slots_ok:16384" in info:
                        break
                    if time.monotonic() > deadline:
                        raise BenchError(f"Redis Cluster node {proc.port} not ok within {self.timeout}s: {info[:200]}")
                    time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        stop_all(self.processes)
        self.processes = []
        shutil.rmtree(self.workdir, ignore_errors=True)


def raise_fd_limit() -> None:
    """Children (servers and the generator) inherit this: 10,000 connections need the room."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 32768 if hard == resource.RLIM_INFINITY else min(hard, 32768)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def run_one(kind: str, scenario: Scenario, log_dir: Path | None = None, timeout: float = 240.0, redis_cluster: RedisCluster | None = None) -> dict[str, Any]:
    """Start the servers for one run, drive them with the load generator, stop them.

    A sharded scenario gets a fresh 3-master Redis Cluster unless `redis_cluster` (already
    started, left running) is given: the smoke test starts one for all its sharded runs."""
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="bench-logs-"))
    processes: list[ManagedProcess] = []
    redis_processes: list[ManagedProcess] = []
    redis = None
    own_cluster = None
    try:
        cluster_nodes = None
        if scenario.adapter == "sharded":
            if redis_cluster is None:
                redis_cluster = own_cluster = RedisCluster(log_dir).start()
            redis_processes = list(redis_cluster.processes)
            cluster_nodes = redis_cluster.nodes
        elif scenario.clustered:
            redis = start_redis(log_dir)
            processes.append(redis)
            redis_processes = [redis]
        redis_url = f"redis://{LOOPBACK}:{redis.port}" if redis else None
        nodes = []
        for port in free_ports(scenario.nodes):
            node = ManagedProcess(kind, server_command(kind, port, redis_url, scenario.adapter, cluster_nodes), port, log_dir)
            processes.append(node)
            nodes.append(node)
        for node in nodes:
            node.wait_listening()
        cmd = [sys.executable, "-m", "bench.loadgen", scenario.loadgen]
        for node in nodes:
            cmd += ["--target", f"{LOOPBACK}:{node.port}"]
        # Redis first, then the nodes in target order: split_cpu reads the per-PID CPU so.
        measured = [*redis_processes, *nodes]
        cmd += ["--server-pids", ",".join(str(p.pid) for p in measured)]
        for key, value in scenario.args.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        try:
            done = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=None, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"load generator did not finish within {timeout}s") from None
        lines = done.stdout.decode(errors="replace").strip().splitlines()
        try:
            result = json.loads(lines[-1])
        except (IndexError, json.JSONDecodeError):
            raise BenchError(f"load generator printed no result (exit {done.returncode})") from None
        for node in nodes:
            if node.proc.poll() is not None:
                result.setdefault("error", f"{kind} exited during the run: {node.log_tail()}")
        if "error" in result:
            result["server_log"] = "\n".join(n.log_tail(10) for n in nodes)
        else:
            split_cpu(result, len(redis_processes), scenario)
            if kind == "ours" and scenario.member_nodes < scenario.nodes and scenario.adapter == "classic":
                # Beside the idle node's whole bill: what our channel-name check costs alone.
                result["channel_check"] = channel_check.measure()
        return result
    finally:
        stop_all(processes)
        if own_cluster is not None:
            own_cluster.stop()


def split_cpu(result: dict[str, Any], redis_count: int, scenario: Scenario) -> None:
    """Per-node figures from the loadgen's per-PID CPU (Redis first, then the nodes):

    - node_cpu_us_per_delivery_per_node: CPU of the nodes holding room members, per delivery,
      divided by their number (how the cost of one node grows with the cluster; Redis apart);
    - redis_cpu_us_per_delivery: every redis-server process together;
    - non_member_us_per_message: in a run whose last nodes hold no room members, their CPU per
      message published (each message reaches the two members of its room)."""
    for phase in ("saturation", "latency_phase"):
        window = result.get(phase)
        if not isinstance(window, dict):
            continue
        by_pid = window.get("server_cpu_s_by_pid") or []
        deliveries = window.get("deliveries") or 0
        if len(by_pid) != redis_count + scenario.nodes or not deliveries:
            continue
        redis_cpu, node_cpu = by_pid[:redis_count], by_pid[redis_count:]
        members = scenario.member_nodes
        window["redis_cpu_s"] = round(sum(redis_cpu), 4)
        window["node_cpu_s"] = node_cpu
        window["redis_cpu_us_per_delivery"] = round(sum(redis_cpu) * 1e6 / deliveries, 3)
        window["node_cpu_us_per_delivery"] = round(sum(node_cpu[:members]) * 1e6 / deliveries, 3)
        window["node_cpu_us_per_delivery_per_node"] = round(sum(node_cpu[:members]) * 1e6 / members / deliveries, 3)
        if members < scenario.nodes and scenario.loadgen == "rooms":
            messages = deliveries / 2
            window["messages"] = messages
            window["non_member_us_per_message"] = round(statistics.mean(node_cpu[members:]) * 1e6 / messages, 3)


# -- the sweep -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            return "?"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "node": version(["node", "--version"]),
        "redis": version(["redis-server", "--version"]),
        "packages": package_versions(),
    }


def package_versions() -> dict[str, str]:
    """The versions that matter to the figures: ours' Python dependencies and the Node peers'."""
    from importlib import metadata

    found: dict[str, str] = {}
    for name in ("sio-gateway", "uvloop", "redis", "hiredis", "orjson", "msgpack", "python-socketio", "aiohttp"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    modules = BENCH / "node" / "node_modules"
    for name in ("socket.io", "@socket.io/redis-adapter", "@socket.io/redis-streams-adapter", "redis"):
        try:
            found[f"node {name}"] = json.loads((modules / name / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            pass
    return found


def sweep(servers: list[str], names: list[str], repeats: int, scale: float, duration: float, out: Path) -> list[dict[str, Any]]:
    raise_fd_limit()
    out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="bench-logs-"))
    table = scenarios(scale, duration)
    plan = [(table[name], kind, r) for r in range(repeats) for name in names for kind in servers_for(table[name], servers)]
    print(f"{len(plan)} runs: " + ", ".join(f"{n} ({'/'.join(servers_for(table[n], servers))})" for n in names), flush=True)
    sweep_id = time.strftime("%Y%m%dT%H%M%S")
    results: list[dict[str, Any]] = []
    started = time.monotonic()
    jsonl = out / "results.jsonl"
    with open(jsonl, "w") as sink:
        for i, (scenario, kind, r) in enumerate(plan, 1):
            print(f"[{i}/{len(plan)}] {scenario.name} x {kind} (repeat {r + 1}/{repeats}) ...", flush=True)
            t0 = time.monotonic()
            run_scenario = scenario
            # The issue measures latency at 50 % of each server's own saturation rate, so a
            # faster server is measured under more load. For a like-for-like view, ours runs a
            # second latency phase at the load Node.js had in its own (Node runs first).
            load = node_latency_load(results, scenario.name) if kind == "ours" and scenario.loadgen != "connections" else None
            if load:
                run_scenario = dataclasses.replace(scenario, args={**scenario.args, "latency_deliveries_per_s": round(load, 1)})
            try:
                result = run_one(kind, run_scenario, log_dir)
            except BenchError as exc:
                result = {"error": str(exc)}
            result.update(
                {
                    "sweep": sweep_id,
                    "server": kind,
                    "bench_scenario": scenario.name,
                    "repeat": r,
                    "nodes": scenario.nodes,
                    "member_nodes": scenario.member_nodes,
                    "adapter": scenario.adapter,
                    "curve": scenario.curve,
                    "args": run_scenario.args,
                }
            )
            results.append(result)
            sink.write(json.dumps(result) + "\n")
            sink.flush()
            print(f"    {summary(result)}  ({time.monotonic() - t0:.1f}s, {time.monotonic() - started:.0f}s so far)", flush=True)
    print(f"sweep done in {time.monotonic() - started:.0f}s; server logs in {log_dir}", flush=True)
    return results


def node_latency_load(results: list[dict[str, Any]], name: str) -> float | None:
    """Median deliveries/s of Node.js's latency phases in this scenario so far (None: none)."""
    loads = [
        r["latency_phase"]["deliveries_per_s"]
        for r in results
        if r.get("bench_scenario") == name and r.get("server") == "node" and "error" not in r and r.get("latency_phase", {}).get("deliveries_per_s")
    ]
    return statistics.median(loads) if loads else None


def summary(result: dict[str, Any]) -> str:
    if "error" in result:
        return f"ERROR: {result['error']}"
    sat = result.get("saturation", {})
    lat = result.get("latency", {})
    text = (
        f"{sat.get('deliveries_per_s', 0):,.0f} deliveries/s, server {sat.get('server_cpu_us_per_delivery')} us/delivery, "
        f"generator {sat.get('gen_cpu_cores')} cores, p50 {lat.get('p50_ms')} ms, p99 {lat.get('p99_ms')} ms, lost {result.get('lost')}"
    )
    if sat.get("node_cpu_us_per_delivery_per_node") is not None and result.get("nodes", 1) > 1:
        text += f", per node {sat['node_cpu_us_per_delivery_per_node']} us/delivery, Redis {sat.get('redis_cpu_us_per_delivery')} us/delivery"
    if sat.get("non_member_us_per_message") is not None:
        text += f", non-member node {sat['non_member_us_per_message']} us/message"
    equal = result.get("latency_equal_load")
    if equal:
        text += f", at Node's load ({equal.get('deliveries_per_s', 0):,.0f}/s) p50 {equal.get('p50_ms')} ms p99 {equal.get('p99_ms')} ms"

    if "rss_kib_per_connection" in result:
        text += f", {result['rss_kib_per_connection']} KiB/connection, {result['connect_per_s']:,.0f} connects/s"
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default="ours,node,pysio,ceiling", help=f"comma-separated, from {', '.join(SERVERS)}")
    parser.add_argument("--scenarios", default=",".join(scenarios()), help="comma-separated scenario names")
    parser.add_argument("--repeats", type=int, default=int(os.environ.get("BENCH_REPEATS", "1")), help="runs per (scenario, server); the table shows medians")
    parser.add_argument("--duration", type=float, default=float(os.environ.get("BENCH_DURATION", "3")), help="seconds of each timed phase")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply connection/room counts (for quick checks)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    servers = [s for s in args.servers.split(",") if s]
    for s in servers:
        if s not in SERVERS:
            parser.error(f"unknown server {s!r}")
    names = [s for s in args.scenarios.split(",") if s]
    known = scenarios()
    for name in names:
        if name not in known:
            parser.error(f"unknown scenario {name!r}; known: {', '.join(known)}")
    results = sweep(servers, names, args.repeats, args.scale, args.duration, args.out)
    from bench.report import write_report

    paths = write_report(results, machine(), args.out)
    for path in paths:
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path}", flush=True)
    print((args.out / "results.md").read_text(), flush=True)


if __name__ == "__main__":
    main()
