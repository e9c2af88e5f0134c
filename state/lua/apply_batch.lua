-- Apply one batch of per-customer profile deltas together with the source offsets it
-- covers, atomically. Offset fencing makes replays no-ops and detects lost state.
--
-- KEYS[1]  offsets hash ("<topic>:<partition>" -> last applied offset)
-- KEYS[2]  customers counter
-- ARGV[1]  key prefix (e.g. "oc:")
-- ARGV[2]  JSON {"parts": [[name, floor, max], ...], "c": [row, ...]}
--          floor = the last offset this worker knows was applied (-1: none)
--          row   = [id, channels, views, cart, cart_clear_ms] (operators/profile.py)
-- ARGV[3]  recent views kept, ARGV[4] cart entries kept
--
-- Returns {"OK", new_customers} | {"REGRESSED", part, stored, floor} |
--         {"STALE", part, stored, part, stored, ...}
local offsets_key = KEYS[1]
local prefix = ARGV[1]
local p = cjson.decode(ARGV[2])
local max_views = tonumber(ARGV[3])
local max_cart = tonumber(ARGV[4])

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

local function fmt(n) return string.format('%d', n) end

local new_customers = 0
for _, row in ipairs(p.c) do
  local id = row[1]
  local pk = prefix .. 'p:' .. id
  if redis.call('EXISTS', pk) == 0 then new_customers = new_customers + 1 end
  local ch = row[2]
  local i = 1
  while i <= #ch do
    local name = ch[i]
    local counters = {'o', 'r', 'i', 'ir', 'e'}
    for k = 1, 5 do
      local v = ch[i + k]
      if v ~= 0 then redis.call('HINCRBY', pk, name .. ':' .. counters[k], fmt(v)) end
    end
    local first, last = ch[i + 6], ch[i + 7]
    local cur = redis.call('HMGET', pk, name .. ':f', name .. ':l')
    if not cur[1] or tonumber(cur[1]) > first then
      redis.call('HSET', pk, name .. ':f', fmt(first))
    end
    if not cur[2] or tonumber(cur[2]) < last then
      redis.call('HSET', pk, name .. ':l', fmt(last))
    end
    local ncur = ch[i + 8]
    local j = i + 9
    for _ = 1, ncur do
      if ch[j + 1] ~= 0 then redis.call('HINCRBY', pk, name .. ':s:' .. ch[j], fmt(ch[j + 1])) end
      if ch[j + 2] ~= 0 then redis.call('HINCRBY', pk, name .. ':rf:' .. ch[j], fmt(ch[j + 2])) end
      j = j + 3
    end
    i = j
  end

  local views = row[3]
  if #views > 0 then
    local vk = prefix .. 'v:' .. id
    local args = {'ZADD', vk, 'GT'}
    for k = 1, #views, 2 do
      args[#args + 1] = fmt(views[k + 1])
      args[#args + 1] = views[k]
    end
    redis.call(unpack(args))
    redis.call('ZREMRANGEBYRANK', vk, 0, -(max_views + 1))
  end

  local cart, clear = row[4], row[5]
  if #cart > 0 or clear > 0 then
    local ck = prefix .. 'cart:' .. id
    local old = tonumber(redis.call('HGET', ck, '_clr') or '0')
    if clear > old then
      redis.call('HSET', ck, '_clr', fmt(clear))
      local all = redis.call('HKEYS', ck)
      for _, f in ipairs(all) do
        if f ~= '_clr' then
          local ts = tonumber(string.match(f, '|(%d+)$'))
          if ts <= clear then redis.call('HDEL', ck, f) end
        end
      end
    else
      clear = old
    end
    for k = 1, #cart, 3 do
      if cart[k + 1] > clear then
        redis.call('HINCRBY', ck, cart[k] .. '|' .. fmt(cart[k + 1]), fmt(cart[k + 2]))
      end
    end
    if redis.call('HLEN', ck) > max_cart + 1 then
      local entries = {}
      for _, f in ipairs(redis.call('HKEYS', ck)) do
        if f ~= '_clr' then
          entries[#entries + 1] = {tonumber(string.match(f, '|(%d+)$')), f}
        end
      end
      table.sort(entries, function(a, b)
        if a[1] ~= b[1] then return a[1] < b[1] end
        return a[2] < b[2]
      end)
      for k = 1, #entries - max_cart do redis.call('HDEL', ck, entries[k][2]) end
    end
  end
end

for _, part in ipairs(p.parts) do
  redis.call('HSET', offsets_key, part[1], fmt(part[3]))
end
if new_customers > 0 then redis.call('INCRBY', KEYS[2], new_customers) end
return {'OK', new_customers}
