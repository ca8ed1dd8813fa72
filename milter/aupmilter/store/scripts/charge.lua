-- charge.lua: the one write at end of message.
--
-- Drops the recipients the tenant's suppression list holds, then re-checks
-- every rate window against what is left and, only if all of them still have
-- room, charges them all (messages +1, recipients +n) in the current bucket.
-- Atomic: concurrent transactions of the same tenant can never together
-- overshoot a window, and a refused message charges nothing.
--
-- KEYS[1]     the tenant's suppression hash (aup:{<id>}:suppressed)
-- KEYS[2..W+1] the window hashes (aup:{<id>}:w:...), all with the same tag;
--             the count-only ones come last: the tenant's delivered recipients
--             for the complaint and bounce rates (aup:{<id>}:rate:delivered:...),
--             the ladder's near-cap transactions of the sender with this content
--             (aup:{<id>}:nearcap:..., unit "m"), then the content fingerprint's
--             (aup:{<id>}:fp:...), each when counted; the fingerprint's stays last
-- KEYS[W+2..W+1+R] unsubscribe references to store once charged
--             (aup:unsubref:<ref>); R is 0 for mail that gets no relay link
-- ARGV[1]     now, in milliseconds since the epoch
-- ARGV[2]     W, the number of windows; then per window four values:
--             unit ("r" recipients or "m" messages), limit (-1: count only,
--             never refuse), bucket length in ms, buckets per window
-- ARGV[3+4W]  R; then the references' lifetime in seconds, whether the
--             message is already known to be bulk ("1" or "0"), the fill of
--             the last window (the content counter) from which it becomes
--             bulk ("-1": never), and the R values to store; the references
--             are written only when the message is charged and bulk. A value
--             is policy/tokens.py's Reference.store_value: "<tenant>\n<address>",
--             or for a message link "<tenant>\n\n<hashes>", the keyed hashes of
--             its recipients (at most 1000, under 11 KB), so the link can only
--             ever suppress one of them
-- then        the message's recipients, normalized as the suppression hash
--             stores them
--
-- Returns     {1, suppressed, fills}  charged: suppressed lists the dropped
--                                     recipients, fills each window's count
--                                     after the charge
--             {2, suppressed, {}}     every recipient is suppressed; nothing
--                                     charged
--             {0, index, pairs}       window `index` (1-based) has no room:
--                                     nothing charged; pairs = its fill as
--                                     {used, index1, count1, ...}
--
-- A count-only window of unit "r" is charged the delivered recipients (those
-- left after suppression): that is the rates' denominator, at 3 commands per
-- message (HGETALL, HINCRBY, PEXPIRE; an HDEL when a bucket went stale).
--
-- Window hashes map bucket index (floor(now / bucket length)) to a count; the
-- fill is the current bucket plus the `buckets` before it. Stale buckets are
-- deleted here and every key expires once its newest bucket stops counting.
--
-- Every key comes in KEYS (built by store/keys.py); the script reads no field
-- of the tenant hash.
--
-- Cluster safety: the window and suppression keys share the tenant's hash
-- tag; the reference keys cannot (the unsubscribe service finds them by token
-- alone). On a Redis Cluster the client therefore passes R = 0 and stores the
-- references itself after a bulk charge (store/client.Store._write_references:
-- one more round trip, for bulk mail with relay links only), so every call of
-- this script touches one slot; on one server or Sentinel they ride here.

local now = tonumber(ARGV[1])
local windows = tonumber(ARGV[2])
local at = 3 + 4 * windows
local references = tonumber(ARGV[at])
local reference_ttl = tonumber(ARGV[at + 1])
local known_bulk = ARGV[at + 2] == '1'
local bulk_from_fill = tonumber(ARGV[at + 3])
local first_value = at + 4
local first_recipient = first_value + references

local suppressed = {}
local recipients = #ARGV - first_recipient + 1
if recipients > 0 then
  -- In chunks: unpack() of thousands of values would overflow Lua's C stack.
  for from = first_recipient, #ARGV, 500 do
    local to = math.min(from + 499, #ARGV)
    local flags = redis.call('HMGET', KEYS[1], unpack(ARGV, from, to))
    for r = 1, to - from + 1 do
      if flags[r] then suppressed[#suppressed + 1] = ARGV[from + r - 1] end
    end
  end
  if #suppressed == recipients then
    return {2, suppressed, {}}
  end
end
local delivered = recipients - #suppressed

local plans = {}
for w = 1, windows do
  local base = 3 + 4 * (w - 1)
  local bucket_ms = tonumber(ARGV[base + 2])
  local buckets = tonumber(ARGV[base + 3])
  local current = math.floor(now / bucket_ms)
  local oldest = current - buckets
  local flat = redis.call('HGETALL', KEYS[w + 1])
  local used, counted, stale = 0, {}, {}
  for i = 1, #flat, 2 do
    local index = tonumber(flat[i])
    if index and index >= oldest then
      local count = tonumber(flat[i + 1]) or 0
      used = used + count
      counted[#counted + 1] = index
      counted[#counted + 1] = count
    else
      stale[#stale + 1] = flat[i]
    end
  end
  local amount = 1
  if ARGV[base] == 'r' then amount = delivered end
  local limit = tonumber(ARGV[base + 1])
  if limit >= 0 and used + amount > limit then
    table.insert(counted, 1, used)
    return {0, w, counted}
  end
  plans[w] = {current, used + amount, amount, stale, (current + buckets + 2) * bucket_ms - now}
end

local fills = {}
for w = 1, windows do
  local key, plan = KEYS[w + 1], plans[w]
  if #plan[4] > 0 then redis.call('HDEL', key, unpack(plan[4])) end
  if plan[3] > 0 then
    redis.call('HINCRBY', key, plan[1], plan[3])
    redis.call('PEXPIRE', key, plan[5])
  end
  fills[w] = plan[2]
end

if references > 0 then
  local bulk = known_bulk or (bulk_from_fill >= 0 and fills[windows] >= bulk_from_fill)
  if bulk then
    for r = 1, references do
      redis.call('SET', KEYS[windows + 1 + r], ARGV[first_value + r - 1], 'EX', reference_ttl)
    end
  end
end
return {1, suppressed, fills}
