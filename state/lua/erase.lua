-- Erase one customer (right to erasure), atomically.
--
-- ARGV[1] key prefix, ARGV[2] canonical customer id, ARGV[3] erasure time (ms)
--
-- Deletes the profile, recently viewed/bought, the basket history, cart, offer timers and counters, merge
-- records, identity links and the refusal records that quote the customer's identifiers.
-- Each identifier is kept only as a tombstone ("erased" hash: identifier -> erasure ms) so
-- that a replay of events up to the erasure cannot bring the customer back; the erasure
-- version tells running pipelines to reload the tombstones before their next write.
-- Returns the number of identifiers erased, or -1 if the customer does not exist.
local prefix, cid, now = ARGV[1], ARGV[2], ARGV[3]
local mkey = prefix .. 'members:' .. cid
local pairs_ = redis.call('HGETALL', mkey)  -- identifier -> bucket of its link
local members = {}
local exists = redis.call('EXISTS', prefix .. 'p:' .. cid, mkey)
if exists == 0 then return -1 end
local quoted = {}
for i = 1, #pairs_, 2 do
  local m, b = pairs_[i], pairs_[i + 1]
  members[#members + 1] = m
  redis.call('HDEL', prefix .. 'ids:' .. b, m)
  redis.call('HSET', prefix .. 'erased', m, now)
  quoted[m] = true
end
redis.call('DEL', mkey, prefix .. 'p:' .. cid, prefix .. 'v:' .. cid, prefix .. 'b:' .. cid,
  prefix .. 'rt:' .. cid, prefix .. 'ph:' .. cid,
  prefix .. 'cart:' .. cid, prefix .. 'mg:' .. cid, prefix .. 'of:n:' .. cid)
-- no offer for an erased person
redis.call('ZREM', prefix .. 'tm:cart', cid)
redis.call('ZREM', prefix .. 'tm:winback', cid)
redis.call('ZREM', prefix .. 'tm:expand', cid)
redis.call('ZREM', prefix .. 'tm:xsell', cid)
redis.call('ZREM', prefix .. 'tm:bis', cid)
redis.call('ZREM', prefix .. 'tm:browse', cid)
redis.call('ZREM', prefix .. 'pf:due', cid)
redis.call('DEL', prefix .. 'bisq:' .. cid, prefix .. 'xs:rank:' .. cid)
local refusals = redis.call('XRANGE', prefix .. 'refusals', '-', '+')
for _, entry in ipairs(refusals) do
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'identifiers' then
      for ident in string.gmatch(fields[i + 1], '%S+') do
        if quoted[ident] then redis.call('XDEL', prefix .. 'refusals', entry[1]); break end
      end
    end
  end
end
redis.call('DECR', prefix .. 'stats:customers')
redis.call('DECRBY', prefix .. 'stats:identifiers', #members)
redis.call('INCR', prefix .. 'stats:erased')
redis.call('INCR', prefix .. 'erased:version')
redis.call('XADD', prefix .. 'erasures', '*', 'customer', cid, 'identifiers', #members, 'at', now)
return #members
