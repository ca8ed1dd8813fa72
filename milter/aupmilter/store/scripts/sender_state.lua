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
-- Returns     {} when no mapping exists;
--             {matched_index, tenant_id, field1, value1, ...} otherwise, where
--             the field list is HGETALL of the tenant hash (empty when the
--             mapping points at a tenant with no hash).
--
-- Not Redis-Cluster-safe as written (the tenant key is not in KEYS); the
-- daemon targets a standalone or Sentinel-managed Redis.

for i, key in ipairs(KEYS) do
  local tenant_id = redis.call('GET', key)
  if tenant_id then
    local result = {i, tenant_id}
    local fields = redis.call('HGETALL', ARGV[1] .. tenant_id)
    for _, item in ipairs(fields) do
      result[#result + 1] = item
    end
    return result
  end
end
return {}
