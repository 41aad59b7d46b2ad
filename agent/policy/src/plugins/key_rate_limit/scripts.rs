//! The cluster-wide algorithms, as Lua run atomically inside Redis: the same decisions as
//! [`super::algorithm`], on Redis's clock (`TIME`) so that every agent counts on one clock.
//!
//! Both take `KEYS[1]` (one hash per policy and key, so a Redis Cluster needs no hash tags)
//! and `ARGV = {requests, per in microseconds}`, and return `{allowed (0 or 1), remaining,
//! reset (µs), retry after (µs)}`. Each hash stores the quota it was counted under, so a
//! quota change is reinterpreted the way the local algorithms do it, and expires once it
//! holds nothing a fresh key would not. Redis numbers are doubles: intervals that are not
//! whole microseconds carry a tolerance of a millionth of an interval.

use std::sync::LazyLock;

use super::redis::Script;

pub static GCRA: LazyLock<Script> = LazyLock::new(|| Script::new(GCRA_LUA));
pub static SLIDING_WINDOW: LazyLock<Script> = LazyLock::new(|| Script::new(SLIDING_WINDOW_LUA));

const GCRA_LUA: &str = r#"-- fleetgate key-rate-limit: GCRA
if redis.replicate_commands then redis.replicate_commands() end
local n = tonumber(ARGV[1])
local per = tonumber(ARGV[2])
local t = per / n
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local saved = redis.call('HMGET', KEYS[1], 'tat', 't')
local tat = tonumber(saved[1]) or now
local old_t = tonumber(saved[2]) or t
if tat < now then tat = now end
if old_t ~= t then
  tat = now + math.min((tat - now) / old_t * t, per)
end
local eps = t * 1e-6
local after = tat + t
local allowed = 0
local retry = 0
if after - now <= per + eps then
  allowed = 1
  tat = after
  redis.call('HSET', KEYS[1], 'tat', tat, 't', t)
  redis.call('PEXPIRE', KEYS[1], math.ceil((tat - now) / 1000) + 1000)
else
  retry = after - now - per
end
local remaining = math.floor((per - (tat - now)) / t + 1e-6)
if remaining < 0 then remaining = 0 end
return {allowed, remaining, math.ceil(tat - now), math.ceil(retry)}
"#;

const SLIDING_WINDOW_LUA: &str = r#"-- fleetgate key-rate-limit: sliding window
if redis.replicate_commands then redis.replicate_commands() end
local n = tonumber(ARGV[1])
local per = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local w = math.floor(now / per)
local e = now - w * per
local saved = redis.call('HMGET', KEYS[1], 'w', 'cur', 'prev', 'per')
local sw = tonumber(saved[1])
local cur, prev = 0, 0
if sw ~= nil then
  local sper = tonumber(saved[4]) or per
  local scur = tonumber(saved[2]) or 0
  local sprev = tonumber(saved[3]) or 0
  if sper ~= per then
    local ow = math.floor(now / sper)
    local oe = now - ow * sper
    local oc, op = 0, 0
    if sw == ow then oc, op = scur, sprev elseif sw + 1 == ow then op = scur end
    cur = math.ceil((op * (sper - oe) + oc * sper) / sper)
  elseif sw == w then
    cur, prev = scur, sprev
  elseif sw + 1 == w then
    prev = scur
  end
end
local weighted = prev * (per - e)
local allowed = 0
if weighted + (cur + 1) * per <= n * per then
  allowed = 1
  cur = cur + 1
end
redis.call('HSET', KEYS[1], 'w', w, 'cur', cur, 'prev', prev, 'per', per)
redis.call('PEXPIRE', KEYS[1], math.ceil(2 * per / 1000) + 1000)
local remaining = math.floor((n * per - weighted - cur * per) / per)
if remaining < 0 then remaining = 0 end
local reset = 0
if cur > 0 then reset = 2 * per - e elseif prev > 0 then reset = per - e end
local retry = 0
if allowed == 0 then
  local x = per
  if cur < n and prev > 0 then
    x = per - math.min(math.floor((n - cur - 1) * per / prev), per)
  end
  if x < per then
    retry = math.max(x - e, 0)
  else
    local y = 0
    if cur > 0 then y = per - math.min(math.floor((n - 1) * per / cur), per) end
    retry = (per - e) + y
  end
end
return {allowed, remaining, reset, retry}
"#;
