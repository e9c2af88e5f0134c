-- Resolve linked identifier components to canonical customer ids, merging customers when
-- a component joins several of them. One call per batch; atomic.
--
-- ARGV[1]  key prefix (e.g. "oc:")
-- ARGV[2]  JSON {"c": [[ident, ...], ...], "max": N, "limits": {type: n}, "why": "...",
--                "ts": ms}
--          each component lists "<type>:<value>" identifiers, strongest first
--
-- Keys: <p>id:<ident> -> canonical id; <p>members:<cid> set of identifiers;
--       <p>seq counter; <p>merges stream; <p>stats:* counters.
-- Canonical ids are "C" + 12 digits from the counter, so the smallest is the oldest: the
-- survivor of a merge is always the oldest customer (same inputs, same survivor).
--
-- Returns one canonical id per component, or "" where the component was refused
-- (runaway size or a per-type limit) and nothing was linked.
local prefix = ARGV[1]
local p = cjson.decode(ARGV[2])
local out = {}

local function kind(ident) return string.match(ident, '^([^:]+):') end

for ci, comp in ipairs(p.c) do
  local canon, order, fresh = {}, {}, {}
  for _, ident in ipairs(comp) do
    local c = redis.call('GET', prefix .. 'id:' .. ident)
    if c then
      if not canon[c] then canon[c] = true; order[#order + 1] = c end
    else
      fresh[#fresh + 1] = ident
    end
  end
  table.sort(order)
  -- Guard rails on the would-be merged customer.
  local counts, total = {}, #fresh
  for _, ident in ipairs(fresh) do
    local k = kind(ident); counts[k] = (counts[k] or 0) + 1
  end
  for _, c in ipairs(order) do
    local members = redis.call('SMEMBERS', prefix .. 'members:' .. c)
    total = total + #members
    for _, m in ipairs(members) do
      local k = kind(m); counts[k] = (counts[k] or 0) + 1
    end
  end
  local refused = nil
  if total > p.max then refused = 'runaway' end
  if not refused then
    for k, n in pairs(counts) do
      local lim = p.limits[k]
      if lim and n > lim then refused = 'limit:' .. k; break end
    end
  end
  if refused then
    redis.call('INCR', prefix .. 'stats:refused')
    redis.call('XADD', prefix .. 'refusals', 'MAXLEN', '~', 10000, '*',
      'reason', refused, 'identifiers', table.concat(comp, ' '), 'why', p.why,
      'ts', tostring(p.ts))
    out[ci] = ''
  else
    local survivor
    if #order == 0 then
      survivor = string.format('C%012d', redis.call('INCR', prefix .. 'seq'))
      redis.call('INCR', prefix .. 'stats:customers')
    else
      survivor = order[1]
    end
    local skey = prefix .. 'members:' .. survivor
    for i = 2, #order do
      local loser = order[i]
      local lkey = prefix .. 'members:' .. loser
      for _, m in ipairs(redis.call('SMEMBERS', lkey)) do
        redis.call('SET', prefix .. 'id:' .. m, survivor)
        redis.call('SADD', skey, m)
      end
      redis.call('DEL', lkey)
      redis.call('XADD', prefix .. 'merges', '*', 'survivor', survivor, 'merged', loser,
        'via', table.concat(comp, ' '), 'why', p.why, 'ts', tostring(p.ts))
      redis.call('INCR', prefix .. 'stats:merges')
      redis.call('DECR', prefix .. 'stats:customers')
    end
    for _, ident in ipairs(fresh) do
      redis.call('SET', prefix .. 'id:' .. ident, survivor)
      redis.call('SADD', skey, ident)
    end
    if #fresh > 0 then redis.call('INCRBY', prefix .. 'stats:identifiers', #fresh) end
    out[ci] = survivor
  end
end
return out
