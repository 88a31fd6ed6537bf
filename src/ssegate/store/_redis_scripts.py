"""The Lua scripts of :class:`~ssegate.store.redis.RedisStore`: every write is one script, so
it is atomic (see the module docstring of ``ssegate.store.redis``)."""

from __future__ import annotations

__all__ = ["APPEND_KEEPS_LEASE", "SCRIPTS", "script_sources"]

# -- scripts ---------------------------------------------------------------------------------
# Status codes: -1 = no such stream, -2 = the stream is finished. `TIME` before writes needs
# effects replication, the default since Redis 5; replicate_commands() is called where it
# exists for older or unusually configured servers (it is a no-op on 7+).

_PRELUDE = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
"""

# KEYS: meta, lease. ARGV: model, provider, owner, has_owner, lease_ms, keep_ms
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local t = redis.call('TIME')
local created = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
redis.call('HSET', KEYS[1], 'status', 'running', 'model', ARGV[1], 'provider', ARGV[2],
  'created', created, 'last_id', 0)
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'owner', ARGV[3]) end
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[5])
return created
"""

# KEYS: meta, events, lease. ARGV: maxlen, lease_ms, keep_ms, data channel, the first id the
# caller expects (0: any), then one or more (event, data) pairs, appended in order with
# consecutive ids. Returns the first id; -3, appending nothing, if it is not the one expected.
# The lease and the keys' expiry are refreshed with the first event (which makes the events
# key) and then once a third of the lease has passed (APPEND_KEEPS_LEASE): not on every token,
# where three timer writes were as many inner calls as the append itself.
_APPEND = """
local h = redis.call('HMGET', KEYS[1], 'status', 'last_id')
if not h[1] then return -1 end
if h[1] ~= 'running' then return -2 end
local last = tonumber(h[2] or '0')
local n = (#ARGV - 5) / 2
local expected = tonumber(ARGV[5])
if expected ~= 0 and last + 1 ~= expected then return -3 end
redis.call('HSET', KEYS[1], 'last_id', last + n)
for i = 1, n do
  local id = last + i
  local e, d = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[1], id .. '-0', 'e', e, 'd', d)
  redis.call('PUBLISH', ARGV[4], id .. '\\n' .. e .. '\\n' .. d)
end
local lease_ms = tonumber(ARGV[2])
if last == 0 or redis.call('PTTL', KEYS[3]) < lease_ms - math.floor(lease_ms / 3) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
end
return last + 1
"""

#: After an append, the producer's lease holds at least this share of ``lease_ttl`` (the
#: append script refreshes it once a third has passed).
APPEND_KEEPS_LEASE = 2 / 3

# KEYS: meta, events, lease, subs. ARGV: status, data, maxlen, usage, error, cause, ttl_ms,
# control channel, the highest id the caller has seen (the terminal event comes after it: a
# failover may have lost events a client saw, and their ids must not mean another event)
_FINISH = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= 'running' then return -2 end
if tonumber(redis.call('HGET', KEYS[1], 'last_id') or '0') < tonumber(ARGV[9]) then
  redis.call('HSET', KEYS[1], 'last_id', ARGV[9])
end
local id = redis.call('HINCRBY', KEYS[1], 'last_id', 1)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id .. '-0', 'e', ARGV[1], 'd', ARGV[2])
local t = redis.call('TIME')
redis.call('HSET', KEYS[1], 'status', ARGV[1],
  'finished_at', t[1] .. '.' .. string.format('%06d', tonumber(t[2])))
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'usage', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'error', ARGV[5]) end
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'cause', ARGV[6]) end
redis.call('DEL', KEYS[3])
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[7])
redis.call('PEXPIRE', KEYS[4], ARGV[7])
redis.call('PUBLISH', ARGV[8], 'f\\n' .. id .. '\\n' .. ARGV[1] .. '\\n' .. ARGV[2])
return id
"""

# KEYS: meta, subs. Returns false, or {flat meta hash, live subscribers}.
_INFO = (
    _PRELUDE
    + """
local h = redis.call('HGETALL', KEYS[1])
if #h == 0 then return false end
return {h, redis.call('ZCOUNT', KEYS[2], '(' .. now_ms(), '+inf')}
"""
)

# KEYS: meta. ARGV: cause, control channel
_CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st ~= 'running' then return 0 end
if redis.call('HSETNX', KEYS[1], 'cancel', ARGV[1]) == 1 then
  redis.call('PUBLISH', ARGV[2], 'c\\n' .. ARGV[1])
end
return 1
"""

# KEYS: meta, events, lease, subs. ARGV: control channel
_DELETE = """
local h = redis.call('HMGET', KEYS[1], 'status', 'cancel')
if not h[1] then return 0 end
local cause = ''
if h[1] == 'running' then cause = h[2] or 'deleted' end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
redis.call('PUBLISH', ARGV[1], 'x\\n' .. cause)
return 1
"""

# KEYS: meta, events, lease. ARGV: lease_ms, keep_ms
_RENEW = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return -1 end
if st == 'running' then
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
return 1
"""

# KEYS: meta, subs. ARGV: member, ttl_ms, control channel ('' = don't publish)
_SUBSCRIBE = (
    _PRELUDE
    + """
local keep = redis.call('PTTL', KEYS[1])
if keep == -2 then return -1 end
local now = now_ms()
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[2]), ARGV[1])
if keep > 0 then redis.call('PEXPIRE', KEYS[2], keep) end
if ARGV[3] ~= '' then redis.call('PUBLISH', ARGV[3], 's') end
return 1
"""
)

# KEYS: subs. ARGV: member, control channel
_UNSUBSCRIBE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then redis.call('PUBLISH', ARGV[2], 's') end
return 1
"""

# KEYS: meta, subs. Returns false, or {live subscribers, ms until the next one expires or -1}.
_SUBSCRIBERS = (
    _PRELUDE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
local now = now_ms()
local n = redis.call('ZCOUNT', KEYS[2], '(' .. now, '+inf')
local first = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local wait = -1
if first[2] then wait = tonumber(first[2]) - now end
return {n, wait}
"""
)


#: Script name (as ``RedisHub._run`` in ``_redis_pubsub`` takes it) -> Lua source.
SCRIPTS: dict[str, str] = {
    "create": _CREATE,
    "append": _APPEND,
    "finish": _FINISH,
    "info": _INFO,
    "cancel": _CANCEL,
    "delete": _DELETE,
    "renew": _RENEW,
    "subscribe": _SUBSCRIBE,
    "unsubscribe": _UNSUBSCRIBE,
    "subscribers": _SUBSCRIBERS,
}


def script_sources(*, sharded: bool) -> dict[str, str]:
    """The scripts by name; ``sharded``: for a Redis Cluster, publishing with ``SPUBLISH``
    (sharded pub/sub, Redis ≥ 7: a message goes only to the nodes of its channel's shard, and
    a channel ``P{S}:…`` hashes to the slot of its stream's keys) instead of ``PUBLISH``, which
    a cluster broadcasts to every node."""
    if not sharded:
        return dict(SCRIPTS)
    return {name: source.replace("'PUBLISH'", "'SPUBLISH'") for name, source in SCRIPTS.items()}
