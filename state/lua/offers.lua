-- Write the outcomes of due offer timers, atomically, with an outbox.
--
-- ARGV[1] key prefix
-- ARGV[2] JSON [[customer, seen score, action, offer json | "", campaign | "", day,
--                suppression | "", later score, trigger ms, timer, offer id | "",
--                context json | "", expires at ms, coupon code | "",
--                waits [[sku, since ms], ...], back-in-stock timer score], ...]
--         timer: "cart" | "winback" | "expand" | "bis" | "browse" | "xsell", the sorted set
--                <p>tm:<timer>
--         waits (offer or drop): SKUs carted (or viewed again) while out of stock online; kept in
--                <p>bisq:<customer> (the first time each was wanted, at most 50) and the
--                customer's back-in-stock timer starts (<p>tm:bis, if it has none)
--         a "bis" timer decided (offer or drop) clears <p>bisq:<customer>
--         action "offer": the timer goes; the offer goes to the outbox (<p>offers:outbox,
--                field "m"), the customer's counters (<p>of:n:<customer>: d:<day>,
--                c:<campaign>:<day>, f:<timer> = the trigger's time) and the campaign's spend
--                (<p>of:spent) move; its context (<p>of:ctx:<offer id>: x context, k campaign,
--                c coupon code, u customer) is kept until
--                it expires (<p>tm:expiry, scored by the expiry), for the policy to learn
--                from its outcome
--         action "drop":  the timer goes; a suppression is counted (<p>of:stats s:<reason>)
--         action "later": the timer's score becomes `later score`
-- A timer whose score is no longer the one read (a new cart add, a merge, another writer)
-- is skipped: whoever moved it decides it again. Everything is read and checked before the
-- first write. Returns {{skipped customer, ...}, {outbox id of each offer written, ...}}.
local prefix = ARGV[1]
local items = cjson.decode(ARGV[2])
local TIMERS = {cart = true, winback = true, expand = true, bis = true, browse = true,
  xsell = true}
if #items > 10000 then return redis.error_reply('INVALID too many timer outcomes') end
for i, it in ipairs(items) do
  if type(it) ~= 'table' or #it ~= 16 or type(it[1]) ~= 'string' or type(it[2]) ~= 'number'
      or not TIMERS[it[10]] or type(it[13]) ~= 'number'
      or (it[3] ~= 'offer' and it[3] ~= 'drop' and it[3] ~= 'later')
      or (it[3] == 'offer' and (it[4] == '' or it[5] == '' or it[11] == '' or it[12] == ''))
      or type(it[15]) ~= 'table' or #it[15] > 200 or type(it[16]) ~= 'number' then
    return redis.error_reply('INVALID timer outcome ' .. i)
  end
  for _, w in ipairs(it[15]) do
    if type(w) ~= 'table' or type(w[1]) ~= 'string' or #w[1] > 128 or type(w[2]) ~= 'number' then
      return redis.error_reply('INVALID wait in timer outcome ' .. i)
    end
  end
end
local skipped, live = {}, {}
for i, it in ipairs(items) do
  local id = it[10] .. ' ' .. it[1]
  local score = redis.call('ZSCORE', prefix .. 'tm:' .. it[10], it[1])
  if score and tonumber(score) == it[2] and not live[id] then
    live[id] = i
  else
    skipped[#skipped + 1] = it[1]
  end
end
local ids = {}
local function fmt(n) return string.format('%d', n) end
for i, it in ipairs(items) do
  if live[it[10] .. ' ' .. it[1]] == i then
    local cid, action = it[1], it[3]
    local timers = prefix .. 'tm:' .. it[10]
    if action == 'later' then
      redis.call('ZADD', timers, 'XX', fmt(it[8]), cid)
    else
      redis.call('ZREM', timers, cid)
      if action == 'offer' then
        local nk = prefix .. 'of:n:' .. cid
        local day = fmt(it[6])
        redis.call('HINCRBY', nk, 'd:' .. day, 1)
        redis.call('HINCRBY', nk, 'c:' .. it[5] .. ':' .. day, 1)
        redis.call('HSET', nk, 'f:' .. it[10], fmt(it[9]))
        -- counters older than a week are no longer read: drop them as the hash is written
        for _, f in ipairs(redis.call('HKEYS', nk)) do
          local d = tonumber(string.match(f, ':(%d+)$'))
          if d and d < it[6] - 7 then redis.call('HDEL', nk, f) end
        end
        redis.call('EXPIRE', nk, 35 * 86400)
        redis.call('HINCRBY', prefix .. 'of:spent', it[5], 1)
        redis.call('HINCRBY', prefix .. 'of:stats', 'offers', 1)
        ids[#ids + 1] = redis.call('XADD', prefix .. 'offers:outbox', '*', 'm', it[4])
        local ck = prefix .. 'of:ctx:' .. it[11]
        redis.call('HSET', ck, 'x', it[12], 'k', it[5], 'c', it[14], 'u', cid)
        redis.call('EXPIREAT', ck, math.floor(it[13] / 1000) + 7 * 86400)
        redis.call('ZADD', prefix .. 'tm:expiry', fmt(it[13]), it[11])
      elseif it[7] ~= '' then
        redis.call('HINCRBY', prefix .. 'of:stats', 's:' .. it[7], 1)
      end
      local wk = prefix .. 'bisq:' .. cid
      if it[10] == 'bis' then redis.call('DEL', wk) end
      if #it[15] > 0 then
        for _, w in ipairs(it[15]) do redis.call('HSETNX', wk, w[1], fmt(w[2])) end
        if redis.call('HLEN', wk) > 50 then  -- the oldest go
          local all = redis.call('HGETALL', wk)
          local e = {}
          for k = 1, #all, 2 do e[#e + 1] = {tonumber(all[k + 1]), all[k]} end
          table.sort(e, function(a, b) return a[1] < b[1] end)
          for k = 1, #e - 50 do redis.call('HDEL', wk, e[k][2]) end
        end
        redis.call('EXPIRE', wk, 15 * 86400)
        redis.call('ZADD', prefix .. 'tm:bis', 'NX', fmt(it[16]), cid)
      end
    end
  end
end
return {skipped, ids}
