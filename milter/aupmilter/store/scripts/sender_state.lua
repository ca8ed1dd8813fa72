-- sender_state.lua: the one read at MAIL FROM.
--
-- Returns the tenant of the sender, that tenant's hash, the message stream of
-- the sender, the current fill of every rate window of the tenant's plan, the
-- tenant's domains and the ladder's suspensions. The caller decides the lookup
-- order (the SASL login alone, or the sender domain then its parents) and the
-- windows, so no policy lives here. Two forms, chosen by ARGV[1]:
--
-- Lookup form (ARGV[1] = ""; standalone and Sentinel): the script finds the
-- first mapping key that exists, in the order given, and builds the tenant's
-- keys from the prefixes in ARGV.
--   KEYS[1]     the registry marker (aup:registry), KEYS[2] the tenant index
--               (aup:tenants): when no mapping exists and neither of them does,
--               the store has lost its state (no persistence, an empty replica,
--               a flush) and the answer is {0}, not "unknown sender"
--   KEYS[3..n]  mapping keys (aup:login:<login> or aup:domain:<domain>), most
--               specific first
--   ARGV[2]     head of the tenant hash key ("aup:tenant:"), ARGV[3] tail of
--               the stream hash key after the tenant id (":streams"),
--               ARGV[#ARGV] (last) tail of the domains set key (":domains")
--
-- Resolved form (ARGV[1] = the tenant id; Redis Cluster): the client already
-- knows the tenant from its mapping cache (store/client.MappingCache), and the
-- script checks that the tenant still holds the name that mapped to it.
--   KEYS[1]     the tenant hash (aup:tenant:{<id>}), KEYS[2] its streams hash,
--               KEYS[3] its domains set, KEYS[4] its set of the names of this
--               lookup's kind (...:logins or ...:domains), KEYS[5] the
--               suspended hash, KEYS[6] the offences hash
--   ARGV[2]     the name that mapped to the tenant: a member of KEYS[4], or the
--               answer is {-1} (the mapping moved: the client resolves again)
--
-- Both forms:
--   ARGV[4]     head and ARGV[5] tail of the hash-tagged per-tenant prefix
--               ("aup:{" and "}:"): window keys are ARGV[4]..id..ARGV[5]..suffix
--   ARGV[6]     now, in milliseconds since the epoch
--   ARGV[7]     SASL login ("" when none), ARGV[8] envelope sender ("" for <>):
--               the stream is the login's, else the sender's
--   ARGV[9]     the suspended hash's suffix after the tagged prefix
--               ("suspended"), ARGV[10] the offences hash's ("offences")
--               (lookup form; the resolved form has them in KEYS)
--   ARGV[11]    the sender's field in the suspended hash ("sender:<identity>"),
--               ARGV[12] its domain's ("domain:<domain>"; "" for the null
--               sender), ARGV[13] the sender identity, its field in the
--               offences hash
--   ARGV[14]    number of plans P; then per plan: name, window count W, and W
--               triples (key suffix, bucket length in ms, buckets per window)
--   then        the warm-up section: the tenant hash's field names of the
--               ramp's start and of its end (keys.FIELD_WARMUP_STARTED_AT,
--               FIELD_WARMUP_FINISHED_AT), the number Q of plans with a warm-up,
--               and per such plan: name, bucket length in ms, buckets per
--               period, and the key suffixes of its complaints, bounces and
--               delivered rate counters (after the tagged prefix); in the lookup
--               form the domains tail above stays the last ARGV
--
-- Returns     {} when no mapping exists (lookup form); {0} when none exists
--             and the store holds no tenant registry (lookup form); {-1} when
--             the tenant no longer holds the name (resolved form); otherwise
--             {matched_index, tenant_id, stream, fills, fields, domains, ladder,
--             rates}:
--             stream is "bulk", "transactional" or "" (none set),
--             fills has one entry per window of the tenant's plan (empty when
--             the plan is not in ARGV): {used, index1, count1, index2, ...},
--             used being the sum over the current bucket and the `buckets`
--             before it, the pairs the buckets that make it up,
--             fields is HGETALL of the tenant hash (empty when missing),
--             domains SMEMBERS of the tenant's domains set (From, Reply-To and
--             Sender are checked against it), ladder {sender_entry,
--             domain_entry, offences}: HMGET of the two fields in the suspended
--             hash (nil when absent; the domain's nil when ARGV[12] is "") and
--             the sender's offence count (0 when none), rates {complaints,
--             bounces, delivered}: the three rate counters' fills over the
--             plan's rate period (summed as the windows', policy.warmup pauses
--             the ramp on them), only for a tenant in warm-up (its hash has the
--             start field and not the end field) on a plan of the warm-up
--             section, else {} (3 HGETALLs, only then). matched_index is 0 in
--             the resolved form (the client knows it).
--
-- Field names: the one this script spells is the tenant hash's `plan`, to
-- pick the plan's windows (store/keys.py FIELD_PLAN; keep the two equal);
-- the warm-up fields' names come in ARGV. Every key name comes in KEYS or ARGV.
--
-- Cluster safety: the lookup form is not Cluster-safe (the tenant id is only
-- known after the lookup, so its keys cannot be passed in KEYS); the client
-- uses it only on a standalone or Sentinel-managed Redis. The resolved form
-- is: every key it touches carries the tenant's hash tag ({<id>}), those in
-- KEYS and the window and rate-counter keys it builds under the same tag once
-- it has read the plan (Redis Cluster allows undeclared keys of the declared keys' slot), so
-- the whole call runs on the tenant's slot. The mapping keys and the registry
-- marker live on other slots: the client reads them only on a cache miss
-- (store/client.Store._resolve).

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

local function state(i, tenant_id, tenant_key, streams_key, domains_key, suspended_key,
                     offences_key)
  local fields = redis.call('HGETALL', tenant_key)
  local plan = nil
  for f = 1, #fields, 2 do
    if fields[f] == 'plan' then plan = fields[f + 1] end
  end

  local stream = ''
  if ARGV[7] ~= '' then
    stream = redis.call('HGET', streams_key, ARGV[7]) or ''
  end
  if stream == '' and ARGV[8] ~= '' then
    stream = redis.call('HGET', streams_key, ARGV[8]) or ''
  end

  local now = tonumber(ARGV[6])
  local prefix = ARGV[4] .. tenant_id .. ARGV[5]
  local fills = {}
  local at = 15
  for _ = 1, tonumber(ARGV[14]) do
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
  local rates = {}
  local started, finished = false, false
  for f = 1, #fields, 2 do
    if fields[f] == ARGV[at] then started = true end
    if fields[f] == ARGV[at + 1] then finished = true end
  end
  local ramps = tonumber(ARGV[at + 2]) or 0
  at = at + 3
  for _ = 1, ramps do
    if started and not finished and ARGV[at] == plan then
      local bucket_ms, buckets = tonumber(ARGV[at + 1]), tonumber(ARGV[at + 2])
      for r = 3, 5 do
        rates[#rates + 1] = fill(prefix .. ARGV[at + r], now, bucket_ms, buckets)[1]
      end
    end
    at = at + 6
  end
  local domains = redis.call('SMEMBERS', domains_key)
  local ladder = {false, false, 0}
  if ARGV[12] ~= '' then
    local entries = redis.call('HMGET', suspended_key, ARGV[11], ARGV[12])
    ladder[1], ladder[2] = entries[1], entries[2]
  else
    ladder[1] = redis.call('HGET', suspended_key, ARGV[11])
  end
  ladder[3] = tonumber(redis.call('HGET', offences_key, ARGV[13]) or '0') or 0
  return {i, tenant_id, stream, fills, fields, domains, ladder, rates}
end

if ARGV[1] ~= '' then
  if redis.call('SISMEMBER', KEYS[4], ARGV[2]) == 0 then
    return {-1}
  end
  return state(0, ARGV[1], KEYS[1], KEYS[2], KEYS[3], KEYS[5], KEYS[6])
end

for i = 3, #KEYS do
  local tenant_id = redis.call('GET', KEYS[i])
  if tenant_id then
    local tenant_key = ARGV[2] .. tenant_id
    local prefix = ARGV[4] .. tenant_id .. ARGV[5]
    return state(i - 2, tenant_id, tenant_key, tenant_key .. ARGV[3], tenant_key .. ARGV[#ARGV],
                 prefix .. ARGV[9], prefix .. ARGV[10])
  end
end
if redis.call('EXISTS', KEYS[1]) == 0 and redis.call('EXISTS', KEYS[2]) == 0 then
  return {0}
end
return {}
