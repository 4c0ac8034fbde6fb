"""The Redis backend of the limiter: every admission and settlement is one Lua script, so
it is atomic across every replica sharing the Redis (a single Redis, not a cluster: one
call touches the key's and the project's counters together).

Time comes from Redis (``TIME``), not from the replicas, so their clocks cannot disagree
about a bucket's refill. Per subject, under ``<prefix><subject>:``:

* ``rq`` / ``tk``: hashes ``{l: level, t: ms}`` of the request and token buckets; they
  expire once they would be full again (a missing bucket is a full one);
* ``cc``: a sorted set of leases (score: expiry in ms); expired ones are dropped before
  counting, so a crashed replica's slots free themselves;
* ``usd:d:<day>`` / ``usd:m:<month>``: spend in micro-USD, expiring after their period.

The day and month names are the replica's UTC date (a skew matters only at midnight).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from trellis.access.limit_backend import (
    Level,
    Periods,
    Subject,
    Verdict,
    micro_usd,
    usage_view,
)

__all__ = ["RedisBackend"]

#: Every script reads Redis' own clock (milliseconds), so replicas' clocks never matter.
_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
#: A token bucket's level now: full when new, refilled at ``cap`` per minute since its last
#: write (-1: no such limit).
_LEVEL = """
local function level(key, cap)
  if cap <= 0 then return -1 end
  local v = redis.call('HMGET', key, 'l', 't')
  local l = tonumber(v[1])
  if l == nil then return cap end
  l = l + (now - tonumber(v[2])) * cap / 60000.0
  if l > cap then l = cap end
  return l
end
"""

#: KEYS: 5 per subject (rq, tk, cc, usd day, usd month).
#: ARGV: n, tokens, lease, lease_ms, day_reset_ms, month_reset_ms, then 5 per subject:
#: rpm, tpm, max_concurrent, daily micro-USD, monthly micro-USD (-1: no such limit).
#: Returns {admitted, refused_index (0-based, -1), kind, retry_ms, then 4 per subject:
#: requests left, ms to full, tokens left, ms to full (-1, 0: no such limit)}.
_ADMIT = (
    _CLOCK
    + _LEVEL
    + """
local n = tonumber(ARGV[1])
local est = tonumber(ARGV[2])
local lease = ARGV[3]
local lease_ms = tonumber(ARGV[4])
local day_ms = tonumber(ARGV[5])
local month_ms = tonumber(ARGV[6])
local function reset(l, cap)
  local ms = math.ceil((cap - l) * 60000.0 / cap)
  if ms < 0 then ms = 0 end
  return ms
end
local found = nil
local levels = {}
local out = {}
for i = 0, n - 1 do
  local k = i * 5
  local a = 6 + i * 5
  local rpm = tonumber(ARGV[a + 1])
  local tpm = tonumber(ARGV[a + 2])
  local conc = tonumber(ARGV[a + 3])
  local daily = tonumber(ARGV[a + 4])
  local monthly = tonumber(ARGV[a + 5])
  local rq = -1
  local tk = -1
  if rpm > 0 then
    rq = level(KEYS[k + 1], rpm)
    if found == nil and rq < 1 then
      found = {i, 'rpm', math.ceil((1 - rq) * 60000.0 / rpm)}
    end
  end
  if tpm > 0 then
    tk = level(KEYS[k + 2], tpm)
    local need = est
    if need > tpm then need = tpm end
    if found == nil and tk < need then
      found = {i, 'tpm', math.ceil((need - tk) * 60000.0 / tpm)}
    end
  end
  if found == nil and conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 3], '-inf', now)
    if redis.call('ZCARD', KEYS[k + 3]) >= conc then found = {i, 'concurrent', 1000} end
  end
  if found == nil and daily >= 0 then
    if tonumber(redis.call('GET', KEYS[k + 4]) or '0') >= daily then
      found = {i, 'daily', day_ms}
    end
  end
  if found == nil and monthly >= 0 then
    if tonumber(redis.call('GET', KEYS[k + 5]) or '0') >= monthly then
      found = {i, 'monthly', month_ms}
    end
  end
  levels[i] = {rq, tk, rpm, tpm, conc}
end
if found ~= nil then
  for i = 0, n - 1 do
    local lv = levels[i]
    local rr, tr = 0, 0
    if lv[3] > 0 then rr = reset(lv[1], lv[3]) end
    if lv[4] > 0 then tr = reset(lv[2], lv[4]) end
    table.insert(out, math.floor(lv[1]))
    table.insert(out, rr)
    table.insert(out, math.floor(lv[2]))
    table.insert(out, tr)
  end
  return {0, found[1], found[2], found[3], unpack(out)}
end
for i = 0, n - 1 do
  local k = i * 5
  local lv = levels[i]
  local rq, tk, rpm, tpm, conc = lv[1], lv[2], lv[3], lv[4], lv[5]
  local rr, tr = 0, 0
  if rpm > 0 then
    rq = rq - 1
    rr = reset(rq, rpm)
    redis.call('HSET', KEYS[k + 1], 'l', tostring(rq), 't', now)
    redis.call('PEXPIRE', KEYS[k + 1], rr + 1000)
  end
  if tpm > 0 then
    tk = tk - est
    tr = reset(tk, tpm)
    redis.call('HSET', KEYS[k + 2], 'l', tostring(tk), 't', now)
    redis.call('PEXPIRE', KEYS[k + 2], tr + 1000)
  end
  if conc > 0 then
    redis.call('ZADD', KEYS[k + 3], now + lease_ms, lease)
    redis.call('PEXPIRE', KEYS[k + 3], lease_ms + 1000)
  end
  table.insert(out, math.floor(rq))
  table.insert(out, rr)
  table.insert(out, math.floor(tk))
  table.insert(out, tr)
end
return {1, -1, '', 0, unpack(out)}
"""
)

#: KEYS: 4 per subject (tk, cc, usd day, usd month).
#: ARGV: n, lease, token_delta, spend micro-USD, day_ttl_ms, month_ttl_ms, then tpm per
#: subject (0: none). Returns the day and month spend of each subject after.
_SETTLE = (
    _CLOCK
    + """
local n = tonumber(ARGV[1])
local lease = ARGV[2]
local delta = tonumber(ARGV[3])
local spend = tonumber(ARGV[4])
local day_ttl = tonumber(ARGV[5])
local month_ttl = tonumber(ARGV[6])
local out = {}
for i = 0, n - 1 do
  local k = i * 4
  local tpm = tonumber(ARGV[7 + i])
  if tpm > 0 and delta ~= 0 then
    local v = redis.call('HMGET', KEYS[k + 1], 'l', 't')
    local l = tonumber(v[1])
    if l == nil then
      l = tpm
    else
      l = l + (now - tonumber(v[2])) * tpm / 60000.0
      if l > tpm then l = tpm end
    end
    l = l - delta
    redis.call('HSET', KEYS[k + 1], 'l', tostring(l), 't', now)
    local ms = math.ceil((tpm - l) * 60000.0 / tpm)
    if ms < 0 then ms = 0 end
    redis.call('PEXPIRE', KEYS[k + 1], ms + 1000)
  end
  redis.call('ZREM', KEYS[k + 2], lease)
  local d, m
  if spend > 0 then
    d = redis.call('INCRBY', KEYS[k + 3], spend)
    redis.call('PEXPIRE', KEYS[k + 3], day_ttl)
    m = redis.call('INCRBY', KEYS[k + 4], spend)
    redis.call('PEXPIRE', KEYS[k + 4], month_ttl)
  else
    d = tonumber(redis.call('GET', KEYS[k + 3]) or '0')
    m = tonumber(redis.call('GET', KEYS[k + 4]) or '0')
  end
  table.insert(out, d)
  table.insert(out, m)
end
return out
"""
)

#: KEYS: rq, tk, cc, usd day, usd month of one subject. ARGV: rpm, tpm (0: none).
#: Returns requests level * 1000, tokens level * 1000, leases in flight, day and month spend.
_USAGE = (
    _CLOCK
    + _LEVEL
    + """
local rq = level(KEYS[1], tonumber(ARGV[1]))
local tk = level(KEYS[2], tonumber(ARGV[2]))
local cc = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')
local d = tonumber(redis.call('GET', KEYS[4]) or '0')
local m = tonumber(redis.call('GET', KEYS[5]) or '0')
return {math.floor(rq * 1000), math.floor(tk * 1000), cc, d, m}
"""
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisBackend:
    """Counters in Redis, shared by every replica; each call is one script."""

    def __init__(self, url: str, *, prefix: str = "trellis:limits:") -> None:
        import redis.asyncio as redis  # imported here: only Redis deployments need it

        self.prefix = prefix
        self._client = redis.Redis.from_url(url)
        self._admit = self._client.register_script(_ADMIT)
        self._settle = self._client.register_script(_SETTLE)
        self._usage = self._client.register_script(_USAGE)

    def _keys(self, subject: Subject, periods: Periods) -> list[str]:
        base = f"{self.prefix}{subject.name}:"
        return [
            base + "rq",
            base + "tk",
            base + "cc",
            f"{base}usd:d:{periods.day}",
            f"{base}usd:m:{periods.month}",
        ]

    async def admit(
        self,
        subjects: Sequence[Subject],
        tokens: int,
        lease: str,
        lease_seconds: float,
        periods: Periods,
    ) -> Verdict:
        keys: list[str] = []
        args: list[Any] = [
            len(subjects),
            tokens,
            lease,
            math.ceil(lease_seconds * 1000),
            math.ceil(periods.day_ends_in * 1000),
            math.ceil(periods.month_ends_in * 1000),
        ]
        for subject in subjects:
            v = subject.values
            keys += self._keys(subject, periods)
            args += [
                v.rpm or 0,
                v.tpm or 0,
                v.max_concurrent or 0,
                micro_usd(v.daily_usd),
                micro_usd(v.monthly_usd),
            ]
        raw = await self._admit(keys=keys, args=args)
        levels = []
        for i in range(len(subjects)):
            rq, rr, tk, tr = (int(x) for x in raw[4 + 4 * i : 8 + 4 * i])
            levels.append(Level(rq, rr, tk, tr))
        return Verdict(
            admitted=int(raw[0]) == 1,
            levels=levels,
            refused_index=int(raw[1]),
            refused_kind=_text(raw[2]),
            retry_after_ms=int(raw[3]),
        )

    async def settle(
        self,
        subjects: Sequence[Subject],
        lease: str,
        token_delta: int,
        spend_micro: int,
        periods: Periods,
    ) -> list[tuple[int, int]]:
        keys: list[str] = []
        for subject in subjects:
            keys += self._keys(subject, periods)[1:]
        args: list[Any] = [
            len(subjects),
            lease,
            token_delta,
            spend_micro,
            math.ceil((periods.day_ends_in + 3600) * 1000),
            math.ceil((periods.month_ends_in + 3600) * 1000),
            *[s.values.tpm or 0 for s in subjects],
        ]
        raw = await self._settle(keys=keys, args=args)
        return [(int(raw[2 * i]), int(raw[2 * i + 1])) for i in range(len(subjects))]

    async def claim_alert(self, key: str, ttl_seconds: float) -> bool:
        claimed = await self._client.set(
            self.prefix + key, b"1", nx=True, px=max(1, math.ceil(ttl_seconds * 1000))
        )
        return bool(claimed)

    async def usage(self, subject: Subject, periods: Periods) -> dict[str, Any]:
        v = subject.values
        raw = await self._usage(keys=self._keys(subject, periods), args=[v.rpm or 0, v.tpm or 0])
        rq, tk, cc, day, month = (int(x) for x in raw)
        return usage_view(
            subject,
            requests=rq / 1000 if v.rpm else None,
            tokens=tk / 1000 if v.tpm else None,
            concurrent=cc,
            day_micro=day,
            month_micro=month,
            periods=periods,
        )

    async def clear(self) -> None:
        """Delete every counter under this prefix (tests)."""
        async for key in self._client.scan_iter(match=self.prefix + "*", count=500):
            await self._client.delete(key)

    async def aclose(self) -> None:
        await self._client.aclose()
