-- Read what the offer decisions of a slice of due timers need, in one call.
--
-- ARGV[1] key prefix; ARGV[2] the parts wanted besides the profile and the counters, one
-- letter each: c cart, b bought, w waited for, v viewed, r returned, h the baskets kept
-- (a part not wanted comes
-- back as an empty array: a win-back decision reads no cart); ARGV[3..] customer ids (at
-- most 10,000)
-- Returns, per customer, eight flat arrays: the profile (<p>p:<c>, HGETALL), the open cart
-- (<p>cart:<c>, HGETALL), recently bought (<p>b:<c>, ZRANGE WITHSCORES), the offer counters
-- (<p>of:n:<c>, HGETALL), the SKUs waited for (<p>bisq:<c>, HGETALL), recently viewed
-- (<p>v:<c>, ZRANGE WITHSCORES), returned (<p>rt:<c>, ZRANGE WITHSCORES) and the baskets
-- kept (<p>ph:<c>, GET, a line a basket: the next-basket model's history); then the
-- offers made per campaign (<p>of:spent, HGETALL).
-- Reads only. One script instead of six pipelined commands per customer: redis-py spends
-- most of a pipelined read packing the commands and parsing the replies, ~3.5x this call.
local p = ARGV[1]
if #ARGV > 10002 then return redis.error_reply('INVALID too many customers') end
local parts = ARGV[2]
local function has(letter) return string.find(parts, letter, 1, true) ~= nil end
local cart, bought, waits, views, returned = has('c'), has('b'), has('w'), has('v'), has('r')
local baskets = has('h')
local none = {}
local out = {}
for i = 3, #ARGV do
  local c = ARGV[i]
  out[#out + 1] = redis.call('HGETALL', p .. 'p:' .. c)
  out[#out + 1] = cart and redis.call('HGETALL', p .. 'cart:' .. c) or none
  out[#out + 1] = bought and redis.call('ZRANGE', p .. 'b:' .. c, 0, -1, 'WITHSCORES') or none
  out[#out + 1] = redis.call('HGETALL', p .. 'of:n:' .. c)
  out[#out + 1] = waits and redis.call('HGETALL', p .. 'bisq:' .. c) or none
  out[#out + 1] = views and redis.call('ZRANGE', p .. 'v:' .. c, 0, -1, 'WITHSCORES') or none
  out[#out + 1] = returned and redis.call('ZRANGE', p .. 'rt:' .. c, 0, -1, 'WITHSCORES') or none
  out[#out + 1] = baskets and redis.call('GET', p .. 'ph:' .. c) or ''
end
out[#out + 1] = redis.call('HGETALL', p .. 'of:spent')
return out
