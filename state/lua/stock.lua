-- Stock section of the batch script: prepended to apply_batch.lua (state/profiles.py), so
-- stock changes are fenced by the same offsets and applied in the same transaction.
--
-- st (from operators/stock.py StockPlan.to_payload):
--   mv  [[sku, location, event ms, units], ...]     movements (+ in, - out)
--   sn  [[sku, location, event ms, on hand], ...]   counts
--   pr  [[sku, channel key, event ms, price, currency], ...]
--   cat [[sku, category], ...]
--   vel [[sku, location, ref ms, decayed units, decayed sales, first ms], ...]
--   sea [[location, hour of week, units], ...]
--   ssp [[location, first sale ms, last sale ms], ...]
--   sku [[sku, newest event ms], ...]
--   hl  velocity half-life (ms)
--
-- Keys: <p>sku:<sku> hash   q:<loc> level, st:<loc> count time, sf:<loc> first count time,
--                           sh:<loc> shrinkage units,
--                           p:<ch> "ms price currency", cat, v:<loc> velocity
--                           "units sales ref_ms first_ms",
--                           ver (bumped per batch touching it), ts (newest event ms)
--       <p>mv:<sku>|<loc>   hash event ms -> units: movements since the last count, so a
--                           count that arrives late keeps the movements after it
--       <p>season:<loc>     hash hour of week -> units sold; t0/t1 first/last sale ms
--       <p>stock:dirty      set of SKUs whose alerts must be re-evaluated
-- Returns shrinkage units, movements already in a count, counts too late, and the SKUs to
-- evaluate (counted somewhere or priced).
-- Events are ordered by event time, never by arrival: a movement at or before the count's
-- time is in the count; a later one is added on top. Only when a location moves more than
-- MOVE_PRUNE_AT times between counts are its records pruned, to the MOVE_KEEP newest and
-- those within MOVE_WINDOW of the newest (field "floor": the newest pruned time); a count
-- older than the floor is ignored (too late to tell what it includes). Below that bound
-- the result does not depend on how far the inventory feed lags the sales feeds.
--
-- Shrinkage is the same whatever the batch boundaries: every count of a batch is applied,
-- in arrival order (not only the newest), and a movement that arrives after a count that
-- already includes it (event time at or before the count) still counts in the shrinkage
-- when it falls after the location's first count: summed over all counts, the shrinkage
-- is first count + movements since - last count, however the events were batched.
local MOVE_WINDOW = 2 * 86400000
local MOVE_PRUNE_AT, MOVE_KEEP = 4096, 2048

local lua_tonumber = tonumber

local function apply_stock(prefix, st, chunked)
  local function sfmt(n) return string.format('%d', n) end
  -- stored numbers, read safely (never an error once writes have started)
  local function tonumber(v) return lua_tonumber(v) or 0 end
  local gap_units, ignored, stale_counts = 0, 0, 0

  -- a shrinkage that sums back to zero leaves no field, whatever the order of its parts
  local function add_shrinkage(k, loc, units)
    if redis.call('HINCRBY', k, 'sh:' .. loc, units) == 0 then
      redis.call('HDEL', k, 'sh:' .. loc)
    end
  end

  local function prune(mk, newest)
    local all = redis.call('HGETALL', mk)
    local times, floor = {}, tonumber(redis.call('HGET', mk, 'floor') or '-1')
    for i = 1, #all, 2 do
      if all[i] ~= 'floor' then times[#times + 1] = tonumber(all[i]) end
    end
    table.sort(times)
    local drop, cut = {}, #times - MOVE_KEEP
    for i, t in ipairs(times) do
      if i <= cut or t < newest - MOVE_WINDOW then
        drop[#drop + 1] = sfmt(t)
        if t > floor then floor = t end
      end
    end
    if #drop > 0 then
      chunked('HDEL', mk, drop, 2000)
      redis.call('HSET', mk, 'floor', sfmt(floor))
    end
  end

  for _, m in ipairs(st.mv) do
    local sku, loc, t, d = m[1], m[2], m[3], m[4]
    local k = prefix .. 'sku:' .. sku
    local cur = redis.call('HMGET', k, 'st:' .. loc, 'sf:' .. loc)
    local snap, first = cur[1], cur[2]
    if snap and t <= tonumber(snap) then
      ignored = ignored + 1  -- already in the count's level
      if first and t > tonumber(first) and d ~= 0 then
        -- but the counts since the first one expected it: it is part of the gap
        add_shrinkage(k, loc, d)
        gap_units = gap_units + d
      end
    else
      redis.call('HINCRBY', k, 'q:' .. loc, d)
      local mk = prefix .. 'mv:' .. sku .. '|' .. loc
      redis.call('HINCRBY', mk, sfmt(t), d)
      if redis.call('HLEN', mk) > MOVE_PRUNE_AT then prune(mk, t) end
    end
  end

  for _, s in ipairs(st.sn) do
    local sku, loc, t, q = s[1], s[2], s[3], s[4]
    local k = prefix .. 'sku:' .. sku
    local snap = redis.call('HGET', k, 'st:' .. loc)
    if not snap or t > tonumber(snap) then
      local mk = prefix .. 'mv:' .. sku .. '|' .. loc
      local all = redis.call('HGETALL', mk)
      local after, old, newest, floor = 0, {}, t, -1
      for i = 1, #all, 2 do
        if all[i] == 'floor' then
          floor = tonumber(all[i + 1])
        else
          local mt = tonumber(all[i])
          if mt > t then after = after + tonumber(all[i + 1]) else old[#old + 1] = all[i] end
          if mt > newest then newest = mt end
        end
      end
      if t < floor then
        -- movements after it were pruned: too late to tell which ones it includes (with
        -- every record since the last count kept, any count applies exactly, however late)
        stale_counts = stale_counts + 1
      else
        if #old > 0 then chunked('HDEL', mk, old, 2000) end
        if snap then
          local cur = tonumber(redis.call('HGET', k, 'q:' .. loc) or '0')
          local gap = (cur - after) - q  -- expected at the count minus counted
          if gap ~= 0 then
            add_shrinkage(k, loc, gap)
            gap_units = gap_units + gap
          end
        end
        redis.call('HSET', k, 'q:' .. loc, sfmt(q + after), 'st:' .. loc, sfmt(t), 'c', '1')
        if not snap then redis.call('HSET', k, 'sf:' .. loc, sfmt(t)) end
      end
    end
  end

  for _, pr in ipairs(st.pr) do
    local k = prefix .. 'sku:' .. pr[1]
    local f = 'p:' .. pr[2]
    local new = sfmt(pr[3]) .. ' ' .. sfmt(pr[4]) .. ' ' .. pr[5]
    local old = redis.call('HGET', k, f)
    local ot = old and tonumber(string.match(old, '^(%d+)')) or -1
    if pr[3] > ot or (pr[3] == ot and new > old) then redis.call('HSET', k, f, new, 'c', '1') end
  end

  for _, c in ipairs(st.cat) do
    local k = prefix .. 'sku:' .. c[1]
    local old = redis.call('HGET', k, 'cat')
    if not old or c[2] < old then redis.call('HSET', k, 'cat', c[2]) end
  end

  local hl = st.hl
  for _, v in ipairs(st.vel) do
    local k, loc = prefix .. 'sku:' .. v[1], v[2]
    local bt, bu, bn, bf = v[3], v[4], v[5], v[6]
    local f = 'v:' .. loc
    local o = redis.call('HGET', k, f)
    if o then
      local ou, on, ot, of = string.match(o, '^(%S+) (%S+) (%S+) (%S+)$')
      ou, on, ot, of = tonumber(ou), tonumber(on), tonumber(ot), tonumber(of)
      local t = math.max(ot, bt)
      local fo, fb = 2 ^ (-(t - ot) / hl), 2 ^ (-(t - bt) / hl)
      bu, bn, bt, bf = ou * fo + bu * fb, on * fo + bn * fb, t, math.min(of, bf)
    end
    -- one field "units sales ref_ms first_ms": a single read and write per location
    redis.call('HSET', k, f, table.concat({bu, bn, bt, bf}, ' '))
  end

  for _, s in ipairs(st.sea) do
    redis.call('HINCRBY', prefix .. 'season:' .. s[1], sfmt(s[2]), s[3])
  end
  for _, s in ipairs(st.ssp) do
    local k = prefix .. 'season:' .. s[1]
    local t = redis.call('HMGET', k, 't0', 't1')
    if not t[1] or s[2] < tonumber(t[1]) then redis.call('HSET', k, 't0', sfmt(s[2])) end
    if not t[2] or s[3] > tonumber(t[2]) then redis.call('HSET', k, 't1', sfmt(s[3])) end
  end

  -- Only SKUs with something to alert on (a counted location or a price: field "c") need
  -- an evaluation; sales of SKUs whose stock nobody feeds move levels and rates only.
  local dirty = {}
  for _, s in ipairs(st.sku) do
    local k = prefix .. 'sku:' .. s[1]
    redis.call('HINCRBY', k, 'ver', 1)
    local cur = redis.call('HMGET', k, 'ts', 'c')
    if s[2] > tonumber(cur[1] or '-1') then redis.call('HSET', k, 'ts', sfmt(s[2])) end
    if cur[2] then dirty[#dirty + 1] = s[1] end
  end
  if #dirty > 0 then chunked('SADD', prefix .. 'stock:dirty', dirty, 2000) end
  return gap_units, ignored, stale_counts, dirty
end
