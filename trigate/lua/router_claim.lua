-- The request path's one round trip, only for a half-open deployment or an rpm-capped one
-- whose grant is spent: take the probe lease, then requests from the cap. Answers
-- {granted, the minute's granted total, the minute, ms left in it}; granted is -1 when
-- another process probes, -2 when the cap is reached, 0 for a lease alone.
local use, probe, processes = KEYS[1], KEYS[2], KEYS[3]
local me, cap, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
if lease > 0 and not redis.call('SET', probe, me, 'NX', 'PX', lease) then
  return {-1, 0, 0, 0}
end
if cap < 0 then return {0, 0, 0, 0} end
local clock = redis.call('TIME')
local seconds = tonumber(clock[1])
local minute = math.floor(seconds / 60)
local left_ms = (minute + 1) * 60000 - seconds * 1000 - math.floor(tonumber(clock[2]) / 1000)
if redis.call('HGET', use, 'm') ~= tostring(minute) then
  redis.call('HSET', use, 'm', minute, 'n', 0, 't', 0)
end
local taken = tonumber(redis.call('HGET', use, 'n'))
if taken >= cap then
  if lease > 0 then redis.call('DEL', probe) end
  return {-2, taken, minute, left_ms}
end
local live = math.max(redis.call('HLEN', processes), 1)
local grant = math.floor((cap - taken) / (4 * live))
grant = math.max(1, math.min(grant, tonumber(ARGV[5])))
redis.call('PEXPIRE', use, ARGV[4])
return {grant, redis.call('HINCRBY', use, 'n', grant), minute, left_ms}
