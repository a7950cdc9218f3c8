"""The Lua scripts of parking on Redis (redis_parking.py says the keys and the order they keep): each runs whole,
in one Redis Cluster slot. `ARGV[1]` is the keys' base, `ARGV[2]` the bytes counted per entry beside its payload;
`KEYS` are the totals (count, bytes, counts, weights, sources)."""

_DROP = """
local base = ARGV[1]
local function class_of(size)
  local class = 0
  while size >= 1 do size, class = math.floor(size / 2), class + 1 end
  return class  -- the bit length, as parking.size_class
end
local function sized(source, id, size, at)
  redis.call('ZADD', base .. ':size:' .. source, class_of(size) * 1e11 - tonumber(at), id)
end
local function drop(source, id)
  local zset, data = base .. ':src:' .. source, base .. ':data:' .. source
  local payload = redis.call('HGET', data, id)
  local size = 0
  redis.call('HDEL', base .. ':tries:' .. source, id)
  redis.call('ZREM', base .. ':size:' .. source, id)
  if payload then
    redis.call('HDEL', data, id)
    size = string.len(payload) + tonumber(ARGV[2])
  end
  local dropped = redis.call('ZREM', zset, id)
  if dropped == 1 then
    if tonumber(redis.call('GET', KEYS[1]) or '0') > 0 then redis.call('DECR', KEYS[1]) end
    redis.call('ZINCRBY', KEYS[3], -1, source)
  end
  redis.call('DECRBY', KEYS[2], size)
  redis.call('ZINCRBY', KEYS[4], -size, source)
  if redis.call('ZCARD', zset) == 0 then
    -- bytes whose payload vanished (an eviction by Redis, a manual HDEL) are given back here
    redis.call('DECRBY', KEYS[2], tonumber(redis.call('ZSCORE', KEYS[4], source) or '0'))
    redis.call('ZREM', KEYS[3], source)
    redis.call('ZREM', KEYS[4], source)
    redis.call('DEL', data, base .. ':tries:' .. source, base .. ':size:' .. source)
  end
  if tonumber(redis.call('GET', KEYS[1]) or '0') == 0 then
    redis.call('SET', KEYS[2], 0)  -- nothing parked, nothing counted (bytes parked before an upgrade)
  end
  return {payload and 1 or 0, dropped}
end
local function rebuild(source)
  -- the size: key from the source's entries (those parked before it existed, or after it was lost); a member
  -- whose payload is gone is dropped, or the key would name fewer than the source holds at every park after
  local zset, data = base .. ':src:' .. source, base .. ':data:' .. source
  redis.call('DEL', base .. ':size:' .. source)
  local listed = redis.call('ZRANGE', zset, 0, -1, 'WITHSCORES')
  local weight = 0
  for i = 1, #listed, 2 do
    local payload = redis.call('HGET', data, listed[i])
    if payload then
      sized(source, listed[i], string.len(payload) + tonumber(ARGV[2]), listed[i + 1])
      weight = weight + string.len(payload) + tonumber(ARGV[2])
    else
      drop(source, listed[i])
    end
  end
  -- a payload gone took its bytes with it, which drop cannot give back (it no longer knows them): given back here
  local recorded = tonumber(redis.call('ZSCORE', KEYS[4], source) or 'nil')
  if recorded and recorded ~= weight then
    redis.call('DECRBY', KEYS[2], recorded - weight)
    redis.call('ZADD', KEYS[4], weight, source)
  end
end
local function consistent()
  -- the totals agree with the per-source ones (they drift when Redis loses a key by eviction, or
  -- hold data parked before the per-source totals existed)
  local count, size = 0, 0
  for i, value in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')) do
    if i % 2 == 0 then count = count + tonumber(value) end
  end
  for i, value in ipairs(redis.call('ZRANGE', KEYS[4], 0, -1, 'WITHSCORES')) do
    if i % 2 == 0 then size = size + tonumber(value) end
  end
  return count == tonumber(redis.call('GET', KEYS[1]) or '0') and size == tonumber(redis.call('GET', KEYS[2]) or '0')
end
local function repair()
  -- count every total again from what each source really holds; members whose payload is gone leave
  local count, size = 0, 0
  redis.call('DEL', KEYS[3], KEYS[4])
  for _, name in ipairs(redis.call('SMEMBERS', KEYS[5])) do
    local zset, data, tries = base .. ':src:' .. name, base .. ':data:' .. name, base .. ':tries:' .. name
    local held, weight = 0, 0
    for _, id in ipairs(redis.call('ZRANGE', zset, 0, -1)) do
      local payload = redis.call('HGET', data, id)
      if payload then
        held = held + 1
        weight = weight + string.len(payload) + tonumber(ARGV[2])
      else
        redis.call('ZREM', zset, id)
        redis.call('HDEL', tries, id)
      end
    end
    if held > 0 then
      rebuild(name)
      redis.call('ZADD', KEYS[3], held, name)
      redis.call('ZADD', KEYS[4], weight, name)
    else
      redis.call('DEL', zset, data, tries, base .. ':size:' .. name)
    end
    count, size = count + held, size + weight
  end
  redis.call('SET', KEYS[1], count)
  redis.call('SET', KEYS[2], size)
end
"""
PARK = (
    _DROP
    + """
local source, id, score, payload = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local per, most, room = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local size = string.len(payload) + tonumber(ARGV[2])
if size > room then return {'full'} end
local own, tries = base .. ':src:' .. source, base .. ':tries:' .. source
if redis.call('HEXISTS', base .. ':data:' .. source, id) == 1 then
  -- another attempt of a parked delivery: counted once, its signature kept beside the earlier ones
  local held = redis.call('HGET', tries, id) or ''
  if not string.find(';' .. held, ';' .. ARGV[11], 1, true) then
    local list = {}
    for token in string.gmatch(held, '[^;]+') do table.insert(list, token) end
    table.insert(list, ARGV[10])
    if #list > tonumber(ARGV[12]) then table.remove(list, 2) end  -- the first, and the latest others
    redis.call('HSET', tries, id, table.concat(list, ';'))
    redis.call('ZADD', own, score, id)
    local held_payload = redis.call('HGET', base .. ':data:' .. source, id)
    sized(source, id, string.len(held_payload) + tonumber(ARGV[2]), score)  -- now its newest, as in `own`
  end
  return {'parked'}
end
drop(source, id)  -- a member whose payload is gone
local answer, repaired = {'parked'}, false
for _ = 1, 100000 do
  local victim, capped, by_bytes = nil, false, false
  if redis.call('ZCARD', own) >= per then
    victim, capped = source, true  -- its own cap: no total involved
  else
    local count = tonumber(redis.call('GET', KEYS[1]) or '0')
    if count >= most then
      victim = redis.call('ZREVRANGE', KEYS[3], 0, 0)[1]
    elseif tonumber(redis.call('GET', KEYS[2]) or '0') + size > room then
      victim, by_bytes = redis.call('ZREVRANGE', KEYS[4], 0, 0)[1], true
    else
      redis.call('HSET', base .. ':data:' .. source, id, payload)
      redis.call('HSET', tries, id, ARGV[10])
      redis.call('ZADD', own, score, id)
      sized(source, id, size, score)
      redis.call('INCR', KEYS[1])
      redis.call('INCRBY', KEYS[2], size)
      redis.call('ZINCRBY', KEYS[3], 1, source)
      redis.call('ZINCRBY', KEYS[4], size, source)
      redis.call('SADD', KEYS[5], source)
      return answer
    end
  end
  local chosen = victim and redis.call('ZRANGE', base .. ':src:' .. victim, 0, 0)[1]
  if chosen and by_bytes then
    -- past the bytes bound, the oldest of the source's largest size class (parking.py says why)
    local sizes = base .. ':size:' .. victim
    if redis.call('ZCARD', sizes) < redis.call('ZCARD', base .. ':src:' .. victim) then rebuild(victim) end
    local largest = redis.call('ZREVRANGE', sizes, 0, 0)[1]
    while largest and not redis.call('ZSCORE', base .. ':src:' .. victim, largest) do
      redis.call('ZREM', sizes, largest)  -- gone by another way (an eviction by Redis): never picked again
      largest = redis.call('ZREVRANGE', sizes, 0, 0)[1]
    end
    chosen = largest or chosen
  end
  if chosen and (repaired or capped or consistent()) then
    if drop(victim, chosen)[2] == 1 then table.insert(answer, victim) end  -- gone already (a rebuild's): not counted
  else
    -- the totals name entries no source holds, or disagree with the per-source ones (keys lost to
    -- an eviction by Redis, data parked before these keys existed): count them all again, once;
    -- still no room to make then means full
    if repaired then return {'full'} end
    repaired = true
    repair()
  end
end
return {'full'}
"""
)
REMOVE = (
    _DROP
    + """
local removed, dropped = 0, 0
for i = 4, #ARGV do
  local result = drop(ARGV[3], ARGV[i])
  removed = removed + result[1]
  dropped = dropped + result[2]
end
return {removed, dropped}
"""
)
"""Removes ids from the sorted set and the hash. A member whose payload is gone (an `allkeys-*`
eviction, a manual HDEL) is removed too. Answers {removed with a payload, removed from the sorted set}."""
REPAIR = (
    _DROP
    + """
if consistent() then return 0 end
repair()
return 1
"""
)
"""The attendant's check: counts every total again when they disagree. Answers 1 if it did."""
