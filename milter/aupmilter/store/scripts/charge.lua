-- charge.lua: the one write at end of message.
--
-- Drops the recipients the tenant's suppression list holds; on a consent plan
-- (policy/consent.py) judges a bulk message's recipients against the tenant's
-- consent ledger and last-bulk record (drops the lapsed ones, or refuses a
-- message with too many never-mailed ones); then re-checks every rate window
-- against what is left and, only if all of them still have room, charges them
-- all (messages +1, recipients +n) in the current bucket. Atomic: concurrent
-- transactions of the same tenant can never together overshoot a window, and
-- a refused message charges nothing and records nothing.
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
-- KEYS[W+2+R], KEYS[W+3+R]  on a consent plan only (consent mode not "0"): the
--             tenant's consent ledger (aup:{<id>}:consent, address -> Unix
--             seconds) and its last-bulk record (aup:{<id>}:lastbulk, the same)
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
--             ever suppress one of them. The bulk flag and the fill also decide
--             whether the consent rules apply (bulk by content: the fill before
--             this message plus the recipients left after suppression), so they
--             are passed whenever references or the consent rules need them
-- then        the consent block, five values: mode ("0" off, "1" warn, "2"
--             enforce), the lapse in seconds, "1" when an unrecorded recipient
--             of a ledger tenant is lapsed ("0": it is new), the new-recipient
--             share in parts per million ("-1": no share rule), and the least
--             number of bulk recipients the share rule applies to
-- then        the message's recipients, normalized as the suppression hash
--             stores them
--
-- Returns     {1, suppressed, fills, consent}  charged: suppressed lists the
--                                     dropped recipients, fills each window's
--                                     count after the charge
--             {2, suppressed, {}, consent}  every recipient is suppressed (or
--                                     suppressed or lapsed, enforce); nothing
--                                     charged
--             {0, index, pairs, consent}  window `index` (1-based) has no room:
--                                     nothing charged; pairs = its fill as
--                                     {used, index1, count1, ...}
--             {3, suppressed, {}, consent}  enforce: more than the share of
--                                     the bulk recipients are new; nothing
--                                     charged
--             consent = {judged, lapsed, new}: judged 1 when the consent rules
--             ran (a bulk message on a consent plan), lapsed the lapsed
--             recipients (dropped in enforce mode, only listed in warn), new
--             the number of new ones; {0, {}, 0} otherwise
--
-- Consent rules (the same as policy/consent.py's `standing`): with a ledger
-- (the consent hash exists), last contact = max(consent, last bulk), lapsed
-- when older than the lapse; neither known: new or lapsed as the plan says;
-- without a ledger, new when never bulk-mailed. Cost, only for bulk mail on a
-- consent plan: EXISTS, one HMGET per hash per 500 recipients (bounded by the
-- recipient cap), and one HSET of the delivered recipients into the last-bulk
-- hash per 500 recipients. Lapsed recipients never update last bulk (or the
-- lapse would heal itself); neither does a refused message.
--
-- On a consent plan the content counter (the last window, when a fill for
-- bulk is passed) is charged the recipients left after suppression, before
-- lapse: its fill then says "bulk" exactly when this script decided so. Off a
-- consent plan that is the delivered count, as before.
--
-- A count-only window of unit "r" is charged the delivered recipients (those
-- left after suppression and, enforced, after lapse): that is the rates' denominator, at 3 commands per
-- message (HGETALL, HINCRBY, PEXPIRE; an HDEL when a bucket went stale).
--
-- Window hashes map bucket index (floor(now / bucket length)) to a count; the
-- fill is the current bucket plus the `buckets` before it. Stale buckets are
-- deleted here and every key expires once its newest bucket stops counting.
--
-- Every key comes in KEYS (built by store/keys.py); the script reads no field
-- of the tenant hash.
--
-- Cluster safety: the window, suppression, consent and last-bulk keys share
-- the tenant's hash tag; the reference keys cannot (the unsubscribe service
-- finds them by token alone). On a Redis Cluster the client therefore passes
-- R = 0 and stores the references itself after a bulk charge
-- (store/client.Store._write_references: one more round trip, for bulk mail
-- with relay links only), so every call of this script touches one slot; on
-- one server or Sentinel they ride here.

local now = tonumber(ARGV[1])
local windows = tonumber(ARGV[2])
local at = 3 + 4 * windows
local references = tonumber(ARGV[at])
local reference_ttl = tonumber(ARGV[at + 1])
local known_bulk = ARGV[at + 2] == '1'
local bulk_from_fill = tonumber(ARGV[at + 3])
local first_value = at + 4
local c = first_value + references
local consent_mode = tonumber(ARGV[c])
local lapse = tonumber(ARGV[c + 1])
local unrecorded_lapsed = ARGV[c + 2] == '1'
local share_ppm = tonumber(ARGV[c + 3])
local share_min = tonumber(ARGV[c + 4])
local first_recipient = c + 5
local consent_key = KEYS[windows + 2 + references]
local last_bulk_key = KEYS[windows + 3 + references]
local no_consent = {0, {}, 0}

-- HMGET in chunks: unpack() of thousands of values would overflow Lua's C stack.
local function hmget(key, list)
  local values = {}
  for from = 1, #list, 500 do
    local to = math.min(from + 499, #list)
    local got = redis.call('HMGET', key, unpack(list, from, to))
    for r = 1, to - from + 1 do values[from + r - 1] = got[r] end
  end
  return values
end

local suppressed, left = {}, {}
local recipients = #ARGV - first_recipient + 1
if recipients > 0 then
  for from = first_recipient, #ARGV, 500 do
    local to = math.min(from + 499, #ARGV)
    local flags = redis.call('HMGET', KEYS[1], unpack(ARGV, from, to))
    for r = 1, to - from + 1 do
      if flags[r] then
        suppressed[#suppressed + 1] = ARGV[from + r - 1]
      else
        left[#left + 1] = ARGV[from + r - 1]
      end
    end
  end
  if #suppressed == recipients then
    return {2, suppressed, {}, no_consent}
  end
end

-- Every window's fill before this message.
local reads = {}
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
  reads[w] = {current, used, counted, stale, (current + buckets + 2) * bucket_ms - now}
end

-- Bulk by content: the content counter (the last window) with this message's
-- recipients left after suppression (one message for a unit "m" counter).
local by_content = bulk_from_fill >= 0 and windows > 0
local bulk = known_bulk
if not bulk and by_content then
  local adds = #left
  if ARGV[3 + 4 * (windows - 1)] ~= 'r' then adds = 1 end
  bulk = reads[windows][2] + adds >= bulk_from_fill
end

-- The consent rules, on a bulk message of a consent plan.
local consent = no_consent
local lapsed, delivered_to = {}, left
if consent_mode > 0 and bulk and #left > 0 then
  local now_s = math.floor(now / 1000)
  local ledger = redis.call('EXISTS', consent_key) == 1
  local consented = {}
  if ledger then consented = hmget(consent_key, left) end
  local last = hmget(last_bulk_key, left)
  local new, kept = 0, {}
  for i = 1, #left do
    local given, mailed = tonumber(consented[i]), tonumber(last[i])
    local state = 'current'
    if not ledger then
      if not mailed then state = 'new' end
    elseif not given and not mailed then
      if unrecorded_lapsed then state = 'lapsed' else state = 'new' end
    elseif now_s - math.max(given or 0, mailed or 0) > lapse then
      state = 'lapsed'
    end
    if state == 'lapsed' then
      lapsed[#lapsed + 1] = left[i]
    else
      if state == 'new' then new = new + 1 end
      kept[#kept + 1] = left[i]
    end
  end
  consent = {1, lapsed, new}
  delivered_to = kept
  if consent_mode == 2 then
    if share_ppm >= 0 and #left >= share_min and new * 1000000 > share_ppm * #left then
      return {3, suppressed, {}, consent}
    end
    if #kept == 0 then
      return {2, suppressed, {}, consent}
    end
  end
end
local delivered = #left
if consent_mode == 2 then delivered = #delivered_to end

local plans = {}
for w = 1, windows do
  local base = 3 + 4 * (w - 1)
  local read = reads[w]
  local amount = 1
  if ARGV[base] == 'r' then
    amount = delivered
    if consent_mode > 0 and by_content and w == windows then amount = #left end
  end
  local limit = tonumber(ARGV[base + 1])
  if limit >= 0 and read[2] + amount > limit then
    table.insert(read[3], 1, read[2])
    return {0, w, read[3], consent}
  end
  plans[w] = {read[1], read[2] + amount, amount, read[4], read[5]}
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

if references > 0 and bulk then
  for r = 1, references do
    redis.call('SET', KEYS[windows + 1 + r], ARGV[first_value + r - 1], 'EX', reference_ttl)
  end
end

if consent[1] == 1 and #delivered_to > 0 then
  local stamp = tostring(math.floor(now / 1000))
  for from = 1, #delivered_to, 500 do
    local to = math.min(from + 499, #delivered_to)
    local fields = {}
    for i = from, to do
      fields[#fields + 1] = delivered_to[i]
      fields[#fields + 1] = stamp
    end
    redis.call('HSET', last_bulk_key, unpack(fields))
  end
end
return {1, suppressed, fills, consent}
