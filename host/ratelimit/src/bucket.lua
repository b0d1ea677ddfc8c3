-- One hit against every token bucket of a request, atomically: the hit takes
-- `hits` tokens from each bucket, or, when any bucket has fewer, takes nothing.
-- The same arithmetic as the tier-limiter's local policy: capacity tokens when new,
-- refilled continuously at `rate` tokens per microsecond, never above capacity.
--
-- KEYS[i]: the bucket of descriptor i (a hash: t = tokens, at = microseconds).
-- ARGV[1]: hits; ARGV[2i], ARGV[2i+1]: capacity and rate of bucket i. Negative hits
-- give tokens back (a request refused in another cluster slot), never above capacity.
-- The clock is Redis's own, so every service instance and gateway node shares it.
--
-- Returns { allowed (1|0), then per bucket: floor(tokens left), microseconds until
-- `hits` would fit (0 when they fit), microseconds until the bucket is full }.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local hits = tonumber(ARGV[1])
local tokens = {}
local allowed = true
for i = 1, #KEYS do
  local capacity = tonumber(ARGV[2 * i])
  local rate = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', KEYS[i], 't', 'at')
  local t = capacity
  if state[1] and state[2] then
    local elapsed = math.max(0, now - tonumber(state[2]))
    t = math.min(capacity, tonumber(state[1]) + elapsed * rate)
  end
  tokens[i] = t
  if t < hits then
    allowed = false
  end
end
local out = { allowed and 1 or 0 }
for i = 1, #KEYS do
  local capacity = tonumber(ARGV[2 * i])
  local rate = tonumber(ARGV[2 * i + 1])
  local t = tokens[i]
  if allowed then
    t = math.min(capacity, t - hits)
    local full_ms = math.ceil((capacity - t) / rate / 1000)
    redis.call('HSET', KEYS[i], 't', t, 'at', now)
    -- An idle bucket is full again after full_ms: then it is as good as none.
    redis.call('PEXPIRE', KEYS[i], full_ms + 1000)
  end
  local wait = 0
  if t < hits then
    wait = math.ceil((hits - t) / rate)
  end
  out[#out + 1] = math.floor(t)
  out[#out + 1] = wait
  out[#out + 1] = math.ceil((capacity - t) / rate)
end
return out
