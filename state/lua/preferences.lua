-- Store what worker 0's next-basket model learnt, once: the model, and the baskets it
-- learnt from marked as learnt, in one call (a crash before it: the model restored from
-- the last checkpoint learns the same baskets again; after it: never again).
--
-- ARGV[1] key prefix
-- ARGV[2] the model's JSON state (<p>pf:model)
-- ARGV[3] JSON {"learnt": [[customer, member], ...], "due": [[customer, count read], ...]}
--         member: "<time>|L|<SKUs>" in <p>ph:<customer>, rewritten "<time>|-|<SKUs>"
--         (a basket merged or erased since is left as it is); count read: <p>pf:due's
--         score as read, taken off (a basket added since stays due)
-- Everything is checked before the first write. Returns the baskets marked learnt.
local prefix, model = ARGV[1], ARGV[2]
local ok, d = pcall(cjson.decode, ARGV[3])
if not ok or type(d) ~= 'table' or type(d.learnt) ~= 'table' or type(d.due) ~= 'table'
    or type(model) ~= 'string' or #model == 0 then
  return redis.error_reply('INVALID next-basket checkpoint')
end
ok = pcall(cjson.decode, model)
if not ok then return redis.error_reply('INVALID next-basket model') end
for _, e in ipairs(d.learnt) do
  if type(e) ~= 'table' or type(e[1]) ~= 'string' or type(e[2]) ~= 'string'
      or not string.match(e[2], '^%d+|L|') then
    return redis.error_reply('INVALID learnt basket')
  end
end
for _, e in ipairs(d.due) do
  if type(e) ~= 'table' or type(e[1]) ~= 'string' or type(e[2]) ~= 'number' then
    return redis.error_reply('INVALID due customer')
  end
end
redis.call('SET', prefix .. 'pf:model', model)
local marked = 0
for _, e in ipairs(d.learnt) do
  local key = prefix .. 'ph:' .. e[1]
  local score = redis.call('ZSCORE', key, e[2])
  if score then
    local ts, rest = string.match(e[2], '^(%d+)|L|(.*)$')
    redis.call('ZREM', key, e[2])
    redis.call('ZADD', key, score, ts .. '|-|' .. rest)
    marked = marked + 1
  end
end
local due = prefix .. 'pf:due'
for _, e in ipairs(d.due) do
  local now = redis.call('ZSCORE', due, e[1])
  if now then
    if tonumber(now) <= e[2] then redis.call('ZREM', due, e[1])
    else redis.call('ZINCRBY', due, -e[2], e[1]) end
  end
end
return marked
