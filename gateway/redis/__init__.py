"""The gateway's access to Redis: where it is (`urls`, pure), the one redis-py client factory
(`client`), the raw RESP streams of the broadcast path on connections of their own (`stream`),
and the decisions that supervise a link (`supervision`: Outbox, Backoff, Watchdog, LinkState).

Nothing is imported here, so `config` can import `gateway.redis.urls` without pulling in
redis-py or the settings it validates.
"""
