//! The Lua scripts of the Redis backend: each applies one of `control`'s rules to one
//! stream atomically. Every script touches only the keys of one stream (`{id}`-tagged),
//! so the backend runs on Redis Cluster too. Each returns an array whose first element
//! is `ok` or the name of the refusal, followed by its values.
//!
//! A stream's metadata hash: `o` owner, `k` kind, `q` request, `s` state, `c` created,
//! `u` updated, `l` last seq, `f` first seq, `h` / `t` / `e` the lease's holder, token and
//! expiry, `n` the fence. Its records: a Redis Stream whose entry ids are `<seq>-0` (so
//! `XADD` itself refuses an id at or below the top), with fields `r` (the record's JSON)
//! and `t` (its append time, for trims by age).

/// KEYS: meta. ARGV: owner, kind, request, now, holder ('' for none), ttl_ms.
pub(super) const CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
redis.call('HSET', KEYS[1], 'o', ARGV[1], 'k', ARGV[2], 'q', ARGV[3], 's', 0,
  'c', ARGV[4], 'u', ARGV[4], 'l', 0, 'f', 1, 'n', 0)
if ARGV[5] ~= '' then
  local exp = tonumber(ARGV[4]) + tonumber(ARGV[6])
  redis.call('HSET', KEYS[1], 'h', ARGV[5], 't', 1, 'e', exp, 'n', 1)
  return {'ok', 1, exp}
end
return {'ok', 0, 0}
";

/// KEYS: meta, records. ARGV: token, now, channel, id, then the records' JSON. A pending
/// cancel request (`x`) is answered instead, once.
pub(super) const APPEND: &str = r"
local m = redis.call('HMGET', KEYS[1], 's', 't', 'l', 'x')
if not m[1] then return {'notfound'} end
if m[1] ~= '0' then return {'finished', m[1]} end
if m[2] ~= ARGV[1] then return {'stale', m[2] or ''} end
if m[4] then
  redis.call('HDEL', KEYS[1], 'x')
  return {'cancel'}
end
local last = tonumber(m[3])
local first = last + 1
for i = 5, #ARGV do
  last = last + 1
  redis.call('XADD', KEYS[2], last .. '-0', 'r', ARGV[i], 't', ARGV[2])
end
redis.call('HSET', KEYS[1], 'l', last, 'u', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4] .. ' ' .. last .. ' 0')
return {'ok', first}
";

/// KEYS: meta, records. ARGV: token, state, now, ttl_ms, channel, id.
pub(super) const FINISH: &str = r"
local m = redis.call('HMGET', KEYS[1], 's', 't', 'l')
if not m[1] then return {'notfound'} end
if m[1] ~= '0' then return {'finished', m[1]} end
if m[2] ~= ARGV[1] then return {'stale', m[2] or ''} end
redis.call('HSET', KEYS[1], 's', ARGV[2], 'u', ARGV[3])
redis.call('HDEL', KEYS[1], 'h', 't', 'e')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PUBLISH', ARGV[5], ARGV[6] .. ' ' .. m[3] .. ' 1')
return {'ok'}
";

/// KEYS: meta. ARGV: holder, ttl_ms, now, a dead holder whose lease may be taken ('').
pub(super) const ACQUIRE: &str = r"
local m = redis.call('HMGET', KEYS[1], 's', 'h', 'e', 'n')
if not m[1] then return {'notfound'} end
if m[1] ~= '0' then return {'finished', m[1]} end
if m[2] and tonumber(m[3]) > tonumber(ARGV[3]) and m[2] ~= ARGV[4] then
  return {'held', m[2], m[3]}
end
local fence = tonumber(m[4]) + 1
local exp = tonumber(ARGV[3]) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'h', ARGV[1], 't', fence, 'e', exp, 'n', fence, 'u', ARGV[3])
return {'ok', fence, exp}
";

/// KEYS: meta. ARGV: token, ttl_ms, now. A pending cancel request is answered, once.
pub(super) const RENEW: &str = r"
local m = redis.call('HMGET', KEYS[1], 's', 't', 'h', 'x')
if not m[1] then return {'notfound'} end
if m[1] ~= '0' then return {'finished', m[1]} end
if m[2] ~= ARGV[1] then return {'stale', m[2] or ''} end
if m[4] then
  redis.call('HDEL', KEYS[1], 'x')
  return {'cancel'}
end
local exp = tonumber(ARGV[3]) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'e', exp, 'u', ARGV[3])
return {'ok', m[3], exp}
";

/// KEYS: meta. ARGV: token, now.
pub(super) const RELEASE: &str = r"
local m = redis.call('HMGET', KEYS[1], 's', 't')
if not m[1] then return {'notfound'} end
if m[1] ~= '0' then return {'finished', m[1]} end
if m[2] ~= ARGV[1] then return {'stale', m[2] or ''} end
redis.call('HDEL', KEYS[1], 'h', 't', 'e')
redis.call('HSET', KEYS[1], 'u', ARGV[2])
return {'ok'}
";

/// KEYS: meta, records. ARGV: after, upto, max bytes. The first kept seq and the records
/// between, as many as fit `max bytes` of record JSON (at least one): the cursor's
/// `ChunkBudget` (the caller bounds the count by `upto`). It reads in pages, the first of
/// one entry and each next one as large as the entries seen so far say still fits, so a
/// page of large records never loads much more than the chunk.
pub(super) const FETCH: &str = r"
local f = redis.call('HGET', KEYS[1], 'f')
if not f then return {'notfound'} end
local from = math.max(tonumber(ARGV[1]), tonumber(f) - 1) + 1
local upto = tonumber(ARGV[2])
local budget = tonumber(ARGV[3])
local out = {}
local bytes = 0
local page = 1
while from <= upto do
  local entries = redis.call('XRANGE', KEYS[2], from .. '-0', upto .. '-0', 'COUNT', page)
  if #entries == 0 then break end
  for _, entry in ipairs(entries) do
    local size = 0
    local fields = entry[2]
    for i = 1, #fields, 2 do if fields[i] == 'r' then size = #fields[i + 1] end end
    if #out > 0 and bytes + size > budget then return {'ok', f, out} end
    out[#out + 1] = entry
    bytes = bytes + size
    from = tonumber(string.match(entry[1], '^(%d+)')) + 1
  end
  if #entries < page then break end
  page = math.max(1, math.min(128, math.floor((budget - bytes) * #out / math.max(bytes, 1))))
end
return {'ok', f, out}
";

/// KEYS: meta, records. ARGV: keep_after, max_records (-1: none), age cutoff ms (-1:
/// none). Deletes a prefix; returns the new first kept seq.
pub(super) const TRIM: &str = r"
local m = redis.call('HMGET', KEYS[1], 'l', 'f')
if not m[1] then return {'notfound'} end
local last = tonumber(m[1])
local first = tonumber(m[2])
local target = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
if max >= 0 and last - max > target then target = last - max end
local cutoff = tonumber(ARGV[3])
if cutoff >= 0 then
  local from = math.max(first, target + 1)
  local young = false
  while not young and from <= last do
    local entries = redis.call('XRANGE', KEYS[2], from .. '-0', '+', 'COUNT', 100)
    if #entries == 0 then break end
    for _, entry in ipairs(entries) do
      local fields = entry[2]
      local t = 0
      for i = 1, #fields, 2 do if fields[i] == 't' then t = tonumber(fields[i + 1]) end end
      local seq = tonumber(string.match(entry[1], '^(%d+)'))
      if t < cutoff then
        if seq > target then target = seq end
      else
        young = true
        break
      end
      from = seq + 1
    end
  end
end
if target > last then target = last end
local kept = target + 1
if kept > first then
  redis.call('XTRIM', KEYS[2], 'MINID', kept .. '-0')
  redis.call('HSET', KEYS[1], 'f', kept)
  first = kept
end
return {'ok', first}
";

/// KEYS: the idempotency key. ARGV: stream id. Deletes the key if it maps to that stream.
pub(super) const RELEASE_KEY: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1] + 1) == ARGV[1] .. ' ' then redis.call('DEL', KEYS[1]) end
return {'ok'}
";

/// KEYS: meta. Marks an open stream's cancel request for its writer.
pub(super) const CANCEL: &str = r"
local s = redis.call('HGET', KEYS[1], 's')
if not s then return {'notfound'} end
if s ~= '0' then return {'finished', s} end
redis.call('HSET', KEYS[1], 'x', 1)
return {'ok'}
";
