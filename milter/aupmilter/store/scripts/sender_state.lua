-- sender_state.lua: the one read at MAIL FROM.
--
-- Finds the first mapping key that exists, in the order given, and returns the
-- tenant it names, that tenant's hash, the message stream of the sender, and
-- the current fill of every rate window of the tenant's plan. The caller
-- decides the lookup order (the SASL login alone, or the sender domain then
-- its parents) and the windows, so no policy lives here.
--
-- KEYS[1..n]  mapping keys (aup:login:<login> or aup:domain:<domain>), most
--             specific first
-- ARGV[1]     head of the tenant hash key ("aup:tenant:"), ARGV[2] tail of the
--             stream hash key after the tenant id (":streams")
-- ARGV[3]     head and ARGV[4] tail of the hash-tagged per-tenant prefix
--             ("aup:{" and "}:"): window keys are ARGV[3]..id..ARGV[4]..suffix
-- ARGV[5]     now, in milliseconds since the epoch
-- ARGV[6]     SASL login ("" when none), ARGV[7] envelope sender ("" for <>):
--             the stream is the login's, else the sender's
-- ARGV[8]     the suspended hash's suffix after the tagged prefix ("suspended"),
--             ARGV[9] the offences hash's ("offences"): aup:{<id>}:suspended and
--             aup:{<id>}:offences, built like the window keys
-- ARGV[10]    the sender's field in the suspended hash ("sender:<identity>"),
--             ARGV[11] its domain's ("domain:<domain>"; "" for the null sender),
--             ARGV[12] the sender identity, its field in the offences hash
-- ARGV[13]    number of plans P; then per plan: name, window count W, and W
--             triples (key suffix, bucket length in ms, buckets per window)
-- ARGV[#ARGV] (last) tail of the tenant's domains set key after the tenant id
--             (":domains"), for the message checks
--
-- Returns     {} when no mapping exists; otherwise
--             {matched_index, tenant_id, stream, fills, fields} where
--             stream is "bulk", "transactional" or "" (none set),
--             fills has one entry per window of the tenant's plan (empty when
--             the plan is not in ARGV): {used, index1, count1, index2, ...},
--             used being the sum over the current bucket and the `buckets`
--             before it, the pairs the buckets that make it up,
--             fields is HGETALL of the tenant hash (empty when missing).
--             A sixth element, domains, is SMEMBERS of the tenant's domains
--             set (From, Reply-To and Sender are checked against it).
--             A seventh, ladder, is {sender_entry, domain_entry, offences}:
--             HMGET of the two fields in the suspended hash (nil when absent;
--             the domain's nil when ARGV[11] is "") and the sender's offence
--             count (0 when none), for the near-cap-repeat ladder.
--
-- Field names: the one this script spells is the tenant hash's `plan`, to
-- pick the plan's windows (store/keys.py FIELD_PLAN; keep the two equal).
-- Every key name comes in KEYS or ARGV.
--
-- Not Redis-Cluster-safe: the tenant id is only known after the lookup, so
-- the tenant, stream and window keys cannot be passed in KEYS. The daemon
-- targets a standalone or Sentinel-managed Redis; the writing script
-- (charge.lua) is Cluster-safe.

local function fill(key, now, bucket_ms, buckets)
  local current = math.floor(now / bucket_ms)
  local oldest = current - buckets
  local flat = redis.call('HGETALL', key)
  local result = {0}
  for i = 1, #flat, 2 do
    local index = tonumber(flat[i])
    if index and index >= oldest then
      local count = tonumber(flat[i + 1]) or 0
      result[1] = result[1] + count
      result[#result + 1] = index
      result[#result + 1] = count
    end
  end
  return result
end

for i, key in ipairs(KEYS) do
  local tenant_id = redis.call('GET', key)
  if tenant_id then
    local fields = redis.call('HGETALL', ARGV[1] .. tenant_id)
    local plan = nil
    for f = 1, #fields, 2 do
      if fields[f] == 'plan' then plan = fields[f + 1] end
    end

    local stream = ''
    local streams_key = ARGV[1] .. tenant_id .. ARGV[2]
    if ARGV[6] ~= '' then
      stream = redis.call('HGET', streams_key, ARGV[6]) or ''
    end
    if stream == '' and ARGV[7] ~= '' then
      stream = redis.call('HGET', streams_key, ARGV[7]) or ''
    end

    local now = tonumber(ARGV[5])
    local prefix = ARGV[3] .. tenant_id .. ARGV[4]
    local fills = {}
    local at = 14
    for _ = 1, tonumber(ARGV[13]) do
      local name, count = ARGV[at], tonumber(ARGV[at + 1])
      at = at + 2
      if name == plan then
        for w = 0, count - 1 do
          local base = at + 3 * w
          fills[#fills + 1] = fill(prefix .. ARGV[base], now, tonumber(ARGV[base + 1]),
                                   tonumber(ARGV[base + 2]))
        end
      end
      at = at + 3 * count
    end
    -- the tenant's domains, read in this same round trip
    local domains = redis.call('SMEMBERS', ARGV[1] .. tenant_id .. ARGV[#ARGV])
    -- the ladder's suspensions of this sender and its domain, and its offences
    local ladder = {false, false, 0}
    local suspended = prefix .. ARGV[8]
    if ARGV[11] ~= '' then
      local entries = redis.call('HMGET', suspended, ARGV[10], ARGV[11])
      ladder[1], ladder[2] = entries[1], entries[2]
    else
      ladder[1] = redis.call('HGET', suspended, ARGV[10])
    end
    ladder[3] = tonumber(redis.call('HGET', prefix .. ARGV[9], ARGV[12]) or '0') or 0
    return {i, tenant_id, stream, fills, fields, domains, ladder}
  end
end
return {}
