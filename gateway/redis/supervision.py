"""The decisions that supervise a node's Redis links, as small objects without I/O: the bounded
outbox of cross-node messages, reconnect backoff, the subscriber watchdog, the settle rule before
an outbox replay, and each link's state as /health shows it.

The bridges (classic PSUBSCRIBE and sharded SSUBSCRIBE) own the connections and the tasks; these
objects only remember what happened and say what to do next, with the time passed in (or read
from an injected clock) and randomness injected, so each rule is tested without sockets or sleeps.
The rules are the ones the README's resilience settings describe (REDIS_RECONNECT_*,
OUTBOX_MAX_*, REDIS_WATCHDOG_MS).
"""

from __future__ import annotations

import enum
import logging
import random as _random
import time
from collections import deque
from typing import Any, Callable, NamedTuple

log = logging.getLogger("gateway.cluster")

__all__ = [
    "Backoff",
    "LinkState",
    "NodeLinks",
    "Outbox",
    "QueuedMessage",
    "ReplayGate",
    "Verdict",
    "Watchdog",
    "probe_interval",
]

Clock = Callable[[], float]

# The outbox takes this many messages per batch: one pipelined write, one round trip.
BATCH_LIMIT = 512
# A burst of drops logs one line per reason and second at most: an outage must not flood the log.
DROP_LOG_INTERVAL_S = 1.0

FULL = "outbox full"
EXPIRED = "older than OUTBOX_MAX_AGE_MS"


class QueuedMessage(NamedTuple):
    channel: bytes
    payload: bytes
    queued_at: float


# -- outbox ----------------------------------------------------------------------------------------


class Outbox:
    """Cross-node messages waiting for the publisher, oldest first.

    Bounded by count only while the publisher is down (`put(..., link_up=False)`): past
    OUTBOX_MAX_MESSAGES the oldest is dropped, so the newest state wins. Bounded by age when a
    batch is taken: messages older than OUTBOX_MAX_AGE_MS are dropped then (after an outage a
    stale typing indicator or cursor is worse than none). A batch that could not be sent goes
    back to the front in its order (`requeue`). Every drop is counted by reason."""

    __slots__ = ("items", "max_messages", "max_age", "clock", "dropped", "_last_drop_log")

    def __init__(self, max_messages: int, max_age_s: float, clock: Clock = time.monotonic) -> None:
        self.items: deque[QueuedMessage] = deque()
        self.max_messages = max_messages
        self.max_age = max_age_s
        self.clock = clock
        self.dropped: dict[str, int] = {FULL: 0, EXPIRED: 0}
        self._last_drop_log = float("-inf")

    def __len__(self) -> int:
        return len(self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    def put(self, channel: bytes, payload: bytes, link_up: bool) -> None:
        """Queue one message (on the broadcast path: a length check and an append)."""
        items = self.items
        if not link_up and len(items) >= self.max_messages:
            self._drop(1, FULL)
            if not self.max_messages:  # OUTBOX_MAX_MESSAGES=0: nothing new is kept while down
                return
            items.popleft()
        items.append(QueuedMessage(channel, payload, self.clock()))

    def take(self, limit: int = BATCH_LIMIT) -> list[QueuedMessage]:
        """The next run of at most `limit` messages, after dropping the expired ones."""
        self.expire()
        items = self.items
        count = min(limit, len(items))
        return [items.popleft() for _ in range(count)]

    def expire(self) -> int:
        """Drop messages older than the age bound; how many were dropped."""
        limit = self.clock() - self.max_age
        items = self.items
        expired = 0
        while items and items[0].queued_at < limit:
            items.popleft()
            expired += 1
        if expired:
            self._drop(expired, EXPIRED)
        return expired

    def requeue(self, batch: list[QueuedMessage] | list[tuple[bytes, bytes, float]]) -> None:
        """Put a batch that was not sent back in front, in its original order."""
        self.items.extendleft(reversed(batch))  # type: ignore[arg-type]

    def _drop(self, count: int, why: str) -> None:
        self.dropped[why] += count
        now = self.clock()
        if now - self._last_drop_log > DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.warning("cluster_outbox_dropped reason=%r total=%d", why, self.dropped_total)


# -- backoff ---------------------------------------------------------------------------------------


class Backoff:
    """Reconnect delays: the initial delay doubling per failed attempt up to the cap, each with
    jitter in [50 %, 100 %] (from `random`, injected) so nodes that lost Redis together do not
    come back in step. `limit` is the attempt at which the node declares itself single-node
    (REDIS_RECONNECT_ATTEMPTS); it keeps retrying at the cap after that."""

    __slots__ = ("initial", "cap", "limit", "random", "attempts")

    def __init__(self, initial_s: float, max_s: float, limit: int, random: Callable[[], float] = _random.random) -> None:
        self.initial = initial_s
        self.cap = max_s
        self.limit = limit
        self.random = random
        self.attempts = 0

    def delay(self, attempt: int) -> float:
        base = min(self.initial * (2 ** max(0, attempt - 1)), self.cap)
        return base * (0.5 + self.random() / 2)

    def failed(self) -> float:
        """Count a failed attempt; the delay before the next one."""
        self.attempts += 1
        return self.delay(self.attempts)

    @property
    def limit_reached(self) -> bool:
        """True exactly at the attempt that crosses REDIS_RECONNECT_ATTEMPTS (said once)."""
        return self.attempts == self.limit

    def succeeded(self) -> int:
        """The link is back: how many attempts it took (0 = it never failed); starts over."""
        attempts, self.attempts = self.attempts, 0
        return attempts


# -- link state and the node's mode ----------------------------------------------------------------


class LinkState:
    """One Redis link (publisher, subscriber, a shard link): up or down, since when, how many
    failed attempts in a row, and the last error, as /health shows it."""

    __slots__ = ("name", "up", "since", "last_error", "backoff", "clock")

    def __init__(self, name: str, backoff: Backoff, clock: Clock = time.monotonic) -> None:
        self.name = name
        self.up = False
        self.since = clock()
        self.last_error: str | None = None
        self.backoff = backoff
        self.clock = clock

    @property
    def attempts(self) -> int:
        return self.backoff.attempts

    def set_up(self, up: bool) -> bool:
        """Record up/down without an attempt (a stalled subscriber is kept but down); True when
        that changed the state."""
        if up == self.up:
            return False
        self.up = up
        self.since = self.clock()
        return True

    def health(self) -> dict[str, Any]:
        return {
            "state": "up" if self.up else "down",
            "since_seconds": round(max(0.0, self.clock() - self.since), 3),
            "attempts": self.backoff.attempts,
            "last_error": self.last_error,
        }


class NodeLinks:
    """A node's publisher and subscriber links and the mode they put it in.

    The rules: a failed attempt on either link is counted and logged, and the link backs off;
    the attempt that reaches REDIS_RECONNECT_ATTEMPTS on either link puts the node in
    single-node mode (local clients only, cross-node messages queued within the outbox bounds,
    still retrying); the node rejoins once both links are up again."""

    def __init__(self, initial_s: float, max_s: float, limit: int, clock: Clock = time.monotonic, random: Callable[[], float] = _random.random) -> None:
        self.publisher = LinkState("publisher", Backoff(initial_s, max_s, limit, random), clock)
        self.subscriber = LinkState("subscriber", Backoff(initial_s, max_s, limit, random), clock)
        self.single_node = False
        self.reconnects = 0
        self.reconnect_attempts = 0

    def failed(self, link: LinkState, error: BaseException | str) -> float:
        """A connection attempt (or a live link) on `link` failed: the delay before the next."""
        link.set_up(False)
        link.last_error = str(error)
        delay = link.backoff.failed()
        self.reconnect_attempts += 1
        log.warning("cluster_link_down link=%s attempt=%d error=%r", link.name, link.attempts, link.last_error)
        if link.backoff.limit_reached and not self.single_node:
            self.single_node = True
            log.error(
                "cluster_unreachable link=%s attempts=%d mode=single-node note=%r",
                link.name,
                link.attempts,
                "serving local clients only; cross-node messages are queued up to the outbox limits; still retrying",
            )
        return delay

    def restored(self, link: LinkState) -> int:
        """`link` is up (again); how many failed attempts it took."""
        link.set_up(True)
        attempts = link.backoff.succeeded()
        if attempts:
            self.reconnects += 1
            log.info("cluster_link_up link=%s after_attempts=%d", link.name, attempts)
        if self.single_node and self.publisher.up and self.subscriber.up:
            self.single_node = False
            log.warning("cluster_rejoined mode=redis")
        return attempts

    def health(self, outbox: int, mode: str = "redis") -> dict[str, Any]:
        """The adapter part of /health: today's keys, then each link's detail."""
        healthy = self.publisher.up and self.subscriber.up
        return {
            "mode": "single-node" if self.single_node else mode,
            "status": "healthy" if healthy else "degraded",
            "publisher": "up" if self.publisher.up else "down",
            "subscriber": "up" if self.subscriber.up else "down",
            "outbox": outbox,
            "links": {"publisher": self.publisher.health(), "subscriber": self.subscriber.health()},
        }


# -- the subscriber watchdog -----------------------------------------------------------------------


def probe_interval(watchdog_s: float) -> float:
    """How often a watchdog probe is published: three per watchdog window, at most ten a second."""
    return max(0.1, watchdog_s / 3)


class Verdict(enum.Enum):
    HEALTHY = "healthy"  # probes come back
    RESUMED = "resumed"  # probes come back again after a stall: the link is up again
    STALLED = "stalled"  # just went silent while Redis answers nothing: keep the connection, degraded
    DEGRADED = "degraded"  # still stalled, still within the patience window
    LOST = "lost"  # the subscriber is dead (or stalled past patience): rebuild it


class Watchdog:
    """Tells a healthy subscriber from a stalled Redis and from a lost subscriber, from four
    facts: a probe was published through the publisher link (`probe_sent`), Redis acknowledged
    it with its receiver count (`probe_acked`), a probe came back through the subscriber
    (`probe_seen`), and the time (`check`).

    - silence up to REDIS_WATCHDOG_MS: healthy;
    - Redis acknowledged a probe with a receiver count of 0 (it no longer counts this
      subscriber), or acknowledged a probe published after the last one heard and that probe
      has had time (min(watchdog, 1 s) from its acknowledgement) to arrive and did not: the
      connection is dead while Redis is not: LOST. The time runs from the first such
      acknowledgement, not the latest: with a probe acknowledged every second, the latest is
      never a second old, and a dead subscriber would be taken for a stalled Redis;
    - otherwise Redis answers nothing (frozen, overloaded): the connection still holds whatever
      Redis will send when it resumes, so it is kept, STALLED then DEGRADED, for `patience_s`
      (max(watchdog, OUTBOX_MAX_AGE_MS): a rebuild would lose what it holds), then LOST.
      `patience_s=None` has no stall state: silence past the watchdog is LOST at once (the
      sharded links, which rebuild a silent shard link).

    Only probes count, not other messages: a message proves the connection delivers, not that
    this node's publishes go round through Redis to it."""

    __slots__ = ("window", "patience", "every", "seen", "next_probe", "unheard_acked_at", "stalled_since", "stalls", "rebuilds", "reason", "_zero_receivers")

    def __init__(self, watchdog_s: float, patience_s: float | None) -> None:
        self.window = watchdog_s
        self.patience = patience_s
        self.every = probe_interval(watchdog_s)
        self.seen = 0.0
        self.next_probe = 0.0
        self.unheard_acked_at = 0.0  # when Redis acknowledged the first probe not heard since
        self.stalled_since = 0.0
        self.stalls = 0
        self.rebuilds = 0
        self.reason = ""
        self._zero_receivers = False

    def start(self, now: float) -> None:
        """The link was just verified (its own probe came back): start watching afresh."""
        self.seen = now
        self.next_probe = now + self.every
        self.unheard_acked_at = 0.0
        self.stalled_since = 0.0
        self.reason = ""
        self._zero_receivers = False

    def probe_due(self, now: float) -> bool:
        return now >= self.next_probe

    def probe_sent(self, now: float) -> None:
        self.next_probe = now + self.every

    def probe_acked(self, sent_at: float, now: float, receivers: int) -> None:
        """Redis answered the probe published at `sent_at` with `receivers` subscribers."""
        if receivers == 0:
            self._zero_receivers = True
        elif sent_at > self.seen and not self.unheard_acked_at:
            self.unheard_acked_at = now

    def probe_seen(self, now: float) -> None:
        self.seen = now
        self.unheard_acked_at = 0.0

    @property
    def stalled(self) -> bool:
        return bool(self.stalled_since)

    def check(self, now: float) -> Verdict:
        if self._zero_receivers:
            self.reason = "Redis no longer counts our subscriber"
            return Verdict.LOST
        silent = now - self.seen
        if silent <= self.window:
            if self.stalled_since:
                self.stalled_since = 0.0
                return Verdict.RESUMED
            return Verdict.HEALTHY
        if self.patience is None:
            self.rebuilds += 1
            self.reason = f"no probe for {silent:.1f}s"
            return Verdict.LOST
        lost = bool(self.unheard_acked_at) and now - self.unheard_acked_at > min(self.window, 1.0)
        verdict = Verdict.DEGRADED
        if not self.stalled_since:
            self.stalled_since = now
            self.stalls += 1
            verdict = Verdict.STALLED
        if lost or now - self.stalled_since > max(self.window, self.patience):
            self.rebuilds += 1
            self.reason = f"subscriber received nothing for {silent:.1f}s"
            return Verdict.LOST
        return verdict


# -- replay after an outage ------------------------------------------------------------------------


class ReplayGate:
    """When the outbox may be replayed after an outage: once the other nodes' subscribers are
    back, so the replay is not published into a Redis nobody listens to yet.

    `expected` is how many subscribers each request channel had while the links were last up
    (one per node). Replay once every channel has at least as many again, or, with no count
    from before, once the count stops changing between two looks; in any case after
    `deadline_s` (REDIS_RECONNECT_MAX_MS + 1 s: every node retries within one cap). First our
    own subscriber must be up (`subscriber_up`)."""

    __slots__ = ("expected", "deadline", "previous")

    def __init__(self, expected: dict[bytes, int], now: float, deadline_s: float) -> None:
        self.expected = dict(expected)
        self.deadline = now + deadline_s
        self.previous: dict[bytes, int] | None = None

    def expired(self, now: float) -> bool:
        return now >= self.deadline

    @property
    def poll_interval(self) -> float:
        """Seconds between two counts: quick when there is a target, slower to see a plateau."""
        return 0.1 if self.expected else 0.3

    def ready(self, counts: dict[bytes, int], channels: list[bytes], now: float) -> bool:
        """Given the current PUBSUB NUMSUB counts: replay now?"""
        if self.expired(now) or not channels:
            return True
        if self.expected:
            return all(counts.get(channel, 0) >= self.expected.get(channel, 1) for channel in channels)
        settled = counts == self.previous
        self.previous = dict(counts)
        return settled

    @staticmethod
    def counts_trusted(publisher_up: bool, publisher_attempts: int, recovering: bool, up_for_s: float, settle_s: float) -> bool:
        """Whether a NUMSUB count taken now may become the next outage's `expected`: only with
        both links up and, after an outage, once the other nodes have had a reconnect cap to
        come back (a count taken earlier would be too low and release a replay too soon)."""
        return publisher_up and not publisher_attempts and (not recovering or up_for_s > settle_s)
