"""The one Lua script behind :class:`~writebehind.scale.RedisSharedCapacity`: a lease step.

A step is one round trip (``EVALSHA``, or ``EVAL`` after a ``NOSCRIPT``) and runs atomically
on the server, by the server's clock (``TIME``). Its keys share the hash tag ``{name}``, so
they live in one slot of a Redis Cluster too::

    KEYS[1]    writebehind:capacity:{name}:wants   hash: instance id -> partitions wanted
    KEYS[2]    writebehind:capacity:{name}:seen    sorted set: instance id -> want's expiry (ms)
    KEYS[3..]  writebehind:capacity:{name}:p:<i>   partition i: the owner's id, with a TTL

    ARGV[1] my instance id, ARGV[2] partitions I want (0 .. total), ARGV[3] lease in ms

What a step does, for the instance that runs it:

1. Record its want with an expiry (a want of 0 deletes it); drop the wants whose instance
   has not stepped for a lease (a dead instance stops counting as one that wants).
2. Read every partition's owner (one ``MGET``).
3. Allot the partitions max-min fairly (water-filling) among the instances that want some:
   an instance wanting less than an equal share gets all it wants, the rest share what is
   left equally; a remainder goes to those already holding the most (then by id), so the
   split is stable from one step to the next.
4. Release (``DEL``; the owner was read in this same atomic script) what it holds above
   its allotment when other instances wait for more than the free partitions can give them,
   and anything above its own want. Extend (``PEXPIRE``) the leases it keeps. Take free
   partitions (``SET NX PX``) up to its allotment, unless it released some in this step.

So a lease above the fair share is never extended while another instance waits for its
share, an instance at its fair share takes no more while others want more, and an instance
that arrives when another holds everything gets its share at that one's next step.

Returns ``{held, allotment, instances wanting, free partitions left}``.
"""

from __future__ import annotations

__all__ = ["STEP"]

STEP = """
local me, want, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local wants_key, seen_key = KEYS[1], KEYS[2]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if want > 0 then
  redis.call('HSET', wants_key, me, want)
  redis.call('ZADD', seen_key, now + lease, me)
  redis.call('PEXPIRE', wants_key, lease)
  redis.call('PEXPIRE', seen_key, lease)
else
  redis.call('HDEL', wants_key, me)
  redis.call('ZREM', seen_key, me)
end
local dead = redis.call('ZRANGEBYSCORE', seen_key, '-inf', now)
if #dead > 0 then
  redis.call('HDEL', wants_key, unpack(dead))
  redis.call('ZREMRANGEBYSCORE', seen_key, '-inf', now)
end

local total = #KEYS - 2
local parts = {}
for i = 1, total do parts[i] = KEYS[i + 2] end
local owners = redis.call('MGET', unpack(parts))
local held_by, mine, free = {}, {}, {}
for i = 1, total do
  local o = owners[i]
  if o then
    held_by[o] = (held_by[o] or 0) + 1
    if o == me then mine[#mine + 1] = parts[i] end
  else
    free[#free + 1] = parts[i]
  end
end

local flat = redis.call('HGETALL', wants_key)
local list = {}
for i = 1, #flat, 2 do
  list[#list + 1] = {id = flat[i], want = tonumber(flat[i + 1]), held = held_by[flat[i]] or 0}
end
table.sort(list, function(a, b)
  if a.want ~= b.want then return a.want < b.want end
  return a.id < b.id
end)
local alloc, remaining, k = {}, total, 1
while k <= #list do
  local e = list[k]
  if e.want > math.floor(remaining / (#list - k + 1)) then break end
  alloc[e.id] = e.want
  remaining = remaining - e.want
  k = k + 1
end
if k <= #list then
  local rest = {}
  for j = k, #list do rest[#rest + 1] = list[j] end
  local share = math.floor(remaining / #rest)
  local extra = remaining - share * #rest
  table.sort(rest, function(a, b)
    if a.held ~= b.held then return a.held > b.held end
    return a.id < b.id
  end)
  for j, e in ipairs(rest) do
    alloc[e.id] = share + ((j <= extra) and 1 or 0)
  end
end

local mine_alloc = alloc[me] or 0
local waiting = 0
for _, e in ipairs(list) do
  if e.id ~= me and alloc[e.id] > e.held then waiting = waiting + alloc[e.id] - e.held end
end
local held = #mine
local release = 0
if held > mine_alloc then
  release = math.min(held - mine_alloc, math.max(0, waiting - #free))
end
if held > want then release = math.max(release, held - want) end
for i = held - release + 1, held do redis.call('DEL', mine[i]) end
held = held - release
for i = 1, held do redis.call('PEXPIRE', mine[i], lease) end
if release == 0 then
  local n = 1
  while held < mine_alloc and n <= #free do
    if redis.call('SET', free[n], me, 'NX', 'PX', lease) then held = held + 1 end
    n = n + 1
  end
  return {held, mine_alloc, #list, #free - n + 1}
end
return {held, mine_alloc, #list, #free + release}
"""
