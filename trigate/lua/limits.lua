-- The fleet's rate limits and budgets (trigate/limits.py runs it).
--
-- They are changed by one script, run with a batch of operations: the
-- admissions and settles of requests that arrived together, each atomic, in order.
-- ARGV: the operation count; then for each operation its kind ("admit" or "settle"),
-- its key count, its argument count, and its arguments. KEYS: each operation's keys.
-- Returns each operation's answer.
--
-- admit (an admission):
-- KEYS: for each rate scope its window (a hash of requests and tokens) and its parallel
-- slots (a sorted set of lease ids by expiry); then for each budget its counter (a hash of
-- the budget `window` it counts, `spent`, `reserved`, and each reservation's amount under
-- its lease id) and its reservations (a sorted set of lease ids by expiry).
-- ARGV: now, lease id, lease expiry, prompt tokens, scope count, budget count, the most
-- the request may cost; then rpm, tpm and parallel of each scope (-1: none); then
-- max_budget, the spend the store knows (a floor for the counter) and the window (its
-- end, 0 if it has none) of each budget; then the seconds idle counters live. A later
-- window than the counter's starts it afresh.
-- Returns {"ok", requests, tokens} (the first scope's window, this request taken), or
-- {"rpm"|"tpm"|"parallel", scope index}, or {"budget", budget index, spent, reserved};
-- a refusal takes nothing.
--
-- settle (a request's end):
-- KEYS: as admit's. ARGV: lease id, the change to the window's tokens (0 once the window
-- has passed), the cost to bill, scope count, budget count. A budget is billed the cost
-- only with its reservation, which goes once: settling twice (a settle retried because
-- its answer never came) or settling what Redis never admitted changes nothing. A
-- reservation that expired, or whose counter was started afresh, is billed through the
-- store (the counter's floor) instead.
local function admit(K, A)
  local now, lease, expiry = tonumber(ARGV[A + 1]), ARGV[A + 2], tonumber(ARGV[A + 3])
  local tokens, scopes = tonumber(ARGV[A + 4]), tonumber(ARGV[A + 5])
  local budgets = tonumber(ARGV[A + 6])
  local most, b0, r0 = tonumber(ARGV[A + 7]), 2 * scopes, 7 + 3 * scopes
  local ttl = ARGV[A + r0 + 3 * budgets + 1]
  local spent, reserved = {}, {}
  for j = 1, budgets do
    local counter, holds = KEYS[K + b0 + 2 * j - 1], KEYS[K + b0 + 2 * j]
    local limit, floor = tonumber(ARGV[A + r0 + 3 * j - 2]), tonumber(ARGV[A + r0 + 3 * j - 1])
    local window = tonumber(redis.call('HGET', counter, 'window') or '-1')
    if tonumber(ARGV[A + r0 + 3 * j]) > window then
      redis.call('DEL', counter, holds)
      redis.call('HSET', counter, 'window', ARGV[A + r0 + 3 * j])
    end
    local expired = redis.call('ZRANGEBYSCORE', holds, '-inf', now)
    if #expired > 0 then
      local freed = 0
      for _, id in ipairs(expired) do
        freed = freed + tonumber(redis.call('HGET', counter, id) or '0')
        redis.call('HDEL', counter, id)
      end
      redis.call('ZREMRANGEBYSCORE', holds, '-inf', now)
      redis.call('HINCRBYFLOAT', counter, 'reserved', -freed)
    end
    local state = redis.call('HMGET', counter, 'spent', 'reserved')
    spent[j] = tonumber(state[1] or '0')
    if floor > spent[j] then
      spent[j] = floor
      redis.call('HSET', counter, 'spent', ARGV[A + r0 + 3 * j - 1])
    end
    reserved[j] = math.max(tonumber(state[2] or '0'), 0)
    if spent[j] + reserved[j] >= limit - 1e-9 then
      local left = {string.format('%.17g', spent[j]), string.format('%.17g', reserved[j])}
      return {'budget', j - 1, left[1], left[2]}
    end
  end
  for i = 1, scopes do
    local rpm, tpm = tonumber(ARGV[A + 5 + 3 * i]), tonumber(ARGV[A + 6 + 3 * i])
    local parallel = tonumber(ARGV[A + 7 + 3 * i])
    local counts = redis.call('HMGET', KEYS[K + 2 * i - 1], 'requests', 'tokens')
    if rpm >= 0 and tonumber(counts[1] or '0') + 1 > rpm then return {'rpm', i - 1} end
    if tpm >= 0 and tonumber(counts[2] or '0') + tokens > tpm then return {'tpm', i - 1} end
    if parallel >= 0 then
      redis.call('ZREMRANGEBYSCORE', KEYS[K + 2 * i], '-inf', now)
      if redis.call('ZCARD', KEYS[K + 2 * i]) + 1 > parallel then return {'parallel', i - 1} end
    end
  end
  local answer = {'ok', 0, 0}
  for i = 1, scopes do
    local window, slots = KEYS[K + 2 * i - 1], KEYS[K + 2 * i]
    local requests = redis.call('HINCRBY', window, 'requests', 1)
    local used = redis.call('HINCRBY', window, 'tokens', tokens)
    redis.call('EXPIRE', window, 120)
    if i == 1 then answer[2], answer[3] = requests, used end
    if tonumber(ARGV[A + 7 + 3 * i]) >= 0 then
      redis.call('ZADD', slots, expiry, lease)
      redis.call('EXPIRE', slots, ttl)
    end
  end
  for j = 1, budgets do
    local counter, holds = KEYS[K + b0 + 2 * j - 1], KEYS[K + b0 + 2 * j]
    local amount = math.min(most, tonumber(ARGV[A + r0 + 3 * j - 2]) - spent[j] - reserved[j])
    local text = string.format('%.17g', amount)
    redis.call('ZADD', holds, expiry, lease)
    redis.call('HSET', counter, lease, text)
    redis.call('HINCRBYFLOAT', counter, 'reserved', text)
    redis.call('EXPIRE', counter, ttl)
    redis.call('EXPIRE', holds, ttl)
  end
  return answer
end

local function settle(K, A)
  local lease, delta, cost = ARGV[A + 1], tonumber(ARGV[A + 2]), ARGV[A + 3]
  local scopes, budgets = tonumber(ARGV[A + 4]), tonumber(ARGV[A + 5])
  for i = 1, scopes do
    if delta ~= 0 and redis.call('EXISTS', KEYS[K + 2 * i - 1]) == 1 then
      redis.call('HINCRBY', KEYS[K + 2 * i - 1], 'tokens', delta)
    end
    redis.call('ZREM', KEYS[K + 2 * i], lease)
  end
  for j = 1, budgets do
    local counter = KEYS[K + 2 * scopes + 2 * j - 1]
    local amount = redis.call('HGET', counter, lease)
    if amount then
      redis.call('HDEL', counter, lease)
      redis.call('ZREM', KEYS[K + 2 * scopes + 2 * j], lease)
      redis.call('HINCRBYFLOAT', counter, 'reserved', '-' .. amount)
      if tonumber(cost) > 0 then redis.call('HINCRBYFLOAT', counter, 'spent', cost) end
    end
  end
  return 1
end

local answers, K, A = {}, 0, 1
for n = 1, tonumber(ARGV[1]) do
  local kind, keys, args = ARGV[A + 1], tonumber(ARGV[A + 2]), tonumber(ARGV[A + 3])
  if kind == 'admit' then answers[n] = admit(K, A + 3) else answers[n] = settle(K, A + 3) end
  K, A = K + keys, A + 3 + args
end
return answers
