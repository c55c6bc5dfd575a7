"""Lua scripts that make each multi-key write atomic.

Redis runs a script without interleaving other commands, so a conversation's
events, its session record, the dedupe table, the live index and the live
fan-out either all change or none do: nothing half-written reaches Redis, and
subscribers see frames in exactly the order of the stream. Likewise an agent
account, its index entry and its login tokens change together.
"""

from __future__ import annotations

# KEYS: lock; ARGV: owner token. Deletes the lock only if we still own it.
RELEASE = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# KEYS: lock; ARGV: owner token, ttl_ms. Extends the lock only if we still own it.
EXTEND = r"""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: lock; ARGV: owner token, ttl_ms. Takes a free lock, or re-takes one this owner
# still holds (a release that failed during a Redis outage must not block the turn).
ACQUIRE = r"""
local held = redis.call('GET', KEYS[1])
if held == false or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""

# -- the turn runner's scripts, built from shared Lua functions -----------------------

# field(entry, name): the value of `name` in a stream entry ({id, {field, value, ...}}).
_FIELD_FN = r"""
local function field(entry, name)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] end
  end
  return nil
end
"""

# begin(session, lock, owner, message id, now, channel, frame)
# Marks the turn for a customer message as started, before the pipeline runs (and so
# before any custom action can have an effect). Only the lock holder may: error
# "lock_lost" otherwise, and error "no_session" if the session expired; nothing is
# written then. The marker (turn_message, turn_owner, turn_started_at) is removed by
# the append that stores the turn's result. Returns {0} for a fresh start, or
# {1, owner, started_at} when an earlier attempt started this same message and never
# stored a result: that attempt died mid-turn, and the caller must not run it again.
# On a fresh start, `frame` (the bot's typing indicator; '' for none) is published on
# `channel`.
_BEGIN_FN = r"""
local function begin(session, lock, owner, message, now, channel, frame)
  if redis.call('GET', lock) ~= owner then
    return redis.error_reply('lock_lost')
  end
  if redis.call('EXISTS', session) == 0 then
    return redis.error_reply('no_session')
  end
  local mark = redis.call('HMGET', session, 'turn_message', 'turn_owner', 'turn_started_at')
  redis.call('HSET', session, 'turn_message', message, 'turn_owner', owner,
             'turn_started_at', now)
  if mark[1] == message then
    return {1, mark[2] or '', mark[3] or ''}
  end
  if frame ~= '' then redis.call('PUBLISH', channel, frame) end
  return {0}
end
"""

# claim(session, events, lock, owner, ttl_ms, mode)
# A conversation's pending turns, with its turn lock changed in the same step, so no
# message can slip between "nothing pending" and "lock released". `owner` is '' for none.
# mode:
#   'peek'  read only;
#   'take'  when a customer message is pending, take the lock (free, or already held by
#           this owner: a release that failed during a Redis outage must not block the
#           turn); when none is, release this owner's lock if it holds one;
#   'next'  the holder after a turn: keep the lock (as it is) when a message is pending,
#           release it when none is.
# Returns {record (flat HGETALL), rows, held (1|0), lock_ttl_ms}: rows are the XRANGE
# entries of customer (role "user") messages after the session's turn cursor; held says
# whether the caller holds the lock after the call; lock_ttl_ms is what is left of
# another holder's lock (0 when free or ours). {} for rows and 0 for held when the
# session is gone.
_CLAIM_FN = r"""
local function claim(session, events, lock, owner, ttl_ms, mode)
  local record = redis.call('HGETALL', session)
  local messages = {}
  if #record > 0 then
    local start = '-'
    for i = 1, #record, 2 do
      if record[i] == 'cursor' and record[i + 1] ~= '' then
        start = '(' .. record[i + 1]
      end
    end
    for _, row in ipairs(redis.call('XRANGE', events, start, '+')) do
      local data = field(row, 'data')
      if field(row, 'kind') == 'message' and data and cjson.decode(data).role == 'user' then
        messages[#messages + 1] = row
      end
    end
  end
  if mode == 'peek' then
    return {record, messages, 0, 0}
  end
  local held = redis.call('GET', lock)
  if #messages == 0 then
    if owner ~= '' and held == owner then redis.call('DEL', lock) end
    return {record, messages, 0, 0}
  end
  if mode == 'take' and (held == false or held == owner) then
    redis.call('SET', lock, owner, 'PX', ttl_ms)
    return {record, messages, 1, 0}
  end
  if mode == 'next' and held == owner then
    return {record, messages, 1, 0}
  end
  return {record, messages, 0, math.max(redis.call('PTTL', lock), 0)}
end
"""

# context(events, message id, limit, profile cursor)
# What a turn needs to know of the conversation. Returns {history, signals, last_id}:
# history is up to `limit` message entries stored before the turn's message, newest
# first (the stream is read backwards in pages, so a long conversation costs the same as
# a short one); signals are the `track` entries after the profile cursor ('' for the
# start of the stream), oldest first; last_id is the id of the last entry after the
# profile cursor, of any kind ('' when there is none), where the cursor moves to.
_CONTEXT_FN = r"""
local function context(events, message, limit, cursor)
  local page = math.max(limit * 4, 64)
  local history = {}
  local stop = '(' .. message
  while #history < limit do
    local rows = redis.call('XREVRANGE', events, stop, '-', 'COUNT', page)
    for _, row in ipairs(rows) do
      if field(row, 'kind') == 'message' then history[#history + 1] = row end
      if #history == limit then break end
    end
    if #rows < page then break end
    stop = '(' .. rows[#rows][1]
  end
  local start = '-'
  if cursor ~= '' then start = '(' .. cursor end
  local signals = {}
  local last = ''
  for _, row in ipairs(redis.call('XRANGE', events, start, '+')) do
    last = row[1]
    if field(row, 'kind') == 'track' then signals[#signals + 1] = row end
  end
  return {history, signals, last}
end
"""

# KEYS: session, events, lock; ARGV: owner token ('' for a new one), ttl_ms, mode.
# See claim().
CLAIM = _FIELD_FN + _CLAIM_FN + r"""
return claim(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[2], ARGV[3])
"""

# The start of a turn in one round trip: begin() and then, on a fresh start, context().
# KEYS: session, lock, events; ARGV: owner token, message event id, now, channel, frame,
# history limit, profile cursor. Returns {begin's reply, context's reply or {}}.
START_TURN = _FIELD_FN + _BEGIN_FN + _CONTEXT_FN + r"""
local started = begin(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])
if started.err then return started end
if started[1] ~= 0 then return {started, {}} end
return {started, context(KEYS[3], ARGV[2], tonumber(ARGV[6]), ARGV[7])}
"""

# KEYS: session, events, client_ids, live, and the lock when guard_json has `next`
# ARGV: sid, now, ttl, channel, updates_channel, client_id, cursor, fields_json,
#       guard_json, n, then n pairs (kind, data_json), then optionally a frame to publish
#       on `channel` once everything is written (the end of the bot's typing indicator)
# guard_json: {"allow": {status: agent name or "*"}, "reopen": bool,
#              "turn": {"message": event id, "owner": lock owner}, "next": owner}, all optional.
#   turn: write only if the session's turn marker (START_TURN) still names this message
#   and owner; else error "stale_turn <owner>". Checked before `allow`: a turn result
#   from a holder that lost the turn is refused whatever the conversation's status.
#   allow: write only if the session's status is a key and its `agent` field matches
#   the value ("*": any); else error "conflict <status> <agent>". The check runs after
#   the client_id dedupe, so a resend of a stored message is acked even if the
#   conversation changed hands since. reopen: a closed conversation becomes `bot`
#   again (a customer writing); decided here so a close on another instance counts.
#   next: the lock owner token of a turn's holder: once the write is done, claim() in
#   'next' mode (what is pending now; the lock is released when nothing is).
# The events and the trailing frame are published as one message: the frame itself when
# there is one, else a JSON array of them in order.
# Returns {duplicate(0|1), event_id...}, or {that, claim()'s reply} with `next`; error
# "no_session" if the session expired.
APPEND = _FIELD_FN + _CLAIM_FN + r"""
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('no_session')
end
local sid, now, ttl = ARGV[1], ARGV[2], tonumber(ARGV[3])
local client_id = ARGV[6]
if client_id ~= '' then
  local seen = redis.call('HGET', KEYS[3], client_id)
  if seen then
    return {1, seen}
  end
end
local guard = cjson.decode(ARGV[9])
if type(guard.turn) == 'table' then
  local mark = redis.call('HMGET', KEYS[1], 'turn_message', 'turn_owner')
  if mark[1] ~= guard.turn.message or mark[2] ~= guard.turn.owner then
    return redis.error_reply('stale_turn ' .. (mark[2] or ''))
  end
end
local status = redis.call('HGET', KEYS[1], 'status') or 'bot'
if type(guard.allow) == 'table' then
  local owner = redis.call('HGET', KEYS[1], 'agent') or ''
  local need = guard.allow[status]
  if need == nil or (need ~= '*' and need ~= owner) then
    return redis.error_reply('conflict ' .. status .. ' ' .. owner)
  end
end
if guard.reopen == true and status == 'closed' then
  redis.call('HSET', KEYS[1], 'status', 'bot')
end
local n = tonumber(ARGV[10])
local out = {0}
local last = nil
local trend = nil
local frames = {}
for i = 0, n - 1 do
  local kind, data = ARGV[11 + 2 * i], ARGV[12 + 2 * i]
  local id = redis.call('XADD', KEYS[2], '*', 'kind', kind, 'ts', now, 'data', data)
  out[#out + 1] = id
  last = id
  if kind == 'turn' then
    -- The last 10 turn sentiments as -1/0/1, for the agent console's sparkline.
    local sentiment = cjson.decode(data).sentiment
    if type(sentiment) == 'string' then
      if trend == nil then
        trend = cjson.decode(redis.call('HGET', KEYS[1], 'sentiment_trend') or '[]')
      end
      local value = 0
      if sentiment == 'negative' then value = -1 elseif sentiment == 'positive' then value = 1 end
      trend[#trend + 1] = value
      while #trend > 10 do table.remove(trend, 1) end
    end
  end
  local rest = ''
  if data ~= '{}' then rest = ',' .. string.sub(data, 2, -2) end
  frames[#frames + 1] = '{"type":"' .. kind .. '","session_id":"' .. sid ..
    '","event_id":"' .. id .. '","ts":' .. now .. rest .. '}'
end
local after = ARGV[11 + 2 * n]
if after ~= nil and after ~= '' then frames[#frames + 1] = after end
if #frames == 1 then
  redis.call('PUBLISH', ARGV[4], frames[1])
elseif #frames > 1 then
  redis.call('PUBLISH', ARGV[4], '[' .. table.concat(frames, ',') .. ']')
end
if client_id ~= '' and last then
  redis.call('HSET', KEYS[3], client_id, out[2])
end
local fields = cjson.decode(ARGV[8])
for k, v in pairs(fields) do
  if v == cjson.null then
    redis.call('HDEL', KEYS[1], k)
  else
    redis.call('HSET', KEYS[1], k, v)
  end
end
if last then redis.call('HSET', KEYS[1], 'last_event_id', last) end
if trend ~= nil then redis.call('HSET', KEYS[1], 'sentiment_trend', cjson.encode(trend)) end
-- waiting_since follows the status, whoever changed it: set on entering `waiting`.
if redis.call('HGET', KEYS[1], 'status') == 'waiting' then
  if redis.call('HEXISTS', KEYS[1], 'waiting_since') == 0 then
    redis.call('HSET', KEYS[1], 'waiting_since', now)
  end
else
  redis.call('HDEL', KEYS[1], 'waiting_since')
end
if ARGV[7] ~= '' then
  -- The cursor only moves forward: a holder that lost the lock while it stalled must not
  -- move it back past turns its successor answered (they would be answered again).
  local current = redis.call('HGET', KEYS[1], 'cursor') or ''
  local cm, cs = string.match(current, '^(%d+)-(%d+)$')
  local nm, ns = string.match(ARGV[7], '^(%d+)-(%d+)$')
  if cm == nil or tonumber(nm) > tonumber(cm)
      or (tonumber(nm) == tonumber(cm) and tonumber(ns) > tonumber(cs)) then
    redis.call('HSET', KEYS[1], 'cursor', ARGV[7])
  end
end
redis.call('HSET', KEYS[1], 'updated_at', now)
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('ZADD', KEYS[4], now, sid)
local summary = {session_id = sid}
for _, k in ipairs({'status', 'created_at', 'updated_at', 'last_message', 'last_role',
                    'last_intent', 'sentiment', 'sentiment_trend', 'waiting_since',
                    'handoff_reason', 'agent', 'customer'}) do
  local v = redis.call('HGET', KEYS[1], k)
  if v then summary[k] = v end
end
redis.call('PUBLISH', ARGV[5], cjson.encode({type = 'session_update', session = summary}))
if type(guard.next) == 'string' then
  return {out, claim(KEYS[1], KEYS[2], KEYS[5], guard.next, 0, 'next')}
end
return out
"""

# -- agent accounts (bot/agents.py) ---------------------------------------------------
# An account is its hash with a `password`; its `generation` (random, new with every
# account and every password reset) is copied into each login token, so a token opens
# only the account, and the password, it was granted for. Each script below changes an
# account and its tokens in one step: no login on another instance can land between
# reading an agent's token set and deleting what it lists.

# revoke(tokens, token prefix): delete an agent's token set and every token key it lists.
_REVOKE_FN = r"""
local function revoke(tokens, prefix)
  for _, digest in ipairs(redis.call('SMEMBERS', tokens)) do
    redis.call('DEL', prefix .. digest)
  end
  redis.call('DEL', tokens)
end
"""

# KEYS: agent, agent index, agent's token set; ARGV: name, role, password hash, created_at,
# generation, token key prefix. Creates the account and lists it; 0 (nothing written) when
# the name has an account. A hash without a password is no account (what a two-step
# write that stopped half-way leaves): it is replaced.
ADD_AGENT = _REVOKE_FN + r"""
if redis.call('HEXISTS', KEYS[1], 'password') == 1 then
  return 0
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'role', ARGV[2], 'password', ARGV[3], 'created_at', ARGV[4],
           'generation', ARGV[5])
redis.call('SADD', KEYS[2], ARGV[1])
revoke(KEYS[3], ARGV[6])  -- a new account starts with no logins
return 1
"""

# KEYS: agent, agent's token set; ARGV: new password hash, new generation, token key
# prefix. Sets the password and revokes every login; 0 (nothing written) when there is no
# account, so a reset racing a removal cannot bring a password-only account back.
RESET_AGENT = _REVOKE_FN + r"""
if redis.call('HEXISTS', KEYS[1], 'password') == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'password', ARGV[1], 'generation', ARGV[2])
revoke(KEYS[2], ARGV[3])
return 1
"""

# KEYS: agent, agent's token set, agent index; ARGV: name, token key prefix. Deletes the
# account, its index entry and its logins. 1 when there was anything to delete, a
# password-less leftover included; 0 when there was none.
REMOVE_AGENT = _REVOKE_FN + r"""
local found = redis.call('DEL', KEYS[1]) + redis.call('SREM', KEYS[3], ARGV[1])
revoke(KEYS[2], ARGV[2])
if found > 0 then return 1 end
return 0
"""

# KEYS: agent, token, agent's token set; ARGV: the password hash the login checked, name,
# ttl, token digest. Stores the token ("name:generation") only if the account still has
# that hash: a reset (or removal) while the password was being checked revokes this login.
GRANT = r"""
local account = redis.call('HMGET', KEYS[1], 'password', 'generation')
if account[1] ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[2] .. ':' .. (account[2] or ''), 'EX', ARGV[3])
redis.call('SADD', KEYS[3], ARGV[4])
-- The set lives as long as its newest token; stale digests in it are harmless.
redis.call('EXPIRE', KEYS[3], ARGV[3])
return 1
"""

# KEYS: session; ARGV: turn message id, lock owner token, channel, frames (JSON). Publishes
# a turn's stream frames only while the bot has the conversation and the turn marker is
# the caller's, checked in the same step (no delta can follow a takeover's events), in the
# one round trip a plain PUBLISH costs. Answers "" when published, else why not: "stale"
# (the turn went to another holder) or the conversation's status.
SHOW_TURN = r"""
local mark = redis.call('HMGET', KEYS[1], 'status', 'turn_message', 'turn_owner')
if mark[2] ~= ARGV[1] or mark[3] ~= ARGV[2] then
  return 'stale'
end
local status = mark[1] or 'bot'
if status ~= 'bot' then
  return status
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return ''
"""
