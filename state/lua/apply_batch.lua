-- Apply one batch atomically: resolve its identity components to canonical customers
-- (creating and merging customers), apply their profile deltas, record refusals, and
-- advance the source offsets. Offset fencing makes replays no-ops and detects lost state.
--
-- ARGV[1]  key prefix (e.g. "oc:")
-- ARGV[2]  JSON {"parts": [[name, floor, max], ...], "c": [row, ...], "erasures": version,
--                "refusals": [[reason, identifiers, why], ...], "suppressed": n,
--                "limits": {type: n}, "max": n, "now": ms}
--          floor = the last offset this worker knows was applied (-1: none)
--          row   = [identifiers, link 0|1, why, sums, mins, maxs, logs, lww, views, bought,
--                   cart, cart_clear_ms]   (operators/batch.py, operators/profile.py)
-- ARGV[3]  recent views kept, ARGV[4] cart entries kept, ARGV[5] recently bought kept
--
-- Returns {"OK", new customers, merges, identifiers linked, refusals}
--       | {"REGRESSED", part, stored, floor}       Redis lost writes: nothing written
--       | {"STALE", part, stored, ...}              Redis is ahead: nothing written
--       | {"ERASURES", version}                     erasures changed: nothing written
--       | {"REFUSED", row index, reason, ...}       links the guard rails refuse: nothing
--                                                   written; the caller applies those
--                                                   rows unlinked and records the refusals
-- Canonical ids are "C" + 12 digits from a counter, so the smallest is the oldest: the
-- survivor of a merge is always the oldest customer (same inputs, same survivor).
local prefix = ARGV[1]
local p = cjson.decode(ARGV[2])
local max_views, max_cart, max_bought = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local offsets_key = prefix .. 'offsets'

local function fmt(n) return string.format('%d', n) end
-- integers from JSON arrive as Lua numbers (doubles); from Redis as exact strings
local function int(v) if type(v) == 'number' then return fmt(v) end return v end

-- 1. Fences: offsets, then erasures. Nothing is written before both pass.
local stale = {}
for _, part in ipairs(p.parts) do
  local s = redis.call('HGET', offsets_key, part[1])
  s = s and tonumber(s) or -1
  if s < part[2] then
    return {'REGRESSED', part[1], tostring(s), tostring(part[2])}
  end
  if s > part[2] then
    stale[#stale + 1] = part[1]
    stale[#stale + 1] = tostring(s)
  end
end
if #stale > 0 then
  table.insert(stale, 1, 'STALE')
  return stale
end
local erasures = tonumber(redis.call('GET', prefix .. 'erased:version') or '0')
if erasures ~= p.erasures then return {'ERASURES', tostring(erasures)} end

-- 2. Plan the identity changes on an overlay (still no writes), checking guard rails.
local idmap, mem = {}, {}
local function canon_of(ident)
  local c = idmap[ident]
  if c == nil then
    c = redis.call('GET', prefix .. 'id:' .. ident) or false
    idmap[ident] = c
  end
  return c
end
local function members_of(c)
  local m = mem[c]
  if m == nil then
    m = redis.call('SMEMBERS', prefix .. 'members:' .. c)
    mem[c] = m
  end
  return m
end
local function kind(ident) return string.match(ident, '^([^:]+):') end

local seq0 = tonumber(redis.call('GET', prefix .. 'seq') or '0')
local seq = seq0
local plans, refused = {}, {}
for ri, row in ipairs(p.c) do
  local order, seen, fresh = {}, {}, {}
  for _, ident in ipairs(row[1]) do
    local c = canon_of(ident)
    if c then
      if not seen[c] then seen[c] = true; order[#order + 1] = c end
    else
      fresh[#fresh + 1] = ident
    end
  end
  table.sort(order)
  local reason = nil
  if row[2] == 1 and (#order > 1 or (#fresh > 0 and #order + #fresh > 1)) then
    local counts, total = {}, #fresh
    for _, ident in ipairs(fresh) do
      local k = kind(ident); counts[k] = (counts[k] or 0) + 1
    end
    for _, c in ipairs(order) do
      local ms = members_of(c)
      total = total + #ms
      for _, m in ipairs(ms) do
        local k = kind(m); counts[k] = (counts[k] or 0) + 1
      end
    end
    if total > p.max then reason = 'runaway' end
    if not reason then
      for k, n in pairs(counts) do
        local lim = p.limits[k]
        if lim and n > lim then reason = 'limit:' .. k; break end
      end
    end
  end
  if reason then
    refused[#refused + 1] = tostring(ri - 1)
    refused[#refused + 1] = reason
  else
    local survivor, new = order[1], false
    if not survivor then
      seq = seq + 1
      survivor = string.format('C%012d', seq)
      new = true
      mem[survivor] = {}
    end
    local sm = members_of(survivor)
    local losers = {}
    for i = 2, #order do
      local loser = order[i]
      losers[#losers + 1] = loser
      for _, m in ipairs(members_of(loser)) do
        idmap[m] = survivor
        sm[#sm + 1] = m
      end
      mem[loser] = {}
    end
    for _, f in ipairs(fresh) do
      idmap[f] = survivor
      sm[#sm + 1] = f
    end
    plans[ri] = {survivor, new, losers, fresh}
  end
end
if #refused > 0 then
  table.insert(refused, 1, 'REFUSED')
  return refused
end

-- 3. Writes.
local function min_max(pk, flat, want_min)
  local fields = {}
  for i = 1, #flat, 2 do fields[#fields + 1] = flat[i] end
  local cur = redis.call('HMGET', pk, unpack(fields))
  for i = 1, #fields do
    local v = flat[2 * i]
    local c = cur[i] and tonumber(cur[i])
    if not c or (want_min and v < c) or (not want_min and v > c) then
      redis.call('HSET', pk, fields[i], fmt(v))
    end
  end
end

local function log_add(pk, f, x)
  local c = redis.call('HGET', pk, f)
  if c then
    local a = tonumber(c)
    local hi, lo = math.max(a, x), math.min(a, x)
    x = hi + math.log(1 + 2 ^ (lo - hi)) / math.log(2)
  end
  redis.call('HSET', pk, f, string.format('%.17g', x))
end

-- "<event ms>:<value>": the latest event time wins, a tie goes to the smaller value
local function latest(pk, f, ts, v)
  local c = redis.call('HGET', pk, f)
  if c then
    local cts, cv = string.match(c, '^(%d+):(.*)$')
    cts = tonumber(cts)
    if ts < cts or (ts == cts and v >= cv) then return end
  end
  redis.call('HSET', pk, f, fmt(ts) .. ':' .. v)
end

local function zset_max(key, flat, keep)
  local args = {'ZADD', key, 'GT'}
  for i = 1, #flat, 2 do
    args[#args + 1] = fmt(flat[i + 1])
    args[#args + 1] = flat[i]
  end
  redis.call(unpack(args))
  redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
end

local function cart_ts(f) return tonumber(string.match(f, '|(%d+)$')) end

local function cart_add(ck, flat, clear)
  local old = tonumber(redis.call('HGET', ck, '_clr') or '0')
  if clear > old then
    redis.call('HSET', ck, '_clr', fmt(clear))
    for _, f in ipairs(redis.call('HKEYS', ck)) do
      if f ~= '_clr' and cart_ts(f) <= clear then redis.call('HDEL', ck, f) end
    end
  else
    clear = old
  end
  for k = 1, #flat, 3 do
    if flat[k + 1] > clear then
      redis.call('HINCRBY', ck, flat[k] .. '|' .. fmt(flat[k + 1]), int(flat[k + 2]))
    end
  end
  if redis.call('HLEN', ck) > max_cart + 1 then
    local entries = {}
    for _, f in ipairs(redis.call('HKEYS', ck)) do
      if f ~= '_clr' then entries[#entries + 1] = {cart_ts(f), f} end
    end
    table.sort(entries, function(a, b)
      if a[1] ~= b[1] then return a[1] < b[1] end
      return a[2] < b[2]
    end)
    for k = 1, #entries - max_cart do redis.call('HDEL', ck, entries[k][2]) end
  end
end

local function apply_delta(cid, d, b)
  local pk = prefix .. 'p:' .. cid
  local sums, mins, maxs, logs, lww = d[b], d[b + 1], d[b + 2], d[b + 3], d[b + 4]
  for i = 1, #sums, 2 do redis.call('HINCRBY', pk, sums[i], int(sums[i + 1])) end
  if #mins > 0 then min_max(pk, mins, true) end
  if #maxs > 0 then min_max(pk, maxs, false) end
  for i = 1, #logs, 2 do log_add(pk, logs[i], logs[i + 1]) end
  for i = 1, #lww, 3 do latest(pk, lww[i], lww[i + 1], lww[i + 2]) end
  if #d[b + 5] > 0 then zset_max(prefix .. 'v:' .. cid, d[b + 5], max_views) end
  if #d[b + 6] > 0 then zset_max(prefix .. 'b:' .. cid, d[b + 6], max_bought) end
  if #d[b + 7] > 0 or d[b + 8] > 0 then cart_add(prefix .. 'cart:' .. cid, d[b + 7], d[b + 8]) end
end

-- Move everything of `loser` into `survivor`, combining each field as its kind says.
local function merge_profile(survivor, loser)
  local lp = prefix .. 'p:' .. loser
  local h = redis.call('HGETALL', lp)
  local sums, mins, maxs, logs, lww = {}, {}, {}, {}, {}
  for i = 1, #h, 2 do
    local f, v = h[i], h[i + 1]
    local head = string.match(f, '^([^:]*):')
    local tail = string.match(f, ':([^:]*)$')
    if head == 'cat' then
      logs[#logs + 1] = f; logs[#logs + 1] = tonumber(v)
    elseif head == 'cs' or f == 'hs' then
      local ts, cv = string.match(v, '^(%d+):(.*)$')
      lww[#lww + 1] = f; lww[#lww + 1] = tonumber(ts); lww[#lww + 1] = cv
    elseif head ~= 'loc' and tail == 'f' then
      mins[#mins + 1] = f; mins[#mins + 1] = tonumber(v)
    elseif head ~= 'loc' and (tail == 'l' or tail == 'lo') then
      maxs[#maxs + 1] = f; maxs[#maxs + 1] = tonumber(v)
    else
      sums[#sums + 1] = f; sums[#sums + 1] = v
    end
  end
  local cart, clear = {}, 0
  local lc = prefix .. 'cart:' .. loser
  local ch = redis.call('HGETALL', lc)
  for i = 1, #ch, 2 do
    if ch[i] == '_clr' then
      clear = tonumber(ch[i + 1])
    else
      cart[#cart + 1] = string.match(ch[i], '^(.*)|%d+$')
      cart[#cart + 1] = cart_ts(ch[i])
      cart[#cart + 1] = ch[i + 1]
    end
  end
  apply_delta(survivor, {sums, mins, maxs, logs, lww, {}, {}, cart, clear}, 1)
  for _, z in ipairs({{'v:', max_views}, {'b:', max_bought}}) do
    local src, dst = prefix .. z[1] .. loser, prefix .. z[1] .. survivor
    if redis.call('EXISTS', src) == 1 then
      redis.call('ZUNIONSTORE', dst, 2, dst, src, 'AGGREGATE', 'MAX')
      redis.call('ZREMRANGEBYRANK', dst, 0, -(z[2] + 1))
    end
  end
  local lm = prefix .. 'mg:' .. loser
  for _, rec in ipairs(redis.call('LRANGE', lm, 0, -1)) do
    redis.call('RPUSH', prefix .. 'mg:' .. survivor, rec)
  end
  redis.call('DEL', lp, lc, prefix .. 'v:' .. loser, prefix .. 'b:' .. loser, lm)
end

local new_customers, merges, linked = 0, 0, 0
for ri, row in ipairs(p.c) do
  local plan = plans[ri]
  local survivor = plan[1]
  local skey = prefix .. 'members:' .. survivor
  if plan[2] then new_customers = new_customers + 1 end
  for _, loser in ipairs(plan[3]) do
    local lkey = prefix .. 'members:' .. loser
    for _, m in ipairs(redis.call('SMEMBERS', lkey)) do
      redis.call('SET', prefix .. 'id:' .. m, survivor)
      redis.call('SADD', skey, m)
    end
    redis.call('DEL', lkey)
    merge_profile(survivor, loser)
    local via = {}
    for i = 1, math.min(#row[1], 20) do via[i] = row[1][i] end
    redis.call('RPUSH', prefix .. 'mg:' .. survivor, cjson.encode({
      survivor = survivor, merged = loser, via = table.concat(via, ' '), why = row[3],
      at = p.now}))
    merges = merges + 1
  end
  for _, f in ipairs(plan[4]) do
    redis.call('SET', prefix .. 'id:' .. f, survivor)
    redis.call('SADD', skey, f)
  end
  linked = linked + #plan[4]
  apply_delta(survivor, row, 4)
end

if seq ~= seq0 then redis.call('SET', prefix .. 'seq', fmt(seq)) end
if new_customers ~= merges then
  redis.call('INCRBY', prefix .. 'stats:customers', new_customers - merges)
end
if merges > 0 then redis.call('INCRBY', prefix .. 'stats:merges', merges) end
if linked > 0 then redis.call('INCRBY', prefix .. 'stats:identifiers', linked) end
for _, r in ipairs(p.refusals) do
  redis.call('XADD', prefix .. 'refusals', 'MAXLEN', '~', 10000, '*',
    'reason', r[1], 'identifiers', r[2], 'why', r[3], 'at', fmt(p.now))
end
if #p.refusals > 0 then redis.call('INCRBY', prefix .. 'stats:refused', #p.refusals) end
if p.suppressed > 0 then redis.call('INCRBY', prefix .. 'stats:suppressed', p.suppressed) end
for _, part in ipairs(p.parts) do
  redis.call('HSET', offsets_key, part[1], fmt(part[3]))
end
return {'OK', new_customers, merges, linked, #p.refusals}
