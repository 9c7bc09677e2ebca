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
exactly one node announces the departures. Heartbeats last 60% of PRESENCE_TIMEOUT and are checked
every 20% of it, so a dead node's users leave within the timeout.

Without Redis the same bookkeeping runs in memory (a single node cannot outlive itself).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import secrets
from collections import deque
from typing import Any, Callable

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .adapter.connection import redis_client
from .config import Settings

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


class Presence:
    """In-memory presence for a single node; the base of the Redis one."""

    def __init__(self, notify: Notify) -> None:
        self.notify = notify
        self.local: dict[Key, int] = {}  # sockets of this node per (namespace, room, user)
        self.rooms: dict[tuple[str, str], set[str]] = {}  # users of this node per (namespace, room)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def join(self, nsp: str, room: str, user: str) -> None:
        key = (nsp, room, user)
        count = self.local.get(key, 0) + 1
        self.local[key] = count
        if count == 1:
            self.rooms.setdefault((nsp, room), set()).add(user)
            self._arrived(key)

    def leave(self, nsp: str, room: str, user: str) -> None:
        key = (nsp, room, user)
        count = self.local.get(key, 0) - 1
        if count > 0:
            self.local[key] = count
            return
        if self.local.pop(key, None) is not None:
            users = self.rooms.get((nsp, room))
            if users is not None:
                users.discard(user)
                if not users:
                    del self.rooms[(nsp, room)]
            self._departed(key)

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

    def health(self) -> dict[str, Any]:
        return {"mode": "memory", "entries": len(self.local)}


class RedisPresence(Presence):
    """Cluster-wide presence kept in Redis with per-node heartbeats."""

    def __init__(
        self, notify: Notify, redis_url: str, prefix: str, timeout_ms: int, node_id: str | None = None, settings: Settings | None = None
    ) -> None:
        super().__init__(notify)
        self.redis_url = redis_url
        # The connection settings (TLS, Sentinel) of the node; a bare URL connects without TLS files.
        self.settings = dataclasses.replace(settings, redis_url=redis_url) if settings is not None else Settings(redis_url=redis_url)
        self.node = node_id or secrets.token_hex(8)
        self.base = f"{prefix}#presence"
        self.nodes_key = f"{self.base}#nodes"
        self.node_key = f"{self.base}#node#{self.node}"
        self.alive_key = f"{self.base}#alive#{self.node}"
        self.heartbeat_ms = max(100, int(timeout_ms * HEARTBEAT_SHARE))
        self.tick_s = max(0.05, timeout_ms * TICK_SHARE / 1000)
        self.redis: aioredis.Redis | None = None
        self.ops: deque[tuple[str, Key]] = deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._closing = False
        self.errors = 0
        self.reaped_nodes = 0

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
            log.warning("presence_redis_unavailable error=%r (retrying every %.1fs)", exc, self.tick_s)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._writer(), name="presence-writer"), loop.create_task(self._ticker(), name="presence-heartbeat")]

    async def close(self) -> None:
        """Leave cleanly: others are told now rather than after the timeout."""
        self._closing = True
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
            await self.redis.delete(self.alive_key)
            for member in await self._reap(keys=[self.nodes_key, self.node_key, self.alive_key], args=[self.base, self.node]):
                self._announce("leave", tuple(json.loads(member)))  # type: ignore[arg-type]
        except (RedisError, OSError) as exc:
            log.warning("presence_close_failed error=%r", exc)
        self.local.clear()
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

    async def _writer(self) -> None:
        """One writer, so a join and the leave after it reach Redis in that order."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.ops:
                op, key = self.ops[0]
                try:
                    await self._apply(op, key)
                except (RedisError, OSError) as exc:
                    # The heartbeat reconciles this node's entries once Redis answers again.
                    self.errors += 1
                    log.warning("presence_write_failed op=%s room=%s error=%r", op, key[1], exc)
                except Exception:
                    self.errors += 1
                    log.exception("presence_write_failed op=%s room=%s", op, key[1])
                self.ops.popleft()

    async def _apply(self, op: str, key: Key) -> None:
        nsp, room, user = key
        script = self._join if op == "join" else self._leave
        result = await script(keys=[self.node_key, self._room_key(nsp, room)], args=[self._member(key), user])
        if (op == "join" and result == 1) or (op == "leave" and result == 0):
            self._announce(op, key)

    # -- heartbeat, reconciliation, reaping ------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self._beat()
                await self._reap_dead()
            except (RedisError, OSError) as exc:
                self.errors += 1
                log.warning("presence_heartbeat_failed error=%r", exc)
            except Exception:
                self.errors += 1
                log.exception("presence_heartbeat_failed")

    async def _beat(self) -> None:
        assert self.redis is not None
        held = await self._heartbeat(keys=[self.alive_key, self.nodes_key, self.node_key], args=[self.heartbeat_ms, self.node])
        if held != len(self.local) and not self.ops:
            await self._reconcile()

    async def _reconcile(self) -> None:
        """Make Redis hold exactly what this node holds (after an outage, or after another node
        took this one for dead while its heartbeat could not get through)."""
        assert self.redis is not None
        stored = {tuple(json.loads(m)) for m in await self.redis.hkeys(self.node_key)}
        local = set(self.local)
        missing, extra = local - stored, stored - local
        if missing or extra:
            log.info("presence_reconcile missing=%d extra=%d", len(missing), len(extra))
        for key in extra:
            self._queue("leave", key)  # type: ignore[arg-type]
        for key in missing:
            self._queue("join", key)  # type: ignore[arg-type]

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
        assert self.redis is not None
        counts = await self.redis.hgetall(self._room_key(nsp, room))
        return sorted(user for user, count in counts.items() if int(count) > 0)

    def health(self) -> dict[str, Any]:
        return {"mode": "redis", "node": self.node, "entries": len(self.local), "pending": len(self.ops), "errors": self.errors}
