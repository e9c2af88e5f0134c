-- Store what worker 0's next-basket model learnt, once: the model, and the baskets it
-- learnt from marked as learnt, in one call (a crash before it: the model restored from
-- the last checkpoint learns the same baskets again; after it: never again).
--
-- ARGV[1] key prefix
-- ARGV[2] the model's JSON state (<p>pf:model)
-- ARGV[3] JSON {"learnt": [[customer, member], ...], "due": [[customer, count read], ...]}
--         member: the line "<time>|L|<SKUs>" of <p>ph:<customer>, rewritten "<time>|-|<SKUs>"
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
      or not string.match(e[2], '^%d+|L|') or string.find(e[2], '\n', 1, true) then
    return redis.error_reply('INVALID learnt basket')
  end
end
for _, e in ipairs(d.due) do
  if type(e) ~= 'table' or type(e[1]) ~= 'string' or type(e[2]) ~= 'number' then
    return redis.error_reply('INVALID due customer')
  end
end
-- the line `member` of `text`, marked learnt ('L' -> '-'), or nil when it is not a line of it
local function mark(text, member)
  local from = 1
  while true do
    local i, j = string.find(text, member, from, true)
    if not i then return nil end
    local next_char = string.sub(text, j + 1, j + 1)
    if (i == 1 or string.sub(text, i - 1, i - 1) == '\n') and (next_char == '' or next_char == '\n') then
      local ts, rest = string.match(member, '^(%d+)|L|(.*)$')
      return string.sub(text, 1, i - 1) .. ts .. '|-|' .. rest .. string.sub(text, j + 1)
    end
    from = i + 1
  end
end
-- Reads first (a key of the wrong type fails here, before anything is written): each
-- history with its lines marked, and each due count as it is now.
local texts, order, marked = {}, {}, 0
for _, e in ipairs(d.learnt) do
  local key = prefix .. 'ph:' .. e[1]
  local text = texts[key]
  if text == nil then
    text = redis.call('GET', key) or false
    order[#order + 1] = key
  end
  local marked_text = text and mark(text, e[2])
  if marked_text then
    text = marked_text
    marked = marked + 1
  end
  texts[key] = text
end
local due = prefix .. 'pf:due'
local counts = {}
for i, e in ipairs(d.due) do counts[i] = redis.call('ZSCORE', due, e[1]) end
-- Then the writes.
redis.call('SET', prefix .. 'pf:model', model)
for _, key in ipairs(order) do
  if texts[key] then redis.call('SET', key, texts[key]) end
end
for i, e in ipairs(d.due) do
  local now = counts[i]
  if now then
    if tonumber(now) <= e[2] then redis.call('ZREM', due, e[1])
    else redis.call('ZINCRBY', due, -e[2], e[1]) end
  end
end
return marked
