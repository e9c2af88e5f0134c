-- Write the alert decisions for a set of SKUs, atomically, with an outbox.
--
-- ARGV[1] key prefix
-- ARGV[2] JSON [{"sku": s, "ver": n, "set": {key: record json}, "del": [key],
--                "msgs": [message json], "open": {type: +-n}, "raised": {type: n},
--                "risk": 0|1}, ...]   (operators/stock.py evaluate)
--
-- A SKU whose version moved since it was read (another batch changed its stock) is skipped:
-- the writer of the newer version evaluates it. So is a version already evaluated (field
-- "ev": two workers evaluated the same state; the first one wrote it). Otherwise its open
-- alerts
-- (<p>alerts:<sku>, key -> record) are updated, its messages appended to the outbox stream
-- (<p>alerts:outbox, field "m"), which the sender deletes once the broker has them, and it
-- leaves the dirty set. Returns {{skipped sku, ...}, {outbox id, ...}}.
local prefix = ARGV[1]
local entries = cjson.decode(ARGV[2])
local skipped, ids = {}, {}
for _, e in ipairs(entries) do
  local sk = prefix .. 'sku:' .. e.sku
  local cur = redis.call('HMGET', sk, 'ver', 'ev')
  local v, done = tonumber(cur[1] or '0'), tonumber(cur[2] or '0')
  if v ~= e.ver or done >= v then
    skipped[#skipped + 1] = e.sku
  else
    redis.call('HSET', sk, 'ev', e.ver)
    local ak = prefix .. 'alerts:' .. e.sku
    local kv = {}
    for key, rec in pairs(e.set) do kv[#kv + 1] = key; kv[#kv + 1] = rec end
    -- in chunks: Lua's unpack() fails past a few thousand values
    for i = 1, #kv, 2000 do
      redis.call('HSET', ak, unpack(kv, i, math.min(i + 1999, #kv)))
    end
    for i = 1, #e.del, 2000 do
      redis.call('HDEL', ak, unpack(e.del, i, math.min(i + 1999, #e.del)))
    end
    if redis.call('EXISTS', ak) == 1 then
      redis.call('SADD', prefix .. 'alerts:skus', e.sku)
    else
      redis.call('SREM', prefix .. 'alerts:skus', e.sku)
    end
    if e.risk == 1 then
      redis.call('SADD', prefix .. 'alerts:risk', e.sku)
    else
      redis.call('SREM', prefix .. 'alerts:risk', e.sku)
    end
    for t, n in pairs(e.open) do redis.call('HINCRBY', prefix .. 'alerts:open', t, n) end
    for t, n in pairs(e.raised) do redis.call('HINCRBY', prefix .. 'alerts:raised', t, n) end
    for _, m in ipairs(e.msgs) do
      ids[#ids + 1] = redis.call('XADD', prefix .. 'alerts:outbox', '*', 'm', m)
    end
    redis.call('SREM', prefix .. 'stock:dirty', e.sku)
  end
end
return {skipped, ids}
