"""The Lua scripts behind :class:`~lookalike_server.store.redis.RedisStore`.

Redis runs each script atomically (no other command between its steps), which
is what makes every record transition of the write protocol race-free. Key
layout and record states: see :mod:`lookalike_server.store.redis_records`.

Two scripts build a key name from what they read (CLAIM and GET_BY_KEY the
record ``ARGV[1] .. id``, CLAIM the owner's lease ``ARGV[9] .. owner``), so it
cannot be passed in KEYS. On Redis Cluster that is allowed only for a key of
the slot the script runs in; the cluster layout (``KeyLayout(cluster=True)``)
guarantees it by giving the record, lease and index keys one hash tag. Every
KEYS list here therefore maps to one slot too.
"""

# KEYS: idx:sha, idx:key, next_id, pending, attrs
# ARGV: item key prefix, sha, key, attrs JSON, dedupe mode, created_at, owner,
#       token, lease key prefix, attribute names...
# Returns {outcome, id, record fields as a flat list}; outcome is one of
#   0 found a complete record, 1 created a pending record owned by (owner, token),
#   2 found a pending record whose owner's lease lives (the caller waits),
#   3 took over a pending record whose owner is gone (now owned by owner, token).
# An empty owner (the legacy ``reserve``) never takes over: it reports 2.
CLAIM = """
local existing
if ARGV[5] == 'content' then
  existing = redis.call('HGET', KEYS[1], ARGV[2])
else
  existing = redis.call('HGET', KEYS[2], ARGV[3])
end
if existing then
  local ikey = ARGV[1] .. existing
  local state = redis.call('HGET', ikey, 'state')
  if state == 'complete' then
    return {0, existing, redis.call('HGETALL', ikey)}
  end
  if state == 'pending' then
    local owner = redis.call('HGET', ikey, 'owner') or ''
    local token = redis.call('HGET', ikey, 'token') or ''
    local live = owner ~= '' and token ~= '' and redis.call('EXISTS', ARGV[9] .. owner) == 1
    if live or ARGV[7] == '' then
      return {2, existing, redis.call('HGETALL', ikey)}
    end
    redis.call('HSET', ikey, 'owner', ARGV[7], 'token', ARGV[8])
    return {3, existing, redis.call('HGETALL', ikey)}
  end
  -- Gone, or being deleted: never revived. Reserve afresh under a new id,
  -- taking the index entries over (the delete only drops entries naming it).
end
local id = redis.call('INCR', KEYS[3])
local rec = {'key', ARGV[3], 'attrs', ARGV[4], 'sha', ARGV[2], 'models', '[]',
             'created_at', ARGV[6], 'state', 'pending', 'owner', ARGV[7], 'token', ARGV[8]}
redis.call('HSET', ARGV[1] .. id, unpack(rec))
redis.call('HSET', KEYS[1], ARGV[2], id)
redis.call('HSET', KEYS[2], ARGV[3], id)
redis.call('ZADD', KEYS[4], ARGV[6], id)
for i = 10, #ARGV do
  redis.call('SADD', KEYS[5], ARGV[i])
end
return {1, tostring(id), rec}
"""

# KEYS: item:<id>, pending.  ARGV: id, models JSON list, token, drop JSON list.
# With a token: only the pending record that token owns is completed. Without:
# any record not being deleted (adding models to a complete item, or legacy).
# Model keys in ``drop`` (bare names of the first release) are removed first.
# Returns the record fields, or an empty list when the condition fails.
MARK_COMPLETE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'deleting' then
  return {}
end
if ARGV[3] ~= '' and (state ~= 'pending' or redis.call('HGET', KEYS[1], 'token') ~= ARGV[3]) then
  return {}
end
local drop = {}
for _, m in ipairs(cjson.decode(ARGV[4] or '[]')) do drop[m] = true end
local models = {}
local seen = {}
for _, m in ipairs(cjson.decode(redis.call('HGET', KEYS[1], 'models') or '[]')) do
  if not drop[m] and not seen[m] then
    table.insert(models, m)
    seen[m] = true
  end
end
for _, m in ipairs(cjson.decode(ARGV[2])) do
  if not seen[m] then
    table.insert(models, m)
    seen[m] = true
  end
end
local encoded = '[]'
if #models > 0 then encoded = cjson.encode(models) end
redis.call('HSET', KEYS[1], 'models', encoded, 'state', 'complete')
redis.call('HDEL', KEYS[1], 'owner', 'token')
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('HGETALL', KEYS[1])
"""

# KEYS: item:<id>, pending.  ARGV: id, owner, token, expected token, mode.
# Moves a record to "deleting", owned by (owner, token). Modes:
#   'own'   the record is pending and owned by the expected token (a failed insert);
#   'sweep' the record is not complete and still has the expected token;
#   'any'   any record (a Delete), whatever its state.
# Returns the record fields before the change, or {} when the condition fails.
BEGIN_DELETE = """
local rec = redis.call('HGETALL', KEYS[1])
if #rec == 0 then return {} end
local state = redis.call('HGET', KEYS[1], 'state')
local token = redis.call('HGET', KEYS[1], 'token') or ''
if ARGV[5] == 'own' and (state ~= 'pending' or token ~= ARGV[4]) then return {} end
if ARGV[5] == 'sweep' and (state == 'complete' or token ~= ARGV[4]) then return {} end
redis.call('HSET', KEYS[1], 'state', 'deleting', 'owner', ARGV[2], 'token', ARGV[3])
redis.call('ZADD', KEYS[2], redis.call('HGET', KEYS[1], 'created_at') or 0, ARGV[1])
return rec
"""

# KEYS: item:<id>, idx:sha, idx:key, pending.  ARGV: id, token ('' = any).
# Returns the removed record's fields, or an empty list when there was none
# (or it is no longer owned by the token).
DELETE = """
local rec = redis.call('HGETALL', KEYS[1])
if #rec == 0 then
  redis.call('ZREM', KEYS[4], ARGV[1])
  return {}
end
if ARGV[2] and ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'token') ~= ARGV[2] then
  return {}
end
local sha = redis.call('HGET', KEYS[1], 'sha')
local key = redis.call('HGET', KEYS[1], 'key')
-- Only drop index entries that still name this id: a later item may own them.
if sha and redis.call('HGET', KEYS[2], sha) == ARGV[1] then
  redis.call('HDEL', KEYS[2], sha)
end
if key and redis.call('HGET', KEYS[3], key) == ARGV[1] then
  redis.call('HDEL', KEYS[3], key)
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return rec
"""

# KEYS: item:<id>.  ARGV: models JSON (expected current list), new models JSON.
# Compare-and-set of a complete record's model list (the verify sweep and the
# migration of bare names). Returns 1 when set.
SET_MODELS = """
if redis.call('HGET', KEYS[1], 'state') ~= 'complete' then return 0 end
local now = cjson.decode(redis.call('HGET', KEYS[1], 'models') or '[]')
local want = cjson.decode(ARGV[1])
if #now ~= #want then return 0 end
for i = 1, #now do
  if now[i] ~= want[i] then return 0 end
end
local encoded = '[]'
local new = cjson.decode(ARGV[2])
if #new > 0 then encoded = cjson.encode(new) end
redis.call('HSET', KEYS[1], 'models', encoded)
return 1
"""

# KEYS: idx:key.  ARGV: item key prefix, client key.  Returns {id, fields} or {}.
GET_BY_KEY = """
local id = redis.call('HGET', KEYS[1], ARGV[2])
if not id then return {} end
local rec = redis.call('HGETALL', ARGV[1] .. id)
if #rec == 0 then return {} end
return {id, rec}
"""
