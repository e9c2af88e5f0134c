-- Read what the offer decisions of a slice of due timers need, in one call.
--
-- ARGV[1] key prefix; ARGV[2..] customer ids (at most 10,000)
-- Returns, per customer, seven flat arrays: the profile (<p>p:<c>, HGETALL), the open cart
-- (<p>cart:<c>, HGETALL), recently bought (<p>b:<c>, ZRANGE WITHSCORES), the offer counters
-- (<p>of:n:<c>, HGETALL), the SKUs waited for (<p>bisq:<c>, HGETALL), recently viewed
-- (<p>v:<c>, ZRANGE WITHSCORES) and returned (<p>rt:<c>, ZRANGE WITHSCORES); then the
-- offers made per campaign (<p>of:spent, HGETALL).
-- Reads only. One script instead of six pipelined commands per customer: redis-py spends
-- most of a pipelined read packing the commands and parsing the replies, ~3.5x this call.
local p = ARGV[1]
if #ARGV > 10001 then return redis.error_reply('INVALID too many customers') end
local out = {}
for i = 2, #ARGV do
  local c = ARGV[i]
  out[#out + 1] = redis.call('HGETALL', p .. 'p:' .. c)
  out[#out + 1] = redis.call('HGETALL', p .. 'cart:' .. c)
  out[#out + 1] = redis.call('ZRANGE', p .. 'b:' .. c, 0, -1, 'WITHSCORES')
  out[#out + 1] = redis.call('HGETALL', p .. 'of:n:' .. c)
  out[#out + 1] = redis.call('HGETALL', p .. 'bisq:' .. c)
  out[#out + 1] = redis.call('ZRANGE', p .. 'v:' .. c, 0, -1, 'WITHSCORES')
  out[#out + 1] = redis.call('ZRANGE', p .. 'rt:' .. c, 0, -1, 'WITHSCORES')
end
out[#out + 1] = redis.call('HGETALL', p .. 'of:spent')
return out
