"""Deployment shapes on one machine: the project's nginx.conf rendered for given ports, and the
local cluster of `sio-gateway cluster` (redis-server, N gateway nodes, nginx in front).

The rendered nginx configuration is the top-level nginx.conf with only its upstream `server`
lines, its `listen` line and local file paths replaced, so the tests and the local cluster run
what production runs. Every process the cluster starts leads a process group of its own and is
stopped through it (so nginx's workers go with their master). A member that dies is restarted
after a backoff (`CLUSTER_RESTART_INITIAL_MS` doubling to `CLUSTER_RESTART_MAX_MS`), so the local
cluster can show a failover instead of stopping at the first death.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

log = logging.getLogger("gateway.topology")

LOOPBACK = "127.0.0.1"
NGINX_CONF = Path(__file__).resolve().parent.parent / "nginx.conf"
UPSTREAM = "sio_gateway"
START_TIMEOUT_S = 20.0
NGINX_TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


class TopologyError(RuntimeError):
    """The configuration cannot be rendered, or a process of the local cluster did not come up."""


def render_nginx_conf(template: str, upstream_ports: Sequence[int], listen_port: int, prefix: Path, host: str = LOOPBACK) -> str:
    """nginx.conf for gateway nodes on `host:upstream_ports`, listening on `host:listen_port`,
    with logs and temporary files under `prefix` (run it with `nginx -p prefix -c ...`)."""
    if not upstream_ports:
        raise TopologyError("at least one upstream port is needed")
    block = re.search(r"(upstream\s+" + UPSTREAM + r"\s*\{)([^{}]*)(\})", template)
    if block is None:
        raise TopologyError(f"no `upstream {UPSTREAM} {{ ... }}` block in the nginx configuration")
    body = block.group(2)
    server_line = re.compile(r"^([ \t]*)server\s+\S+?(\s+[^;]*)?;[ \t]*(#.*)?\n", re.MULTILINE)
    found = server_line.search(body)
    if found is None:
        raise TopologyError(f"`upstream {UPSTREAM}` has no `server` line to replace")
    indent = found.group(1)
    # The first line's parameters (max_fails=..., fail_timeout=...) apply to every node.
    params = " ".join((found.group(2) or "").split())
    servers = "".join(f"{indent}server {host}:{port}{' ' + params if params else ''};\n" for port in upstream_ports)
    body = body[: found.start()] + servers + server_line.sub("", body[found.start():])
    text = template[: block.start(2)] + body + template[block.end(2):]

    listens = list(re.finditer(r"^([ \t]*)listen\s+[^;]+;", text, re.MULTILINE))
    if len(listens) != 1:
        raise TopologyError(f"expected one `listen` line in the nginx configuration, found {len(listens)}")
    listen = listens[0]
    text = text[: listen.start()] + f"{listen.group(1)}listen {host}:{listen_port};" + text[listen.end():]

    http = re.search(r"^http\s*\{[ \t]*\n", text, re.MULTILINE)
    if http is None:
        raise TopologyError("no `http {` block in the nginx configuration")
    local = [f"    access_log {prefix / 'access.log'};"]
    local += [f"    {kind}_temp_path {prefix / kind};" for kind in NGINX_TEMP_DIRS]
    text = text[: http.end()] + "\n".join(local) + "\n" + text[http.end():]
    if os.geteuid() == 0:
        # Workers would run as `nobody` and could not reach temporary files under a private
        # (0700) directory; this local copy is bound to loopback only.
        text = "user root;\n" + text
    return text


def nginx_command(nginx: str, prefix: Path, conf: Path) -> list[str]:
    """How the local cluster and the tests start nginx: foreground, everything under `prefix`."""
    return [nginx, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf), "-g", f"daemon off; pid {prefix / 'nginx.pid'};"]


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could listen there (as nginx and the gateway do, with SO_REUSEADDR, so a
    connection lingering in TIME_WAIT does not count as taken)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _answers_health(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1) as response:
            return response.status in (200, 503)
    except urllib.error.HTTPError as exc:
        return exc.code == 503
    except OSError:
        return False


@dataclass
class ClusterProcess:
    """One process the local cluster started, with what it takes to start it again."""

    role: str  # "redis", "node", "nginx"
    label: str
    address: str
    log_path: Path
    proc: subprocess.Popen[bytes]
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    stop_signal: int = signal.SIGTERM
    stop_timeout: float = 5.0
    started_at: float = field(default_factory=time.monotonic)
    restarts: int = 0
    restart_delay: float = 0.0  # the last backoff used; 0 = none yet
    restart_at: float | None = None  # it died: when it is started again
    exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        """Alive; an exited process is left unreaped (a zombie), so that its PID is still its
        process group's id when `reap` sweeps what it leaves behind."""
        if self.proc.returncode is not None:
            return False
        try:
            return os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None
        except ChildProcessError:
            return self.proc.poll() is None

    def signal_group(self, sig: int) -> None:
        """`sig` to the process and everything in its group (it leads one: its own session)."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def reap(self) -> int | None:
        """After it exited: SIGKILL whatever of its group outlived it (nginx workers of a killed
        master would keep the port), then collect its exit status."""
        self.signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)
        return self.proc.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalCluster:
    """redis-server + `nodes` gateway nodes on consecutive ports + nginx, on loopback.

    `redis_url` given: that Redis is used and no redis-server is started. The nodes inherit
    `env` (the caller's environment) with PORT, HOST and REDIS_URL set per node, and
    TRUSTED_PROXIES defaulting to the loopback nginx.
    """

    nodes: int
    base_port: int
    proxy_port: int
    workdir: Path
    env: Mapping[str, str]
    redis_url: str | None = None
    host: str = LOOPBACK
    nginx_conf: Path = NGINX_CONF
    nginx: str = field(default_factory=lambda: shutil.which("nginx") or "/usr/sbin/nginx")
    redis_server: str | None = field(default_factory=lambda: shutil.which("redis-server"))
    node_stop_timeout: float = 12.0
    restart_initial: float = 0.5
    restart_max: float = 10.0
    processes: list[ClusterProcess] = field(default_factory=list)

    @property
    def node_ports(self) -> list[int]:
        return [self.base_port + i for i in range(self.nodes)]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.proxy_port}"

    def _popen(self, argv: list[str], env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as out:
            # A session of its own: a terminal's Ctrl-C reaches only us, and we stop the
            # children in order (nginx, nodes, Redis) instead of all at once.
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=dict(env), cwd=self.workdir, start_new_session=True)

    def _spawn(self, role: str, label: str, address: str, argv: list[str], env: Mapping[str, str] | None = None, **stop: float) -> ClusterProcess:
        log_path = self.workdir / f"{label.replace(' ', '-')}.log"
        env = dict(env or os.environ)
        proc = self._popen(argv, env, log_path)
        process = ClusterProcess(role, label, address, log_path, proc, argv, env, **stop)  # type: ignore[arg-type]
        self.processes.append(process)
        log.info("cluster_started role=%s label=%r pid=%d address=%s", role, label, proc.pid, address)
        return process

    def _wait(self, process: ClusterProcess, ready: Callable[[], bool], interrupted: Callable[[], bool]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not process.running():
                raise TopologyError(f"{process.label} exited with {process.reap()}:\n{process.log_tail()}")
            if interrupted():
                raise TopologyError("interrupted while starting")
            if ready():
                return
            time.sleep(0.05)
        raise TopologyError(f"{process.label} did not come up within {START_TIMEOUT_S:.0f}s:\n{process.log_tail()}")

    def check(self) -> None:
        """Refuse before starting anything when a port is taken or a program is missing."""
        if self.nodes < 1:
            raise TopologyError("--nodes must be at least 1")
        if not self.nginx_conf.is_file():
            raise TopologyError(f"no nginx configuration at {self.nginx_conf}")
        if not (os.path.isfile(self.nginx) and os.access(self.nginx, os.X_OK)):
            raise TopologyError(f"nginx not found at {self.nginx} (apt-get install nginx)")
        if self.redis_url is None and self.redis_server is None:
            raise TopologyError("redis-server not found (apt-get install redis-server), or pass --redis-url")
        ports = [*self.node_ports, self.proxy_port]
        if len(set(ports)) != len(ports) or max(ports) > 65535:
            raise TopologyError(f"node ports {self.node_ports} and proxy port {self.proxy_port} must be distinct valid ports")
        busy = [port for port in ports if not port_is_free(port, self.host)]
        if busy:
            raise TopologyError(f"port(s) {', '.join(map(str, busy))} on {self.host} already in use (choose --base-port / --proxy-port)")

    def start(self, interrupted: Callable[[], bool] = lambda: False) -> None:
        """Start everything, each process ready before the next; on any failure, stop what was
        started and raise."""
        self.check()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._start(interrupted)
        except BaseException:
            self.stop()
            raise

    def _start(self, interrupted: Callable[[], bool]) -> None:
        redis_url = self.redis_url
        if redis_url is None:
            assert self.redis_server is not None
            port = free_port(self.host)
            redis = self._spawn(
                "redis",
                "redis",
                f"redis://{self.host}:{port}",
                [self.redis_server, "--port", str(port), "--bind", self.host, "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            )
            self._wait(redis, lambda: _answers_ping(self.host, port), interrupted)
            redis_url = redis.address
        node_env = {**self.env, "HOST": self.host, "REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"}
        source = str(Path(__file__).resolve().parent.parent)  # this very gateway, installed or not
        node_env["PYTHONPATH"] = source + (os.pathsep + node_env["PYTHONPATH"] if node_env.get("PYTHONPATH") else "")
        node_env.setdefault("TRUSTED_PROXIES", self.host)
        started = []
        for i, port in enumerate(self.node_ports, 1):
            url = f"http://{self.host}:{port}"
            argv = [sys.executable, "-m", "gateway", "--host", self.host, "--port", str(port), "--redis-url", redis_url]
            started.append(self._spawn("node", f"node {i}", url, argv, {**node_env, "PORT": str(port)}, stop_timeout=self.node_stop_timeout))
        for node in started:
            self._wait(node, lambda url=node.address: _answers_health(url), interrupted)

        prefix = self.workdir / "nginx"
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(render_nginx_conf(self.nginx_conf.read_text(), self.node_ports, self.proxy_port, prefix, self.host))
        nginx = self._spawn("nginx", "nginx", self.url, nginx_command(self.nginx, prefix, conf))
        self._wait(nginx, lambda: _accepts(self.host, self.proxy_port), interrupted)

    def restart_exited(self, announce: Callable[[str], None], now: float | None = None) -> None:
        """Restart the members that died, each after its backoff: `restart_initial`, doubled for
        every death of a member that had not stayed up `restart_max`, at most `restart_max`.
        Called periodically; `announce` gets one line per restart."""
        now = time.monotonic() if now is None else now
        for process in self.processes:
            if process.restart_at is None:
                if process.running():
                    continue
                process.exit_code = process.reap()
                stayed_up = now - process.started_at
                if process.restart_delay == 0.0 or stayed_up >= self.restart_max:
                    process.restart_delay = self.restart_initial
                else:
                    process.restart_delay = min(self.restart_max, process.restart_delay * 2)
                process.restart_at = now + process.restart_delay
                log.warning(
                    "cluster_member_exited label=%r pid=%d code=%s up_seconds=%.1f restart_in_seconds=%.1f log=%s",
                    process.label, process.pid, process.exit_code, stayed_up, process.restart_delay, process.log_path,
                )  # fmt: skip
            elif now >= process.restart_at:
                old_pid = process.pid
                try:
                    process.proc = self._popen(process.argv, process.env, process.log_path)
                except OSError as exc:
                    process.restart_at = now + process.restart_delay
                    log.error("cluster_restart_failed label=%r error=%r", process.label, str(exc))
                    continue
                process.restarts += 1
                process.started_at = now
                process.restart_at = None
                log.info("cluster_restarted label=%r pid=%d restarts=%d", process.label, process.pid, process.restarts)
                announce(
                    f"sio-gateway cluster: {process.label} (pid {old_pid}) exited with {process.exit_code}; "
                    f"restarted after {process.restart_delay:.1f}s as pid {process.pid} (restart {process.restarts})"
                )

    def stop(self) -> None:
        """Stop every started process by PID, the front first: nginx, the nodes (graceful, they
        close their clients), then Redis; SIGKILL whatever outlives its timeout."""
        order = {"nginx": 0, "node": 1, "redis": 2}
        for role in sorted({p.role for p in self.processes}, key=order.__getitem__):
            group = [p for p in self.processes if p.role == role and p.running()]
            for process in group:
                process.signal_group(process.stop_signal)
            for process in group:
                deadline = time.monotonic() + process.stop_timeout
                while process.running() and time.monotonic() < deadline:
                    time.sleep(0.02)
                if process.running():
                    log.warning("cluster_kill label=%r pid=%d (did not stop within %.0fs)", process.label, process.pid, process.stop_timeout)
                process.reap()  # SIGKILL to its group, whatever is left of it, then collect it
                log.info("cluster_stopped label=%r pid=%d code=%s", process.label, process.pid, process.proc.returncode)
        for process in self.processes:  # the ones that had already exited, and what they left
            if process.proc.returncode is None:
                process.reap()
