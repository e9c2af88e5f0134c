-- The coupon ledger: codes issued once, redeemed once, from any channel.
--
-- ARGV[1]  key prefix
-- ARGV[2]  "issue" | "redeem"
-- ARGV[3]  JSON list of items, handled in order:
--   issue:  [code, offer id, customer id, campaign, expiry day, expire-at seconds, ms]
--           -> "issued" | "same" (already issued for this offer: a replay) | "taken" (the code
--              belongs to another offer: the caller issues again with the next salt)
--   redeem: [code, customer id or "", order id, channel, today (day), ms, source,
--            [ids merged into that customer since]]
--           -> "redeemed" | "duplicate" (re-sent: same order) | "unknown" | "already_redeemed"
--              | "wrong_customer" | "expired", then a tab and the code's campaign (if known)
--
-- <p>cp:<code>   hash  o offer, c customer, k campaign, x expiry day, s "i" issued | "r"
--                      redeemed, then ord order, ch channel, at redemption ms
-- <p>cp:refusals stream redemptions refused (capped), with their source position
-- <p>stats:coupons_issued, <p>stats:coupons_redeemed
-- <p>of:feedback stream: o offer id, y 1 for each redemption (the offer policy learns it)
--
-- Every read and every decision comes first, the writes after: the script either fails
-- before writing or not at all. Items about the same code see the earlier items' effects.
local prefix, mode = ARGV[1], ARGV[2]
local items = cjson.decode(ARGV[3])
if #items > 10000 then return redis.error_reply('INVALID too many coupon items') end

local state = {}  -- code -> {o, c, x, s, ord} as read, then as decided
local function get(code)
  local st = state[code]
  if st == nil then
    local v = redis.call('HMGET', prefix .. 'cp:' .. code, 'o', 'c', 'x', 's', 'ord', 'k')
    for k = 1, 6 do if v[k] == false then v[k] = nil end end  -- a missing field is false
    st = {o = v[1], c = v[2], x = tonumber(v[3]), s = v[4], ord = v[5], k = v[6]}
    state[code] = st
  end
  return st
end

local out, writes = {}, {}
for i, it in ipairs(items) do
  if type(it) ~= 'table' or type(it[1]) ~= 'string' or #it[1] > 64 then
    return redis.error_reply('INVALID coupon item ' .. i)
  end
  local st = get(it[1])
  local r
  if mode == 'issue' then
    if st.o == nil then
      r = 'issued'
      st.o, st.c, st.x, st.s = it[2], it[3], tonumber(it[5]), 'i'
      writes[#writes + 1] = {'issue', it}
    elseif st.o == it[2] then
      r = 'same'
    else
      r = 'taken'
    end
  elseif mode == 'redeem' then
    local cust, order, today = it[2], it[3], tonumber(it[5])
    local former = false  -- the code was issued to a customer merged into this one since
    if type(it[8]) == 'table' then
      for _, id in ipairs(it[8]) do if id == st.c then former = true end end
    end
    if st.o == nil then
      r = 'unknown'
    elseif st.s == 'r' then
      if st.ord == order then r = 'duplicate' else r = 'already_redeemed' end
    elseif cust ~= '' and cust ~= st.c and not former then
      r = 'wrong_customer'
    elseif today > st.x then
      r = 'expired'
    else
      r = 'redeemed'
      st.s, st.ord = 'r', order
    end
    writes[#writes + 1] = {r, it}
    r = r .. '\t' .. (st.k or '')
  else
    return redis.error_reply('INVALID mode ' .. tostring(mode))
  end
  out[#out + 1] = r
end

for _, w in ipairs(writes) do
  local r, it = w[1], w[2]
  local key = prefix .. 'cp:' .. it[1]
  if r == 'issue' then
    redis.call('HSET', key, 'o', it[2], 'c', it[3], 'k', it[4], 'x', it[5], 's', 'i',
      'issued', it[7])
    redis.call('EXPIREAT', key, it[6])
    redis.call('INCR', prefix .. 'stats:coupons_issued')
  elseif r == 'redeemed' then
    redis.call('HSET', key, 's', 'r', 'ord', it[3], 'ch', it[4], 'at', it[6])
    redis.call('INCR', prefix .. 'stats:coupons_redeemed')
    -- the offer's outcome, for the offer policy to learn from (once: a code redeems once)
    redis.call('XADD', prefix .. 'of:feedback', 'MAXLEN', '~', 1000000, '*',
      'o', state[it[1]].o, 'y', '1')
  elseif r ~= 'duplicate' then
    redis.call('XADD', prefix .. 'cp:refusals', 'MAXLEN', '~', 100000, '*', 'code', it[1],
      'why', r, 'customer', it[2], 'order', it[3], 'channel', it[4], 'source', it[7])
  end
end
return out
