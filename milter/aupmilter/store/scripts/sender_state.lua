-- sender_state.lua: the one read at MAIL FROM.
--
-- Finds the first mapping key that exists, in the order given, and returns the
-- tenant it names together with that tenant's hash. The caller decides the
-- order (the SASL login alone, or the sender domain then its parents), so no
-- policy lives here.
--
-- KEYS[1..n]  mapping keys (aup:login:<login> or aup:domain:<domain>), most
--             specific first
-- ARGV[1]     prefix of tenant hashes ("aup:tenant:"); the hash key is built
--             from it because the tenant id is only known after the lookup
--
-- ARGV[2]     suffix of the tenant's domains set (":domains"), read for the
--             end-of-message checks (issue 4) in this same round trip
--
-- Returns     {} when no mapping exists;
--             {matched_index, tenant_id, domains, field1, value1, ...}
--             otherwise, where domains is SMEMBERS of the tenant's domains
--             set (a nested list) and the field list is HGETALL of the tenant
--             hash (empty when the mapping points at a tenant with no hash).
--
-- Not Redis-Cluster-safe as written (the tenant key is not in KEYS); the
-- daemon targets a standalone or Sentinel-managed Redis.

for i, key in ipairs(KEYS) do
  local tenant_id = redis.call('GET', key)
  if tenant_id then
    local result = {i, tenant_id}
    -- issue 4: the tenant's domains, for the From/Reply-To checks at end of message
    result[#result + 1] = redis.call('SMEMBERS', ARGV[1] .. tenant_id .. ARGV[2])
    local fields = redis.call('HGETALL', ARGV[1] .. tenant_id)
    for _, item in ipairs(fields) do
      result[#result + 1] = item
    end
    return result
  end
end
return {}
