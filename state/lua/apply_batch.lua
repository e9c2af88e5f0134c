-- Apply one batch atomically: resolve its identity components to canonical customers
-- (creating and merging customers), apply their profile deltas, record refusals, and
-- advance the source offsets. Offset fencing makes replays no-ops and detects lost state.
--
-- ARGV[1]  key prefix (e.g. "oc:")
-- ARGV[2]  JSON {"parts": [[name, floor, max, ts], ...], "c": [row, ...], "erasures": version,
--                "refusals": [[reason, identifiers, why], ...], "suppressed": n,
--                "limits": {type: n}, "max": n, "now": ms, "bk": {identifier: bucket}}
--          floor = the last offset this worker knows was applied (-1: none), ts = the Kafka
--          timestamp of the message at max (0: unknown), kept in <p>offsets:ts so that a
--          restart can tell a recreated topic from the one it read
--          row   = [identifiers, link 0|1, why, sums, mins, maxs, logs, lww, views, bought,
--                   cart, cart_clear_ms, viewed_again_ms, returned, baskets]
--                  (operators/batch.py, operators/profile.py); returned: SKUs the customer
--                  returned, kept in <p>rt:<customer> like bought (never suggested again);
--                  baskets: [[time, SKUs as JSON, "L" | "-"], ...] in time order, kept in
--                  <p>ph:<customer> (one string, a line a basket)
--                  (the next-basket model's history; "L": to learn from, <p>pf:due)
-- ARGV[3]  recent views kept, ARGV[4] cart entries kept, ARGV[5] recently bought kept,
-- ARGV[6]  baskets kept per customer
--
--          "st": stock section (state/lua/stock.lua, prepended to this script), optional
--          "dd": [[key, expire at (s), [event id hash, ...]], ...]: the batch's events, for
--                the event_id dedupe (sets of 63-bit hashes per event day and bucket)
--          "id": batch id, written to <p>applying while the writes run
-- Returns {"OK", new customers, merges, identifiers linked, refusals, shrinkage units,
--          movements already in a count, counts too late to apply, SKUs to evaluate}
--       | {"TORN", batch id}                       an earlier call failed half-way through
--                                                   its writes: nothing written
--       | {"INVALID", row, why}                    the plan breaks a limit: nothing written
--       | {"DUPLICATE", hash, ...}                 events already applied (same event_id
--                                                   within the window): nothing written
--       | {"REGRESSED", part, stored, floor}       Redis lost writes: nothing written
--       | {"STALE", part, stored, ...}              Redis is ahead: nothing written
--       | {"ERASURES", version}                     erasures changed: nothing written
--       | {"REFUSED", row index, reason, ...}       links the guard rails refuse: nothing
--                                                   written; the caller applies those
--                                                   rows unlinked and records the refusals
-- Canonical ids are "C" + 12 digits from a counter, so the smallest is the oldest: the
-- survivor of a merge is always the oldest customer (same inputs, same survivor).
--
-- A Lua script is not rolled back when it fails: whatever it wrote stays. So everything
-- that can fail is checked before the first write (fences, the plan's limits, every list
-- given to a variadic command is chunked, numbers read back are converted safely), and the
-- writes run between SET <p>applying and DEL <p>applying: if a call ever dies half-way
-- (a bug, a key of the wrong type written by something else), the next call finds the
-- marker and refuses to write, rather than counting the same events twice.
local prefix = ARGV[1]
local p = cjson.decode(ARGV[2])
local max_views, max_cart, max_bought = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local max_baskets = tonumber(ARGV[6])
local offsets_key = prefix .. 'offsets'

local function fmt(n) return string.format('%d', n) end
-- a stored number, or 0 for anything that is not one (never an error in the write phase)
local function num(v) return tonumber(v) or 0 end
-- integers from JSON arrive as Lua numbers (doubles); from Redis as exact strings
local function int(v) if type(v) == 'number' then return fmt(v) end return v end
-- redis.call(cmd, [key,] unpack(args)) in chunks (Lua's unpack is limited to a few thousand
-- values); the replies are concatenated.
local function chunked(cmd, key, args, step)
  if #args <= step then  -- the usual case: one call, no copies
    if key then return redis.call(cmd, key, unpack(args)) end
    return redis.call(cmd, unpack(args))
  end
  local out = {}
  for i = 1, #args, step do
    local part = {}
    for j = i, math.min(i + step - 1, #args) do part[#part + 1] = args[j] end
    local res
    if key then res = redis.call(cmd, key, unpack(part)) else res = redis.call(cmd, unpack(part)) end
    if type(res) == 'table' then
      for _, x in ipairs(res) do out[#out + 1] = x end
    end
  end
  return out
end

-- 0. A call that died half-way through its writes: refuse to add anything to it.
local torn = redis.call('GET', prefix .. 'applying')
if torn then return {'TORN', torn} end

-- 0b. The plan's limits (operators/batch.py keeps within them): a row beyond one is
-- refused whole, before any write, and the caller sets its event aside.
for ri, row in ipairs(p.c) do
  local why = nil
  if type(row) ~= 'table' or #row ~= 15 then why = 'row shape'
  elseif #row[1] < 1 or #row[1] > 4096 then why = 'identifiers'
  elseif #row[9] > 2 * max_views then why = 'recently viewed'
  elseif #row[10] > 2 * max_bought then why = 'recently bought'
  elseif #row[11] > 3 * max_cart then why = 'cart entries'
  elseif type(row[13]) ~= 'number' then why = 'viewed-again time'
  elseif type(row[14]) ~= 'table' or #row[14] > 2 * max_bought then why = 'recently returned'
  elseif type(row[15]) ~= 'table' or #row[15] > max_baskets then why = 'baskets'
  else
    for _, e in ipairs(row[15]) do
      if type(e) ~= 'table' or type(e[1]) ~= 'number' or e[1] < 0 or type(e[2]) ~= 'string'
          or #e[2] > 8192 or (e[3] ~= 'L' and e[3] ~= '-') then  -- 8192: 2 x BASKET_BYTES
        why = 'basket'
        break
      end
    end
  end
  if why then return {'INVALID', tostring(ri - 1), why .. ' over the limit'} end
end

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

-- 1b. Events already applied: the same event_id (hashed) in the set of its event day.
local dd = p.dd or {}
do
  local dups = {}
  for _, g in ipairs(dd) do
    local members = g[3]
    local found = chunked('SMISMEMBER', g[1], members, 4000)
    for i, f in ipairs(found) do
      if f == 1 then dups[#dups + 1] = members[i] end
    end
  end
  if #dups > 0 then
    table.insert(dups, 1, 'DUPLICATE')
    return dups
  end
end

-- 2. Plan the identity changes on an overlay (still no writes), checking guard rails.
local idmap, mem = {}, {}
-- Identity links live in hash buckets ("<p>ids:<bucket>": identifier -> canonical id; the
-- bucket comes from the caller, or from the members hash for stored identifiers): small
-- hashes cost far less memory than one key per identifier.
local bk = p.bk
local function lookup(idents)
  local groups, order = {}, {}
  for _, ident in ipairs(idents) do
    if idmap[ident] == nil then
      local b = bk[ident]
      local g = groups[b]
      if not g then g = {}; groups[b] = g; order[#order + 1] = b end
      g[#g + 1] = ident
    end
  end
  for _, b in ipairs(order) do
    local g = groups[b]
    local vals = chunked('HMGET', prefix .. 'ids:' .. b, g, 1000)
    for i, ident in ipairs(g) do idmap[ident] = vals[i] or false end
  end
end
local function members_of(c)
  local m = mem[c]
  if m == nil then
    local kv = redis.call('HGETALL', prefix .. 'members:' .. c)
    m = {}
    for i = 1, #kv, 2 do
      m[#m + 1] = kv[i]
      bk[kv[i]] = kv[i + 1]
    end
    mem[c] = m
  end
  return m
end
local function kind(ident) return string.match(ident, '^([^:]+):') end

local seq0 = tonumber(redis.call('GET', prefix .. 'seq') or '0')
local seq = seq0
local plans, refused = {}, {}
-- identifiers whose canonical id this batch sets (written per bucket at the end)
local changed, changed_seen = {}, {}
local function point(ident, survivor)
  idmap[ident] = survivor
  if not changed_seen[ident] then changed_seen[ident] = true; changed[#changed + 1] = ident end
end
local all = {}
for _, row in ipairs(p.c) do
  for _, ident in ipairs(row[1]) do all[#all + 1] = ident end
end
lookup(all)  -- one HMGET per bucket for the whole batch
for ri, row in ipairs(p.c) do
  local order, seen, fresh = {}, {}, {}
  lookup(row[1])
  for _, ident in ipairs(row[1]) do
    local c = idmap[ident]
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
      local kinds = {}
      for k in pairs(counts) do kinds[#kinds + 1] = k end
      table.sort(kinds)  -- the same reason whatever the table order
      for _, k in ipairs(kinds) do
        local lim = p.limits[k]
        if lim and counts[k] > lim then reason = 'limit:' .. k; break end
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
    local losers = {}
    -- the overlay's member list matters only when this row changes the customer
    local sm = (#order > 1 or #fresh > 0) and members_of(survivor) or {}
    for i = 2, #order do
      local loser = order[i]
      losers[#losers + 1] = loser
      for _, m in ipairs(members_of(loser)) do
        point(m, survivor)
        sm[#sm + 1] = m
      end
      mem[loser] = {}
    end
    for _, f in ipairs(fresh) do
      point(f, survivor)
      sm[#sm + 1] = f
    end
    plans[ri] = {survivor, new, losers, fresh}
  end
end
if #refused > 0 then
  table.insert(refused, 1, 'REFUSED')
  return refused
end

-- 2b. Every field a merge will move has a rule (FIELD_RULES, from
--     operators/profile_fields.py, prepended to this script): a field written by another
--     version of omnicanal is refused here, before any write, never combined by a guess.
local function rule_of(f)
  local head, code = string.match(f, '^([^:]*):?([^:]*)')
  return FIELD_RULES.head[head] or FIELD_RULES.code[code]
end
for ri = 1, #p.c do
  local plan = plans[ri]
  for _, loser in ipairs(plan[3]) do
    for _, f in ipairs(redis.call('HKEYS', prefix .. 'p:' .. loser)) do
      if not rule_of(f) then
        return {'INVALID', tostring(ri - 1), 'profile field ' .. f .. ' without a rule'}
      end
    end
  end
end

-- 3. Writes, between the marker and its removal.
redis.call('SET', prefix .. 'applying', p.id or '?')
local LN2 = math.log(2)
-- (sums are exact up to 2^53: 9e15 minor units per field)

-- Combine delta fields into the profile hash with one HMGET and one HSET:
-- sums add, mins/maxs keep the extreme, logs add in log2 space, "latest" fields keep the
-- value of the latest event time ("<ms>:<value>"; a tie goes to the smaller value).
local function update_fields(pk, sums, mins, maxs, logs, lww)
  local groups = {sums, mins, maxs, logs}
  local fields = {}
  for g = 1, 4 do
    local flat = groups[g]
    for i = 1, #flat, 2 do fields[#fields + 1] = flat[i] end
  end
  for i = 1, #lww, 3 do fields[#fields + 1] = lww[i] end
  if #fields == 0 then return end
  local cur = chunked('HMGET', pk, fields, 1000)
  local out, n = {}, 0
  for g = 1, 4 do
    local flat = groups[g]
    for i = 1, #flat, 2 do
      n = n + 1
      local v, c = num(flat[i + 1]), cur[n]
      local new = nil
      -- numbers go to Redis as they are: it formats them with %.17g, exact for integers
      -- (string.format per field would cost more than the HSET itself)
      if g == 1 then
        new = (c and num(c) or 0) + v
      elseif g == 2 then
        if not c or v < num(c) then new = v end
      elseif g == 3 then
        if not c or v > num(c) then new = v end
      else
        if c then
          local a = num(c)
          local hi, lo = math.max(a, v), math.min(a, v)
          v = hi + math.log(1 + 2 ^ (lo - hi)) / LN2
        end
        new = v
      end
      if new then out[#out + 1] = flat[i]; out[#out + 1] = new end
    end
  end
  for i = 1, #lww, 3 do
    n = n + 1
    local c, ts, v = cur[n], lww[i + 1], lww[i + 2]
    local keep = false
    if c then
      local cts, cv = string.match(c, '^(%d+):(.*)$')
      cts = num(cts)
      keep = cv ~= nil and (ts < cts or (ts == cts and v >= cv))
    end
    if not keep then out[#out + 1] = lww[i]; out[#out + 1] = fmt(ts) .. ':' .. v end
  end
  if #out > 0 then chunked('HSET', pk, out, 2000) end
end

-- (at most 2 x keep values: checked in 0b, so one call)
local function zset_max(key, flat, keep)
  local args = {'GT'}
  for i = 1, #flat, 2 do
    args[#args + 1] = flat[i + 1]
    args[#args + 1] = flat[i]
  end
  if redis.call('ZADD', key, unpack(args)) > 0 then  -- new members: trim to the most recent
    redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
  end
end

local function cart_ts(f) return num(string.match(f, '|(%d+)$')) end

-- Adds to the cart start (or restart) the customer's cart-abandonment timer: <p>tm:cart,
-- member the customer, score the newest add's event time (GT: a late, older add does not
-- move it back). The offers stage fires it once the campaigns' wait has passed.
local function cart_add(cid, ck, flat, clear)
  local old = num(redis.call('HGET', ck, '_clr') or '0')
  if clear > old then
    redis.call('HSET', ck, '_clr', fmt(clear))
    for _, f in ipairs(redis.call('HKEYS', ck)) do
      if f ~= '_clr' and cart_ts(f) <= clear then redis.call('HDEL', ck, f) end
    end
  else
    clear = old
  end
  local newest = nil
  for k = 1, #flat, 3 do
    if flat[k + 1] > clear then
      redis.call('HINCRBY', ck, flat[k] .. '|' .. fmt(flat[k + 1]), int(flat[k + 2]))
      if num(flat[k + 2]) > 0 and (newest == nil or flat[k + 1] > newest) then
        newest = flat[k + 1]
      end
    end
  end
  if newest then redis.call('ZADD', prefix .. 'tm:cart', 'GT', newest, cid) end
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

-- An order starts (or restarts) the customer's win-back timer: <p>tm:winback, scored by the
-- last order's event time (GT); the offers stage fires it once the customer is overdue.
-- It also starts the channel-expansion timer, <p>tm:expand, the same way: the stage looks
-- whether the customer buys on one side only once the campaign's wait has passed; and the
-- cross-sell timer, <p>tm:xsell: what goes with the newest basket, after the campaign's wait.
local function winback_timer(cid, maxs)
  local last = nil
  for i = 1, #maxs, 2 do
    if string.sub(maxs[i], -3) == ':lo' and (last == nil or maxs[i + 1] > last) then
      last = maxs[i + 1]
    end
  end
  if last then
    redis.call('ZADD', prefix .. 'tm:winback', 'GT', last, cid)
    redis.call('ZADD', prefix .. 'tm:expand', 'GT', last, cid)
    redis.call('ZADD', prefix .. 'tm:xsell', 'GT', last, cid)
  end
end

-- A product viewed again, at least a minute after its last view (not the same page
-- load; in_batch: such a return within the batch itself, found by the plan), starts (or restarts) the customer's browse-abandonment timer: <p>tm:browse, scored
-- by that view's event time (GT); the offers stage fires it once the campaign's wait has
-- passed without a cart or a purchase of what was viewed. Reads the views kept before
-- they are updated: call it first.
local function browse_timer(cid, vk, flat, in_batch)
  local again = nil
  if in_batch > 0 then again = in_batch end
  local skus = {}
  for i = 1, #flat, 2 do skus[#skus + 1] = flat[i] end
  -- one ZMSCORE for the row's SKUs (at most 2 x max_views values: checked in 0b)
  local before = redis.call('ZMSCORE', vk, unpack(skus))
  for i = 1, #flat, 2 do
    local b = before[(i + 1) / 2]
    if b and flat[i + 1] >= tonumber(b) + 60000 and (again == nil or flat[i + 1] > again) then
      again = flat[i + 1]
    end
  end
  if again then redis.call('ZADD', prefix .. 'tm:browse', 'GT', again, cid) end
end

-- The customer's last baskets, in any channel: <p>ph:<customer>, a string of lines
-- "<time>|<L or ->|<SKUs as JSON>" (JSON never holds a raw newline) in time order, ties by
-- the line, the newest ARGV[6] kept: the next-basket model's history, one string rather than
-- a sorted set (a set's entry costs ~150 bytes more past 64-byte members). A basket to learn
-- from ("L") counts in <p>pf:due, which worker 0 reads.
local function line_ts(line) return tonumber(string.match(line, '^(%d+)|')) or 0 end
local function sorted_lines(text)
  local all = {}
  for line in string.gmatch(text, '[^\n]+') do all[#all + 1] = line end
  table.sort(all, function(a, b)
    local ta, tb = line_ts(a), line_ts(b)
    if ta ~= tb then return ta < tb end
    return a < b
  end)
  return all
end
-- keep the newest `keep` lines of a time-ordered text (cut at newlines, no parsing)
local function newest_lines(text, keep)
  local _, newlines = string.gsub(text, '\n', '')
  local drop = newlines + 1 - keep
  if drop <= 0 then return text end
  local cut = 0
  for _ = 1, drop do cut = string.find(text, '\n', cut + 1, true) end
  return string.sub(text, cut + 1)
end
local function keep_history(key, text)
  redis.call('SET', key, newest_lines(text, max_baskets))
end
local function basket_history(cid, baskets)
  local key, lines, learn = prefix .. 'ph:' .. cid, {}, 0
  local newest = -1
  local in_order = true
  for _, e in ipairs(baskets) do
    if e[1] <= newest then in_order = false end
    newest = e[1]
    lines[#lines + 1] = fmt(e[1]) .. '|' .. e[3] .. '|' .. e[2]
    if e[3] == 'L' then learn = learn + 1 end
  end
  local old = redis.call('GET', key)
  local text
  if not old or old == '' then
    text = table.concat(in_order and lines or sorted_lines(table.concat(lines, '\n')), '\n')
  elseif in_order and baskets[1][1] > line_ts(string.match(old, '([^\n]*)$')) then
    text = old .. '\n' .. table.concat(lines, '\n')  -- the usual case: newer than all kept
  else  -- a late basket, or several at one time: sorted again
    text = table.concat(sorted_lines(old .. '\n' .. table.concat(lines, '\n')), '\n')
  end
  keep_history(key, text)
  if learn > 0 then redis.call('ZINCRBY', prefix .. 'pf:due', learn, cid) end
end

local function apply_delta(cid, d, b)
  local pk = prefix .. 'p:' .. cid
  update_fields(pk, d[b], d[b + 1], d[b + 2], d[b + 3], d[b + 4])
  winback_timer(cid, d[b + 2])
  if #d[b + 5] > 0 then
    local vk = prefix .. 'v:' .. cid
    browse_timer(cid, vk, d[b + 5], d[b + 9])
    zset_max(vk, d[b + 5], max_views)
  end
  if #d[b + 6] > 0 then zset_max(prefix .. 'b:' .. cid, d[b + 6], max_bought) end
  if #d[b + 10] > 0 then zset_max(prefix .. 'rt:' .. cid, d[b + 10], max_bought) end
  if #d[b + 7] > 0 or d[b + 8] > 0 then cart_add(cid, prefix .. 'cart:' .. cid, d[b + 7], d[b + 8]) end
  if #d[b + 11] > 0 then basket_history(cid, d[b + 11]) end
end

-- Move everything of `loser` into `survivor`, combining each field as its kind says.
local function merge_profile(survivor, loser)
  local lp = prefix .. 'p:' .. loser
  local h = redis.call('HGETALL', lp)
  local sums, mins, maxs, logs, lww = {}, {}, {}, {}, {}
  for i = 1, #h, 2 do
    local f, v = h[i], h[i + 1]
    local rule = rule_of(f)  -- checked in 2b: every field has one
    if rule == 'sum' then
      sums[#sums + 1] = f; sums[#sums + 1] = v
    elseif rule == 'min' then
      mins[#mins + 1] = f; mins[#mins + 1] = num(v)
    elseif rule == 'max' then
      maxs[#maxs + 1] = f; maxs[#maxs + 1] = num(v)
    elseif rule == 'log_add' then
      logs[#logs + 1] = f; logs[#logs + 1] = num(v)
    elseif rule == 'latest' then
      local ts, cv = string.match(v, '^(%d+):(.*)$')
      lww[#lww + 1] = f; lww[#lww + 1] = num(ts); lww[#lww + 1] = cv or ''
    else
      error('profile field ' .. f .. ' of ' .. loser .. ' has no rule in operators/profile_fields.py')
    end
  end
  local cart, clear = {}, 0
  local lc = prefix .. 'cart:' .. loser
  local ch = redis.call('HGETALL', lc)
  for i = 1, #ch, 2 do
    if ch[i] == '_clr' then
      clear = num(ch[i + 1])
    else
      cart[#cart + 1] = string.match(ch[i], '^(.*)|%d+$')
      cart[#cart + 1] = cart_ts(ch[i])
      cart[#cart + 1] = ch[i + 1]
    end
  end
  apply_delta(survivor, {sums, mins, maxs, logs, lww, {}, {}, cart, clear, 0, {}, {}}, 1)
  for _, z in ipairs({{'v:', max_views}, {'b:', max_bought}, {'rt:', max_bought}}) do
    local src, dst = prefix .. z[1] .. loser, prefix .. z[1] .. survivor
    if redis.call('EXISTS', src) == 1 then
      redis.call('ZUNIONSTORE', dst, 2, dst, src, 'AGGREGATE', 'MAX')
      redis.call('ZREMRANGEBYRANK', dst, 0, -(z[2] + 1))
    end
  end
  local lh = redis.call('GET', prefix .. 'ph:' .. loser)
  if lh == '' then lh = false end
  local lm = prefix .. 'mg:' .. loser
  for _, rec in ipairs(redis.call('LRANGE', lm, 0, -1)) do
    redis.call('RPUSH', prefix .. 'mg:' .. survivor, rec)
  end
  redis.call('DEL', lp, lc, prefix .. 'v:' .. loser, prefix .. 'b:' .. loser,
    prefix .. 'rt:' .. loser, prefix .. 'ph:' .. loser, lm)
  -- its baskets are the survivor's (a merged history: sorted again, the newest kept), and
  -- so are those it had to learn from
  if lh then
    local sh = redis.call('GET', prefix .. 'ph:' .. survivor)
    local both = (sh and sh ~= '') and (sh .. '\n' .. lh) or lh
    keep_history(prefix .. 'ph:' .. survivor, table.concat(sorted_lines(both), '\n'))
  end
  local due = redis.call('ZSCORE', prefix .. 'pf:due', loser)
  if due then
    redis.call('ZINCRBY', prefix .. 'pf:due', due, survivor)
    redis.call('ZREM', prefix .. 'pf:due', loser)
  end
  -- its cart and orders (and their timers) are the survivor's
  redis.call('ZREM', prefix .. 'tm:cart', loser)
  redis.call('ZREM', prefix .. 'tm:winback', loser)
  redis.call('ZREM', prefix .. 'tm:expand', loser)
  redis.call('ZREM', prefix .. 'tm:xsell', loser)
  redis.call('ZREM', prefix .. 'tm:browse', loser)
  redis.call('DEL', prefix .. 'xs:rank:' .. loser)
  -- what the loser waited for, back in stock, the survivor waits for
  local lw, sw = prefix .. 'bisq:' .. loser, prefix .. 'bisq:' .. survivor
  local waits = redis.call('HGETALL', lw)
  if #waits > 0 then
    for k = 1, #waits, 2 do redis.call('HSETNX', sw, waits[k], waits[k + 1]) end
    redis.call('EXPIRE', sw, 15 * 86400)
    local at = redis.call('ZSCORE', prefix .. 'tm:bis', loser)
    if at then redis.call('ZADD', prefix .. 'tm:bis', 'NX', at, survivor) end
  end
  redis.call('DEL', lw)
  redis.call('ZREM', prefix .. 'tm:bis', loser)
end

local new_customers, merges, linked = 0, 0, 0
for ri, row in ipairs(p.c) do
  local plan = plans[ri]
  local survivor = plan[1]
  local skey = prefix .. 'members:' .. survivor
  if plan[2] then new_customers = new_customers + 1 end
  for _, loser in ipairs(plan[3]) do
    local lkey = prefix .. 'members:' .. loser
    local moved = redis.call('HGETALL', lkey)
    if #moved > 0 then chunked('HSET', skey, moved, 2000) end
    redis.call('DEL', lkey)
    merge_profile(survivor, loser)
    local via = {}
    for i = 1, math.min(#row[1], 20) do via[i] = row[1][i] end
    redis.call('RPUSH', prefix .. 'mg:' .. survivor, cjson.encode({
      survivor = survivor, merged = loser, via = table.concat(via, ' '), why = row[3],
      at = p.now}))
    merges = merges + 1
  end
  if #plan[4] > 0 then
    local kv = {}
    for _, f in ipairs(plan[4]) do kv[#kv + 1] = f; kv[#kv + 1] = bk[f] end
    chunked('HSET', skey, kv, 2000)
  end
  linked = linked + #plan[4]
  apply_delta(survivor, row, 4)
end

if #changed > 0 then
  local groups, order = {}, {}
  for _, ident in ipairs(changed) do
    local b = bk[ident]
    local g = groups[b]
    if not g then g = {}; groups[b] = g; order[#order + 1] = b end
    g[#g + 1] = ident
    g[#g + 1] = idmap[ident]
  end
  for _, b in ipairs(order) do chunked('HSET', prefix .. 'ids:' .. b, groups[b], 2000) end
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
local gap, ignored, stale_counts, to_evaluate = 0, 0, 0, {}
if p.st then gap, ignored, stale_counts, to_evaluate = apply_stock(prefix, p.st, chunked) end
for _, g in ipairs(dd) do
  chunked('SADD', g[1], g[3], 4000)
  redis.call('EXPIREAT', g[1], g[2])
end
for _, part in ipairs(p.parts) do
  redis.call('HSET', offsets_key, part[1], fmt(part[3]))
  if part[4] and part[4] > 0 then
    redis.call('HSET', offsets_key .. ':ts', part[1], fmt(part[4]))
  end
end
redis.call('DEL', prefix .. 'applying')
return {'OK', new_customers, merges, linked, #p.refusals, gap, ignored, stale_counts, to_evaluate}
