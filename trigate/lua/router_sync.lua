-- The router's sync: one round trip carries this process's deployment news and counts to
-- the fleet and reads the fleet's view back (trigate/router/fleet_sync.py explains it).
-- KEYS: the live processes' hash, then six keys per deployment (`_KEYS` there).
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local minute = tostring(math.floor(tonumber(clock[1]) / 60))
local me, stale, smoothing = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local usage_ttl, latency_ttl, open_ttl = ARGV[4], ARGV[5], tonumber(ARGV[6])

redis.call('HSET', KEYS[1], me, now_ms)
redis.call('PEXPIRE', KEYS[1], usage_ttl)
local live = {}
local beats = redis.call('HGETALL', KEYS[1])
for i = 1, #beats, 2 do
  if now_ms - tonumber(beats[i + 1]) <= stale then
    live[beats[i]] = true
  else
    redis.call('HDEL', KEYS[1], beats[i])
  end
end

local function smooth(key, field, count, mean)
  if count == 0 then return end
  local old = redis.call('HGET', key, field)
  local new = mean
  if old then
    old = tonumber(old)
    new = old + (1 - (1 - smoothing) ^ count) * (mean - old)
  end
  redis.call('HSET', key, field, tostring(new))
  redis.call('PEXPIRE', key, latency_ttl)
end

local function release(probe)
  if redis.call('GET', probe) == me then redis.call('DEL', probe) end
end

-- Per deployment, six keys (see _KEYS) and eleven arguments: requests and tokens to add,
-- requests in flight here, latency samples and mean, ttft samples and mean, granted
-- requests given back and their minute, cooldown ms left, the breaker's verdict.
local out = {}
for d = 0, (#KEYS - 1) / 6 - 1 do
  local use, busy, latency, cool, open, probe =
    KEYS[d * 6 + 2], KEYS[d * 6 + 3], KEYS[d * 6 + 4],
    KEYS[d * 6 + 5], KEYS[d * 6 + 6], KEYS[d * 6 + 7]
  local a = 6 + d * 11

  if redis.call('HGET', use, 'm') ~= minute then
    redis.call('HSET', use, 'm', minute, 'n', 0, 't', 0)
  end
  local requests = redis.call('HINCRBY', use, 'n', ARGV[a + 1])
  if ARGV[a + 8] ~= '0' and ARGV[a + 9] == minute then
    requests = redis.call('HINCRBY', use, 'n', -tonumber(ARGV[a + 8]))
  end
  local tokens = redis.call('HINCRBY', use, 't', ARGV[a + 2])
  redis.call('PEXPIRE', use, usage_ttl)

  if ARGV[a + 3] == '0' then
    redis.call('HDEL', busy, me)
  else
    redis.call('HSET', busy, me, ARGV[a + 3])
    redis.call('PEXPIRE', busy, usage_ttl)
  end
  local others = 0
  local counts = redis.call('HGETALL', busy)
  for i = 1, #counts, 2 do
    if live[counts[i]] then
      if counts[i] ~= me then others = others + tonumber(counts[i + 1]) end
    else
      redis.call('HDEL', busy, counts[i])
    end
  end

  smooth(latency, 'latency', tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]))
  smooth(latency, 'ttft', tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7]))

  local cool_ms, verdict = tonumber(ARGV[a + 10]), ARGV[a + 11]
  if verdict == 'opened' then
    if cool_ms > 0 and redis.call('PTTL', cool) < cool_ms then
      redis.call('SET', cool, me, 'PX', cool_ms)
    end
    redis.call('SET', open, me, 'PX', math.max(redis.call('PTTL', cool), 0) + open_ttl)
    release(probe)
  elseif verdict == 'closed' then
    redis.call('DEL', cool, open, probe)
  elseif verdict == 'released' then
    release(probe)
  end

  local held = redis.call('GET', probe)
  out[#out + 1] = requests
  out[#out + 1] = tokens
  out[#out + 1] = others
  out[#out + 1] = redis.call('HGET', latency, 'latency') or ''
  out[#out + 1] = redis.call('HGET', latency, 'ttft') or ''
  out[#out + 1] = math.max(redis.call('PTTL', cool), 0)
  out[#out + 1] = redis.call('EXISTS', open)
  out[#out + 1] = held or ''
end
return out
