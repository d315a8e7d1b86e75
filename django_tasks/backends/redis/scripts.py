"""The Redis broker's Lua scripts: each an atomic step on the keys that
``backends/redis/broker.py``'s docstring lists (queues, delayed set, held hashes).

Scripts take the key prefix as ``ARGV[1]`` and build key names from it (no ``KEYS``:
the broker does not support Redis Cluster, whose slots would need them).

No script wakes workers: an idle worker blocks in ``BZPOPMIN`` on its queues
(``wakeup.py``), and the ``ZADD`` that adds an id to a queue hands it to one of them.
"""

__all__ = ["ABSENT_LUA", "GIVE_BACK_LUA", "POP_LUA", "PUBLISH_LUA"]

_NOW = """
local function now_ms(arg)
  local n = tonumber(arg)
  if n and n > 0 then return n end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local K = 4398046511104  -- 2^42: ms since 1970 stay below it until the year 2109
"""
# ARGV: prefix, now (0 = Redis's clock), then (rank, due ms (0 = now), queue, id) * n.
PUBLISH_LUA = _NOW + """
local p = ARGV[1]
local now = now_ms(ARGV[2])
for i = 3, #ARGV, 4 do
  local rank, due, q, id = tonumber(ARGV[i]), tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  if due == 0 then due = now end
  if due <= now then
    redis.call('ZADD', p .. ':q:' .. q, rank * K + due, id)
  else
    redis.call('ZADD', p .. ':delayed', due, rank .. '|' .. id .. '|' .. q)
  end
end
return 0
"""
# ARGV: prefix, worker, limit, now (0 = Redis's clock), n queues, queues..., acks...
# Forgets the acknowledged ids, moves due delayed jobs (any queue), then pops up to
# ``limit`` ids across the queues by score (priority, then due time; ties by id, which
# uuid7 orders by time) into the worker's held hash. Returns the ids.
POP_LUA = _NOW + """
local p, worker, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local now = now_ms(ARGV[4])
local nq = tonumber(ARGV[5])
local held = p .. ':held:' .. worker
for i = 6 + nq, #ARGV do redis.call('HDEL', held, ARGV[i]) end
local delayed = p .. ':delayed'
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1000)
for i = 1, #due, 2 do
  local rank, id, q = string.match(due[i], '^(%d+)|([^|]+)|(.*)$')
  redis.call('ZADD', p .. ':q:' .. q, tonumber(rank) * K + tonumber(due[i + 1]), id)
  redis.call('ZREM', delayed, due[i])
end
if limit <= 0 then return {} end
local cands = {}
for i = 1, nq do
  local q = ARGV[5 + i]
  local head = redis.call('ZRANGE', p .. ':q:' .. q, 0, limit - 1, 'WITHSCORES')
  for j = 1, #head, 2 do cands[#cands + 1] = {tonumber(head[j + 1]), head[j], q} end
end
if nq > 1 then
  table.sort(cands, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
end
local out = {}
for i = 1, math.min(limit, #cands) do
  local c = cands[i]
  redis.call('ZREM', p .. ':q:' .. c[3], c[2])
  redis.call('HSET', held, c[2], string.format('%.0f', c[1]) .. '|' .. c[3])
  out[#out + 1] = c[2]
end
if #out > 0 then redis.call('SADD', p .. ':holders', worker) end
return out
"""
# ARGV: prefix, worker, ids...: held jobs back into their queues, as they were.
GIVE_BACK_LUA = """
local p, held = ARGV[1], ARGV[1] .. ':held:' .. ARGV[2]
for i = 3, #ARGV do
  local v = redis.call('HGET', held, ARGV[i])
  if v then
    local score, q = string.match(v, '^(%d+)|(.*)$')
    redis.call('ZADD', p .. ':q:' .. q, score, ARGV[i])
    redis.call('HDEL', held, ARGV[i])
  end
end
return 0
"""
# ARGV: prefix, then (rank, queue, id) * n: the ids in neither their queue nor the
# delayed set.
ABSENT_LUA = """
local p, out = ARGV[1], {}
for i = 2, #ARGV, 3 do
  local rank, q, id = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if not redis.call('ZSCORE', p .. ':q:' .. q, id)
     and not redis.call('ZSCORE', p .. ':delayed', rank .. '|' .. id .. '|' .. q) then
    out[#out + 1] = id
  end
end
return out
"""
