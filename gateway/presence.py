"""Who is online in a room, across the cluster, each user counted once however many tabs.

Every node counts its own sockets per (namespace, room, user) in memory; only the first socket in
and the last socket out of a room touch shared state. With Redis, the shared state is:

    <prefix>#presence#room#<nsp>#<room>   hash  user -> number of nodes holding that user there
    <prefix>#presence#node#<node>         hash  [nsp, room, user] -> 1, what one node holds
    <prefix>#presence#alive#<node>        key   heartbeat, expires unless refreshed
    <prefix>#presence#nodes               set   nodes that may hold something

A user appears in a room when its node count goes 0 -> 1 and disappears at 1 -> 0 (Lua scripts,
so the counts stay exact under concurrency). A node that dies stops refreshing its heartbeat; any
other node notices the expired key and undoes everything the dead node held in one script, so
exactly one node announces the departures. Heartbeats last 60% of PRESENCE_TIMEOUT (plus the leave
grace, below) and are checked every 20% of it, so a dead node's users leave within grace + timeout.

The leave grace (PRESENCE_LEAVE_GRACE_MS) keeps presence from flapping when users merely move:
a rolling restart or a network blip disconnects every tab of a user and the client reconnects,
often to another node, a second later. So the last local socket out does not leave at once: the
node keeps holding the user (in memory, and so in Redis) for the grace. A return to this node
within it cancels the leave; a return to another node finds the user still counted here (count
1 -> 2, no join announced) and the expiring hold then only takes the count 2 -> 1 (no leave
announced). On SIGTERM the node hands its members over instead of deleting them: it leaves its
node hash in place and shortens its heartbeat to the grace, so another node's reaper undoes them
after the grace, exactly once, unless they came back meanwhile.

Presence never answers from a view it knows to be wrong: when a write fails (Redis unreachable, or
refusing writes when out of memory), reads raise PresenceUnavailable until a heartbeat gets
through and the node has re-written its whole state into Redis (resync).

Without Redis the same bookkeeping runs in memory (a single node cannot outlive itself).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
import time
from collections import OrderedDict, deque
from typing import Any, Callable, Iterator

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .config import Settings
from .redis.client import redis_client
from .redis.supervision import Backoff, LinkState

log = logging.getLogger("gateway.presence")

Key = tuple[str, str, str]  # (namespace, room, user)
Notify = Callable[[str, str, str, str], None]  # (kind "join"|"leave", namespace, room, user)

HEARTBEAT_SHARE = 0.6
TICK_SHARE = 0.2

_JOIN = """
if redis.call('HSETNX', KEYS[1], ARGV[1], '1') == 1 then
  return redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
return -1
"""

_LEAVE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 1 then
  local n = redis.call('HINCRBY', KEYS[2], ARGV[2], -1)
  if n <= 0 then
    redis.call('HDEL', KEYS[2], ARGV[2])
    return 0
  end
  return n
end
return -1
"""

# KEYS: nodes set, the node's hash, its heartbeat key. ARGV: key base, node id.
# Returns the members whose user is now gone from the room on every node.
_REAP = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {}
end
local gone = {}
for _, member in ipairs(redis.call('HKEYS', KEYS[2])) do
  local m = cjson.decode(member)
  local room = ARGV[1] .. '#room#' .. m[1] .. '#' .. m[2]
  local n = redis.call('HINCRBY', room, m[3], -1)
  if n <= 0 then
    redis.call('HDEL', room, m[3])
    table.insert(gone, member)
  end
end
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[1], ARGV[2])
return gone
"""

_HEARTBEAT = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
return redis.call('HLEN', KEYS[3])
"""


class PresenceUnavailable(Exception):
    """Presence cannot answer truthfully now (a write failed and is not re-applied yet, or Redis
    is unreachable); callers answer an error rather than a list that may be wrong."""


class LeaveGrace:
    """The leaves waiting out PRESENCE_LEAVE_GRACE_MS, oldest first. Pure bookkeeping (time is
    passed in) so the rules are tested with a fake clock; the Presence owns the timer.

    Every hold lasts the same grace, so deadlines are ordered as holds are made and the first
    entry is always the next one due."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._due: OrderedDict[Key, float] = OrderedDict()
        self.cancelled = 0  # returned within the grace: no leave, no join
        self.expired = 0  # grace over: the leave goes ahead

    def hold(self, key: Key, now: float) -> None:
        self._due.pop(key, None)
        self._due[key] = now + self.grace_s

    def cancel(self, key: Key) -> bool:
        """True when `key` was waiting to leave: it stays a member and nothing is announced."""
        if self._due.pop(key, None) is None:
            return False
        self.cancelled += 1
        return True

    def expire(self, now: float) -> list[Key]:
        """Remove and return the holds whose grace is over at `now`."""
        gone: list[Key] = []
        while self._due:
            key, deadline = next(iter(self._due.items()))
            if deadline > now:
                break
            del self._due[key]
            gone.append(key)
        self.expired += len(gone)
        return gone

    def next_deadline(self) -> float | None:
        return next(iter(self._due.values()), None)

    def clear(self) -> None:
        self._due.clear()

    def __contains__(self, key: object) -> bool:
        return key in self._due

    def __len__(self) -> int:
        return len(self._due)

    def __iter__(self) -> Iterator[Key]:
        return iter(self._due)


class Presence:
    """In-memory presence for a single node; the base of the Redis one."""

    def __init__(self, notify: Notify, leave_grace_ms: int = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.notify = notify
        self.clock = clock
        self.grace_ms = leave_grace_ms
        self.grace = LeaveGrace(leave_grace_ms / 1000)
        self.local: dict[Key, int] = {}  # sockets of this node per (namespace, room, user)
        self.rooms: dict[tuple[str, str], set[str]] = {}  # members per (namespace, room), leaving ones included
        self._timer: asyncio.TimerHandle | None = None
        self._closing = False

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self._stop_grace()

    def join(self, nsp: str, room: str, user: str) -> None:
        key = (nsp, room, user)
        count = self.local.get(key, 0) + 1
        self.local[key] = count
        if count == 1:
            if self.grace.cancel(key):
                log.debug("presence_leave_cancelled nsp=%s room=%s user=%s", nsp, room, user)
                return
            self.rooms.setdefault((nsp, room), set()).add(user)
            self._arrived(key)

    def leave(self, nsp: str, room: str, user: str) -> None:
        key = (nsp, room, user)
        count = self.local.get(key, 0) - 1
        if count > 0:
            self.local[key] = count
            return
        if self.local.pop(key, None) is None:
            return
        if self.grace_ms > 0 and not self._closing:
            self.grace.hold(key, self.clock())
            self._arm_timer()
            return
        self._gone(key)

    def members(self) -> set[Key]:
        """What this node holds: keys with a local socket, and those waiting out their grace."""
        return set(self.local).union(self.grace)

    def expire_due(self) -> None:
        """Leave everyone whose grace is over (the timer calls this; tests with a fake clock too)."""
        for key in self.grace.expire(self.clock()):
            self._gone(key)

    def _gone(self, key: Key) -> None:
        nsp, room, user = key
        users = self.rooms.get((nsp, room))
        if users is not None:
            users.discard(user)
            if not users:
                del self.rooms[(nsp, room)]
        self._departed(key)

    def _arm_timer(self) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.grace.grace_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.expire_due()
        deadline = self.grace.next_deadline()
        if deadline is not None and not self._closing:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, deadline - self.clock()), self._on_timer)

    def _stop_grace(self) -> None:
        self._closing = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def users(self, nsp: str, room: str) -> list[str]:
        return sorted(self.rooms.get((nsp, room), ()))

    def _arrived(self, key: Key) -> None:
        self._announce("join", key)

    def _departed(self, key: Key) -> None:
        self._announce("leave", key)

    def _announce(self, kind: str, key: Key) -> None:
        try:
            self.notify(kind, *key)
        except Exception:
            log.exception("presence_notify_failed kind=%s nsp=%s room=%s", kind, key[0], key[1])

    @property
    def trusted(self) -> bool:
        """Whether a read answers the truth (always, in memory)."""
        return True

    def health(self) -> dict[str, Any]:
        return {"mode": "memory", "status": "healthy", "entries": len(self.local), "leaving": len(self.grace)}


class PresenceCollector:
    """Prometheus view of presence: is it trustworthy, failed writes, the leave grace."""

    def __init__(self, presence: Presence) -> None:
        self.presence = presence

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        p = self.presence
        yield GaugeMetricFamily("sio_gateway_presence_up", "1 while presence reads can be trusted, 0 while a write is not re-applied or Redis is unreachable", value=1 if p.trusted else 0)
        errors = CounterMetricFamily("sio_gateway_presence_write_errors", "Presence writes Redis refused or could not take, by operation", labels=["op"])
        for op, count in sorted(getattr(p, "write_errors", {}).items()):
            errors.add_metric([op], count)
        yield errors
        yield CounterMetricFamily("sio_gateway_presence_leaves_deferred", "Leaves that waited out PRESENCE_LEAVE_GRACE_MS and then went ahead", value=p.grace.expired)
        yield CounterMetricFamily("sio_gateway_presence_leaves_cancelled", "Leaves cancelled because the user came back to this node within the grace", value=p.grace.cancelled)
        yield CounterMetricFamily("sio_gateway_presence_nodes_reaped", "Dead or drained nodes whose members this node removed from presence", value=getattr(p, "reaped_nodes", 0))


class RedisPresence(Presence):
    """Cluster-wide presence kept in Redis with per-node heartbeats."""

    def __init__(
        self,
        notify: Notify,
        redis_url: str,
        prefix: str,
        timeout_ms: int,
        node_id: str | None = None,
        settings: Settings | None = None,
        leave_grace_ms: int = 0,
    ) -> None:
        super().__init__(notify, leave_grace_ms)
        self.redis_url = redis_url
        # The connection settings (TLS, Sentinel) of the node; a bare URL connects without TLS files.
        self.settings = dataclasses.replace(settings, redis_url=redis_url) if settings is not None else Settings(redis_url=redis_url)
        self.node = node_id or secrets.token_hex(8)
        self.base = f"{prefix}#presence"
        self.nodes_key = f"{self.base}#nodes"
        self.node_key = f"{self.base}#node#{self.node}"
        self.alive_key = f"{self.base}#alive#{self.node}"
        self.heartbeat_ms = max(100, int(timeout_ms * HEARTBEAT_SHARE))
        # A dead node's members get the same grace as anyone else's: its users reconnecting
        # elsewhere meanwhile are not announced as leaving and joining.
        self.alive_ms = self.heartbeat_ms + leave_grace_ms
        self.tick_s = max(0.05, timeout_ms * TICK_SHARE / 1000)
        self.redis: aioredis.Redis | None = None
        self.ops: deque[tuple[str, Key]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self.write_errors: dict[str, int] = {"join": 0, "leave": 0, "heartbeat": 0, "resync": 0}
        self.failures = 0  # every failed write, whatever it was; a resync is good only if none happened meanwhile
        self.stale = False  # a write failed and is not re-applied: Redis holds a wrong view of this node
        self._resync_wanted = False  # set by a heartbeat that got through while stale; run by the writer
        self.resyncs = 0
        # Its heartbeat retries on every tick (no backoff delay is used), but counts like one.
        self.link = LinkState("presence", Backoff(self.tick_s, self.tick_s, self.settings.reconnect_attempts))
        self.reaped_nodes = 0

    @property
    def trusted(self) -> bool:
        return not self.stale

    def _room_key(self, nsp: str, room: str) -> str:
        return f"{self.base}#room#{nsp}#{room}"

    @staticmethod
    def _member(key: Key) -> str:
        return json.dumps(list(key), separators=(",", ":"), ensure_ascii=False)

    async def start(self) -> None:
        self.redis = redis_client(self.settings, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=5.0)
        self._join = self.redis.register_script(_JOIN)
        self._leave = self.redis.register_script(_LEAVE)
        self._reap = self.redis.register_script(_REAP)
        self._heartbeat = self.redis.register_script(_HEARTBEAT)
        try:
            await self._beat()
        except (RedisError, OSError) as exc:
            self._failed("heartbeat")
            log.warning("presence_redis_unavailable error=%r (retrying every %.1fs)", exc, self.tick_s)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer(), name="presence-writer"), loop.create_task(self._ticker(), name="presence-heartbeat")]

    async def close(self) -> None:
        """Stop. With a leave grace, hand the members over: the node hash stays and the heartbeat
        is cut to the grace, so the users either come back elsewhere in time (nothing announced)
        or another node's reaper announces their leaves once the grace is over. Without a grace,
        leave cleanly: others are told now rather than after the timeout."""
        self._stop_grace()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self.redis is None:
            return
        try:
            if self.grace_ms > 0:
                await self._heartbeat(keys=[self.alive_key, self.nodes_key, self.node_key], args=[self.grace_ms, self.node])
                log.info("presence_handover node=%s members=%d expires_ms=%d", self.node, len(self.members()), self.grace_ms)
            else:
                await self.redis.delete(self.alive_key)
                for member in await self._reap(keys=[self.nodes_key, self.node_key, self.alive_key], args=[self.base, self.node]):
                    self._announce("leave", tuple(json.loads(member)))  # type: ignore[arg-type]
        except (RedisError, OSError) as exc:
            log.warning("presence_close_failed error=%r", exc)
        self.local.clear()
        self.grace.clear()
        self.rooms.clear()
        await self.redis.aclose()

    # -- local transitions become ordered Redis operations --------------------------------------

    def _arrived(self, key: Key) -> None:
        self._queue("join", key)

    def _departed(self, key: Key) -> None:
        self._queue("leave", key)

    def _queue(self, op: str, key: Key) -> None:
        if self._closing:
            return
        self.ops.append((op, key))
        self._wake.set()

    def _failed(self, op: str) -> None:
        self.write_errors[op] += 1
        self.failures += 1
        if not self.stale:
            log.warning("presence_degraded node=%s op=%s", self.node, op)
        self.stale = True

    async def _writer(self) -> None:
        """One writer, so a join and the leave after it reach Redis in that order; it also runs
        the resync, so the resync's writes are ordered with the others."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.ops:
                op, key = self.ops[0]
                try:
                    await self._apply(op, key)
                except (RedisError, OSError) as exc:
                    # Dropped: the resync re-applies this node's whole state once Redis takes writes again.
                    self._failed(op)
                    log.warning("presence_write_failed op=%s room=%s error=%r", op, key[1], exc)
                except Exception:
                    self._failed(op)
                    log.exception("presence_write_failed op=%s room=%s", op, key[1])
                self.ops.popleft()
            if self.stale and self._resync_wanted:
                self._resync_wanted = False
                try:
                    await self._resync()
                except (RedisError, OSError) as exc:
                    self._failed("resync")
                    log.warning("presence_resync_failed error=%r", exc)

    async def _apply(self, op: str, key: Key) -> None:
        nsp, room, user = key
        script = self._join if op == "join" else self._leave
        result = await script(keys=[self.node_key, self._room_key(nsp, room)], args=[self._member(key), user])
        if (op == "join" and result == 1) or (op == "leave" and result == 0):
            self._announce(op, key)

    async def _resync(self) -> None:
        """Make Redis hold exactly what this node holds (after failed writes, an outage, or
        another node taking this one for dead); presence is trusted again only if every write
        since the resync began went through. The scripts are idempotent per member, so ops
        queued meanwhile may safely repeat what the resync wrote."""
        assert self.redis is not None
        failures = self.failures
        stored = {tuple(json.loads(m)) for m in await self.redis.hkeys(self.node_key)}
        held = self.members()
        missing, extra = held - stored, stored - held
        for key in extra:
            await self._apply("leave", key)  # type: ignore[arg-type]
        for key in missing:
            await self._apply("join", key)  # type: ignore[arg-type]
        if self.failures == failures:
            self.stale = False
            self.resyncs += 1
            log.info("presence_resynced node=%s missing=%d extra=%d", self.node, len(missing), len(extra))

    # -- heartbeat, reconciliation, reaping ------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self._beat()
            except (RedisError, OSError) as exc:
                self._failed("heartbeat")
                log.warning("presence_heartbeat_failed error=%r", exc)
                continue
            except Exception:
                self._failed("heartbeat")
                log.exception("presence_heartbeat_failed")
                continue
            try:
                await self._reap_dead()
            except (RedisError, OSError) as exc:
                log.warning("presence_reap_failed error=%r", exc)
            except Exception:
                log.exception("presence_reap_failed")

    async def _beat(self) -> None:
        assert self.redis is not None
        try:
            held = await self._heartbeat(keys=[self.alive_key, self.nodes_key, self.node_key], args=[self.alive_ms, self.node])
        except Exception as exc:
            # The same link bookkeeping as the cluster's links, for /health: down since when,
            # how many heartbeats in a row failed, why.
            self.link.set_up(False)
            self.link.backoff.failed()
            self.link.last_error = f"{type(exc).__name__}: {str(exc)[:200]}"
            raise
        if self.link.set_up(True) or self.link.attempts:
            self.link.backoff.succeeded()
        if held != len(self.local) + len(self.grace) and not self.ops:
            self.stale = True  # e.g. reaped by another node while our heartbeat could not get through
        if self.stale:
            self._resync_wanted = True
            self._wake.set()

    async def _reap_dead(self) -> None:
        assert self.redis is not None
        nodes = [n for n in await self.redis.smembers(self.nodes_key) if n != self.node]
        if not nodes:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.exists(f"{self.base}#alive#{node}")
            alive = await pipe.execute()
        for node, up in zip(nodes, alive):
            if up:
                continue
            gone = await self._reap(keys=[self.nodes_key, f"{self.base}#node#{node}", f"{self.base}#alive#{node}"], args=[self.base, node])
            self.reaped_nodes += 1
            log.info("presence_node_reaped node=%s departures=%d", node, len(gone))
            for member in gone:
                self._announce("leave", tuple(json.loads(member)))  # type: ignore[arg-type]

    async def users(self, nsp: str, room: str) -> list[str]:
        """The room's users cluster-wide; PresenceUnavailable while this node's view in Redis is
        known to be wrong (a list that silently misses users is worse than an error)."""
        if self.stale or self.redis is None:
            raise PresenceUnavailable("presence writes are failing; not re-applied yet")
        counts = await self.redis.hgetall(self._room_key(nsp, room))
        return sorted(user for user, count in counts.items() if int(count) > 0)

    def health(self) -> dict[str, Any]:
        return {
            "mode": "redis",
            "status": "degraded" if self.stale else "healthy",
            "node": self.node,
            "entries": len(self.local),
            "leaving": len(self.grace),
            "pending": len(self.ops),
            "write_errors": self.failures,
            "resyncs": self.resyncs,
            "link": self.link.health(),
        }
