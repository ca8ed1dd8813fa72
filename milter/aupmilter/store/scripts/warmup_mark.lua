-- warmup_mark.lua: a warm-up ramp's change written once, with its audit event.
--
-- The MAIL FROM of every worker and relay computes the scale a tenant runs
-- at (policy/warmup.py); the first to see a change (a step up, a pause, a
-- resume, the end of the ramp) records it here. The write happens only if
-- the tenant hash still holds the state the change was computed from, so of
-- the transactions that see one change at once, one writes it and audits it;
-- the others find the state moved and do nothing. Rare: once per change per
-- tenant, pipelined in front of a script call the milter makes anyway.
--
-- KEYS[1]     the tenant hash (aup:tenant:<id>, or aup:tenant:{<id>} on a Cluster)
-- KEYS[2]     the audit stream (aup:audit); absent on a Redis Cluster, where the
--             caller audits the change itself when this script answers 1
-- ARGV[1]     the ramp's start as the change saw it (the warmup_started_at value,
--             compared as a number): a ramp restarted meanwhile makes it stale
-- ARGV[2]     the scale field's value as the change saw it ("" when absent)
-- ARGV[3]     "1" when the change saw a pause in force, "0" when not
-- ARGV[4]     the field names: start, ARGV[5] scale, ARGV[6] paused-at,
--             ARGV[7] finished-at (store/keys.py FIELD_WARMUP_*)
-- ARGV[8]     N, then N field/value pairs to set
-- then        M, then M fields to delete
-- then        (with KEYS[2]) the MINID of the stream's retention, then the
--             event's field/value pairs
--
-- Returns     1 when written (and, with KEYS[2], audited), 0 when the hash no
--             longer holds the state compared (nothing written)
--
-- Cluster safety: with KEYS[1] alone every key is on the tenant's slot; the
-- two-key form is for one server or Sentinel only (the stream has its own slot).

local hash = KEYS[1]
local started = redis.call('HGET', hash, ARGV[4])
if not started or tonumber(started) ~= tonumber(ARGV[1]) then
  return 0
end
if (redis.call('HGET', hash, ARGV[5]) or '') ~= ARGV[2] then
  return 0
end
local paused = redis.call('HEXISTS', hash, ARGV[6]) == 1
if paused ~= (ARGV[3] == '1') or redis.call('HEXISTS', hash, ARGV[7]) == 1 then
  return 0
end

local at = 8
local sets = tonumber(ARGV[at])
at = at + 1
if sets > 0 then
  local pairs = {}
  for i = 0, 2 * sets - 1 do
    pairs[#pairs + 1] = ARGV[at + i]
  end
  redis.call('HSET', hash, unpack(pairs))
end
at = at + 2 * sets
local deletes = tonumber(ARGV[at])
at = at + 1
if deletes > 0 then
  local names = {}
  for i = 0, deletes - 1 do
    names[#names + 1] = ARGV[at + i]
  end
  redis.call('HDEL', hash, unpack(names))
end
at = at + deletes

if KEYS[2] then
  local event = {}
  for i = at + 1, #ARGV do
    event[#event + 1] = ARGV[i]
  end
  redis.call('XADD', KEYS[2], 'MINID', ARGV[at], '*', unpack(event))
end
return 1
