-- Add one worker's co-purchase counts (a flush of operators/cross_sell.py CoPurchase), once.
--
-- ARGV[1] key prefix
-- ARGV[2] flush id: a flush applied before (the reply was lost, the call is retried) is not
--         added again (<p>xs:f:<id>, kept a day)
-- ARGV[3] JSON {"n": baskets, "i": {sku: baskets}, "r": {sku: returns},
--               "c": {sku: category}, "p": {sku: {co-sku: baskets}}}
-- ARGV[4] co-items kept per item: past 1.5 times that, the least co-bought go
--
-- Keys: <p>xs:n (baskets), <p>xs:i sorted set (baskets per SKU: the most bought are read
-- too), <p>xs:r / <p>xs:c hashes, <p>xs:p:<sku> sorted sets.
-- Everything is checked before the first write: a bad argument writes nothing.
-- Returns 1 (added) or 0 (this flush was added before).
local prefix, id, keep = ARGV[1], ARGV[2], tonumber(ARGV[4])
if not id or #id == 0 or #id > 128 or not keep or keep < 1 then
  return redis.error_reply('INVALID co-purchase flush')
end
local ok, d = pcall(cjson.decode, ARGV[3])
if not ok or type(d) ~= 'table' or type(d.n) ~= 'number' or type(d.i) ~= 'table'
    or type(d.r) ~= 'table' or type(d.c) ~= 'table' or type(d.p) ~= 'table' then
  return redis.error_reply('INVALID co-purchase counts')
end
local function count(v) return type(v) == 'number' and v >= 1 and v == math.floor(v) end
local function sku(s) return type(s) == 'string' and #s > 0 and #s <= 128 end
if d.n < 0 or d.n ~= math.floor(d.n) then return redis.error_reply('INVALID basket count') end
for _, h in ipairs({d.i, d.r}) do
  for k, v in pairs(h) do
    if not sku(k) or not count(v) then return redis.error_reply('INVALID item count') end
  end
end
for k, v in pairs(d.c) do
  if not sku(k) or type(v) ~= 'string' or #v > 64 then
    return redis.error_reply('INVALID item category')
  end
end
for a, row in pairs(d.p) do
  if not sku(a) or type(row) ~= 'table' then return redis.error_reply('INVALID pair row') end
  for b, v in pairs(row) do
    if not sku(b) or not count(v) then return redis.error_reply('INVALID pair count') end
  end
end
if redis.call('SET', prefix .. 'xs:f:' .. id, '1', 'NX', 'EX', 86400) == false then return 0 end
local function fmt(n) return string.format('%d', n) end
if d.n > 0 then redis.call('INCRBY', prefix .. 'xs:n', fmt(d.n)) end
for k, v in pairs(d.i) do redis.call('ZINCRBY', prefix .. 'xs:i', fmt(v), k) end
for k, v in pairs(d.r) do redis.call('HINCRBY', prefix .. 'xs:r', k, fmt(v)) end
for k, v in pairs(d.c) do redis.call('HSET', prefix .. 'xs:c', k, v) end
local cap = math.floor(keep * 1.5)
for a, row in pairs(d.p) do
  local key = prefix .. 'xs:p:' .. a
  for b, v in pairs(row) do redis.call('ZINCRBY', key, fmt(v), b) end
  if redis.call('ZCARD', key) > cap then
    redis.call('ZREMRANGEBYRANK', key, 0, -(keep + 1))
  end
end
return 1
