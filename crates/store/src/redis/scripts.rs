//! The Lua scripts that change jobs and records. Each runs atomically in Redis, so a
//! state change, its indexes, its event and the queue entry move together, and every
//! change a worker makes is checked against its claim in the same step.
//!
//! Keys, under the prefix `p` (ARGV[1] of every script):
//! - `p:job:{id}`: the job (a hash: the record's fields, `created_ms`, `steps`,
//!   `model`, `dataset`, `lease_until`, `entry` (its queue entry), `seq` (events));
//! - `p:jobs:{tenant}` and `p:jobs:{tenant}:{state}`: ids by creation time;
//! - `p:idem:{tenant}:{key}`: the job an Idempotency-Key made;
//! - `p:events:{id}`: the job's events, a stream whose entry ids are `{seq}-1`;
//! - `p:queue:{tenant}`: the tenant's queue, a stream read by the consumer group
//!   `workers`; `p:queue:tenants`: tenants that may have queued work;
//! - `p:leases`: running jobs by the end of their lease; `p:last-claim`: per tenant;
//! - `p:wake`: tokens idle workers block on; `p:dead`: jobs that ran out of attempts;
//! - `p:job-counts`: jobs per state;
//! - `p:{kind}:{id}`, `p:{kind}s:{tenant}`, `p:{kind}-sha:{tenant}:{sha256}`: models
//!   and datasets; `p:stored-bytes`: per tenant;
//! - `p:objects`, `p:object-sizes`: references to stored content;
//!   `p:object-lock:{sha256}`: who changes them and the content now (with a TTL);
//! - `p:notify:{id}`: a job's notification (url, state, attempts, last_error);
//!   `p:notify:due`: ended jobs' pending notifications by when they are due.

/// Helpers every job script starts with.
const PRELUDE: &str = r#"
local p = ARGV[1]
local function job_key(id) return p .. ':job:' .. id end
local function state_key(tenant, state) return p .. ':jobs:' .. tenant .. ':' .. state end
local function move_state(id, to)
  local j = job_key(id)
  local f = redis.call('HMGET', j, 'tenant', 'state', 'created_ms')
  if f[2] == to then return end
  redis.call('ZREM', state_key(f[1], f[2]), id)
  redis.call('ZADD', state_key(f[1], to), f[3], id)
  redis.call('HINCRBY', p .. ':job-counts', f[2], -1)
  redis.call('HINCRBY', p .. ':job-counts', to, 1)
  redis.call('HSET', j, 'state', to)
  -- An ended job's notification becomes due.
  if (to == 'succeeded' or to == 'failed' or to == 'cancelled')
      and redis.call('EXISTS', p .. ':notify:' .. id) == 1 then
    redis.call('ZADD', p .. ':notify:due', 'NX', 0, id)
  end
end
local function event(id, kind)
  local j = job_key(id)
  local f = redis.call('HMGET', j, 'state', 'phase', 'progress', 'metrics', 'artifacts', 'error', 'attempts')
  local err = 'null'
  if f[6] then err = cjson.encode(f[6]) end
  local data = '{"state":' .. cjson.encode(f[1]) .. ',"phase":' .. cjson.encode(f[2]) ..
    ',"progress":' .. f[3] .. ',"metrics":' .. f[4] .. ',"artifacts":' .. f[5] ..
    ',"error":' .. err .. ',"attempts":' .. f[7] .. '}'
  local seq = redis.call('HINCRBY', j, 'seq', 1)
  redis.call('XADD', p .. ':events:' .. id, seq .. '-1', 'kind', kind, 'data', data)
end
local function enqueue(id)
  local j = job_key(id)
  local tenant = redis.call('HGET', j, 'tenant')
  local stream = p .. ':queue:' .. tenant
  redis.pcall('XGROUP', 'CREATE', stream, 'workers', '0', 'MKSTREAM')
  local entry = redis.call('XADD', stream, '*', 'job', id)
  redis.call('HSET', j, 'entry', entry)
  redis.call('SADD', p .. ':queue:tenants', tenant)
  redis.call('LPUSH', p .. ':wake', '1')
  redis.call('LTRIM', p .. ':wake', 0, 63)
end
local function dequeue(id)
  local j = job_key(id)
  local f = redis.call('HMGET', j, 'tenant', 'entry')
  if f[2] then
    local stream = p .. ':queue:' .. f[1]
    redis.call('XACK', stream, 'workers', f[2])
    redis.call('XDEL', stream, f[2])
    redis.call('HDEL', j, 'entry')
  end
  redis.call('ZREM', p .. ':leases', id)
  redis.call('HSET', j, 'lease_until', 0)
end
local function holds(id, attempt)
  local f = redis.call('HMGET', job_key(id), 'state', 'attempts')
  return f[1] == 'running' and f[2] == attempt
end
local function dead_letter(id, reason)
  redis.call('XADD', p .. ':dead', 'MAXLEN', '~', 10000, '*', 'job', id, 'reason', reason)
end
"#;

/// ARGV: p, id, tenant, idempotency key (`''`: none), created_ms, the tenant's most
/// active jobs and training steps, the job's steps, then field/value pairs. Returns
/// `{'existing', id}` with the tenant's job of the same key, `{'quota', jobs, steps}`
/// with the tenant's active load when one more job would pass its limits, or
/// `{'inserted'}`.
const INSERT_JOB: &str = r#"
local id, tenant, key, created = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max_jobs, max_steps, steps = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local idem = p .. ':idem:' .. tenant .. ':' .. key
if key ~= '' then
  local existing = redis.call('GET', idem)
  if existing then return {'existing', existing} end
end
local jobs, active_steps = 0, 0
for _, state in ipairs({'queued', 'running'}) do
  for _, other in ipairs(redis.call('ZRANGE', state_key(tenant, state), 0, -1)) do
    jobs = jobs + 1
    active_steps = active_steps + tonumber(redis.call('HGET', job_key(other), 'steps') or '0')
  end
end
if jobs >= max_jobs or active_steps + steps > max_steps then
  return {'quota', tostring(jobs), tostring(active_steps)}
end
if key ~= '' then redis.call('SET', idem, id) end
local j = job_key(id)
for i = 9, #ARGV, 2 do redis.call('HSET', j, ARGV[i], ARGV[i + 1]) end
redis.call('ZADD', p .. ':jobs:' .. tenant, created, id)
redis.call('ZADD', state_key(tenant, 'queued'), created, id)
redis.call('HINCRBY', p .. ':job-counts', 'queued', 1)
local notify = redis.call('HGET', j, 'notify')
if notify then
  redis.call('HSET', p .. ':notify:' .. id, 'url', notify, 'state', 'pending', 'attempts', 0)
end
event(id, 'state')
enqueue(id)
return {'inserted'}
"#;

/// ARGV: p, job id, now (ms), lease end (ms). Takes an ended job's due notification:
/// the number of this try, or nil.
const CLAIM_NOTIFICATION: &str = r#"
local id, now, lease_end = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local due = p .. ':notify:due'
local at = redis.call('ZSCORE', due, id)
if not at or tonumber(at) > now then return false end
local state = redis.call('HGET', job_key(id), 'state')
if state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then return false end
redis.call('ZADD', due, lease_end, id)
return redis.call('HINCRBY', p .. ':notify:' .. id, 'attempts', 1)
"#;

/// ARGV: p, now (ms), lease (ms), max attempts, consumer, timestamp. Returns the
/// claimed job's id or nil.
const CLAIM: &str = r#"
local now, lease, max, consumer, ts = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6]
local function take(id)
  local j = job_key(id)
  redis.call('HINCRBY', j, 'attempts', 1)
  redis.call('HSET', j, 'lease_until', now + lease, 'updated_at', ts)
  move_state(id, 'running')
  redis.call('ZADD', p .. ':leases', now + lease, id)
  redis.call('HSET', p .. ':last-claim', redis.call('HGET', j, 'tenant'), now)
  event(id, 'state')
  return id
end
-- Leases that ran out: the job fails once out of attempts, else this claim takes
-- over its queue entry.
local again = nil
for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. ':leases', '-inf', '(' .. now)) do
  local j = job_key(id)
  local attempts = redis.call('HGET', j, 'attempts')
  if tonumber(attempts) >= max then
    local reason = 'the job was started ' .. attempts .. ' times and never finished (its worker died each time)'
    redis.call('HSET', j, 'error', reason, 'phase', 'done', 'updated_at', ts)
    dequeue(id)
    move_state(id, 'failed')
    dead_letter(id, reason)
    event(id, 'state')
  elseif not again then
    again = id
  end
end
if again then
  local f = redis.call('HMGET', job_key(again), 'tenant', 'entry')
  if f[2] then redis.call('XCLAIM', p .. ':queue:' .. f[1], 'workers', consumer, 0, f[2], 'JUSTID') end
  return take(again)
end
-- Otherwise the next job of the tenant with the fewest running, the least recently
-- served, the longest waiting.
local candidates = {}
for _, t in ipairs(redis.call('SMEMBERS', p .. ':queue:tenants')) do
  local first = redis.call('ZRANGE', state_key(t, 'queued'), 0, 0, 'WITHSCORES')
  if #first == 0 then
    redis.call('SREM', p .. ':queue:tenants', t)
  else
    local running = redis.call('ZCARD', state_key(t, 'running'))
    local last = tonumber(redis.call('HGET', p .. ':last-claim', t) or '0')
    table.insert(candidates, {running, last, tonumber(first[2]), t})
  end
end
table.sort(candidates, function(a, b)
  if a[1] ~= b[1] then return a[1] < b[1] end
  if a[2] ~= b[2] then return a[2] < b[2] end
  if a[3] ~= b[3] then return a[3] < b[3] end
  return a[4] < b[4]
end)
for _, c in ipairs(candidates) do
  local stream = p .. ':queue:' .. c[4]
  for _ = 1, 1000 do
    local r = redis.call('XREADGROUP', 'GROUP', 'workers', consumer, 'COUNT', 1, 'STREAMS', stream, '>')
    if not r then break end
    local entry = r[1][2][1]
    local id = entry[2][2]
    local j = job_key(id)
    if redis.call('HGET', j, 'state') == 'queued' and redis.call('HGET', j, 'entry') == entry[1] then
      return take(id)
    end
    -- An entry of a job cancelled (or requeued) since: drop it.
    redis.call('XACK', stream, 'workers', entry[1])
    redis.call('XDEL', stream, entry[1])
  end
end
return false
"#;

/// ARGV: p, id, attempt, lease end (ms), timestamp, consumer. Returns -1 when the
/// claim was lost, else whether cancellation was asked for (0/1).
const HEARTBEAT: &str = r#"
local id, attempt, untl, ts, consumer = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if not holds(id, attempt) then return -1 end
local j = job_key(id)
redis.call('HSET', j, 'lease_until', untl, 'updated_at', ts)
redis.call('ZADD', p .. ':leases', untl, id)
local f = redis.call('HMGET', j, 'tenant', 'entry')
if f[2] then redis.call('XCLAIM', p .. ':queue:' .. f[1], 'workers', consumer, 0, f[2], 'JUSTID') end
return tonumber(redis.call('HGET', j, 'cancel_requested'))
"#;

/// ARGV: p, id, attempt, phase, progress, metrics (JSON), timestamp. Returns 0 when
/// the claim was lost.
const REPORT: &str = r#"
local id, attempt = ARGV[2], ARGV[3]
if not holds(id, attempt) then return 0 end
redis.call('HSET', job_key(id), 'phase', ARGV[4], 'progress', ARGV[5], 'metrics', ARGV[6], 'updated_at', ARGV[7])
if ARGV[4] == 'benchmark' then event(id, 'benchmark') else event(id, 'progress') end
return 1
"#;

/// ARGV: p, id, attempt, timestamp. Back in the queue, the attempt given back.
const RELEASE: &str = r#"
local id, attempt = ARGV[2], ARGV[3]
if not holds(id, attempt) then return 0 end
local j = job_key(id)
local attempts = math.max(tonumber(redis.call('HGET', j, 'attempts')) - 1, 0)
redis.call('HSET', j, 'attempts', attempts, 'phase', 'queued', 'updated_at', ARGV[4])
dequeue(id)
move_state(id, 'queued')
enqueue(id)
event(id, 'state')
return 1
"#;

/// ARGV: p, id, attempt, reason, max attempts, timestamp. Back in the queue, or failed
/// once out of attempts.
const RETRY: &str = r#"
local id, attempt, reason, max, ts = ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6]
if not holds(id, attempt) then return 0 end
local j = job_key(id)
local attempts = tonumber(redis.call('HGET', j, 'attempts'))
dequeue(id)
if attempts >= max then
  local why = 'the job was started ' .. attempts .. ' times and never finished: ' .. reason
  redis.call('HSET', j, 'error', why, 'phase', 'done', 'updated_at', ts)
  move_state(id, 'failed')
  dead_letter(id, why)
else
  redis.call('HSET', j, 'phase', 'queued', 'updated_at', ts)
  move_state(id, 'queued')
  enqueue(id)
end
event(id, 'state')
return 1
"#;

/// ARGV: p, id, attempt, state, error (`''` with no error flag), has error (0/1),
/// artifacts (JSON), timestamp.
const FINISH: &str = r#"
local id, attempt, state = ARGV[2], ARGV[3], ARGV[4]
if not holds(id, attempt) then return 0 end
local j = job_key(id)
if ARGV[6] == '1' then redis.call('HSET', j, 'error', ARGV[5]) else redis.call('HDEL', j, 'error') end
redis.call('HSET', j, 'artifacts', ARGV[7], 'phase', 'done', 'updated_at', ARGV[8])
if state == 'succeeded' then redis.call('HSET', j, 'progress', '1.0') end
dequeue(id)
move_state(id, state)
event(id, 'state')
return 1
"#;

/// ARGV: p, tenant, id, timestamp. Returns 0 when the tenant has no such job.
const CANCEL: &str = r#"
local tenant, id = ARGV[2], ARGV[3]
local j = job_key(id)
if redis.call('HGET', j, 'tenant') ~= tenant then return 0 end
local state = redis.call('HGET', j, 'state')
if state == 'queued' then
  redis.call('HSET', j, 'cancel_requested', 1)
  dequeue(id)
  move_state(id, 'cancelled')
elseif state == 'running' then
  redis.call('HSET', j, 'cancel_requested', 1)
end
redis.call('HSET', j, 'updated_at', ARGV[4])
event(id, 'state')
return 1
"#;

/// ARGV: p, kind, id, tenant, sha256, size, created_ms, record JSON, the tenant's
/// storage limit. Returns `{'existing', id}` with the id of the tenant's record of the
/// same content, `{'quota', used}` when the record would pass the limit, or
/// `{'inserted'}`.
const INSERT_UPLOAD: &str = r#"
local p, kind, id, tenant, sha, size, created, json, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local by_sha = p .. ':' .. kind .. '-sha:' .. tenant .. ':' .. sha
local existing = redis.call('GET', by_sha)
if existing then return {'existing', existing} end
local used = redis.call('HGET', p .. ':stored-bytes', tenant) or '0'
if tonumber(used) + tonumber(size) > tonumber(limit) then return {'quota', used} end
redis.call('SET', by_sha, id)
redis.call('HSET', p .. ':' .. kind .. ':' .. id, 'tenant', tenant, 'sha256', sha, 'size', size, 'json', json)
redis.call('ZADD', p .. ':' .. kind .. 's:' .. tenant, created, id)
redis.call('HINCRBY', p .. ':stored-bytes', tenant, size)
return {'inserted'}
"#;

/// ARGV: p, kind, tenant, id. Returns the deleted record's JSON, or nil.
const DELETE_UPLOAD: &str = r#"
local p, kind, tenant, id = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = p .. ':' .. kind .. ':' .. id
local f = redis.call('HMGET', key, 'tenant', 'sha256', 'size', 'json')
if f[1] ~= tenant then return false end
redis.call('DEL', key)
redis.call('ZREM', p .. ':' .. kind .. 's:' .. tenant, id)
local by_sha = p .. ':' .. kind .. '-sha:' .. tenant .. ':' .. f[2]
if redis.call('GET', by_sha) == id then redis.call('DEL', by_sha) end
redis.call('HINCRBY', p .. ':stored-bytes', tenant, -tonumber(f[3]))
return f[4]
"#;

/// ARGV: p, sha256. Returns 1 when no reference is left.
const DROP_OBJECT: &str = r#"
local p, sha = ARGV[1], ARGV[2]
if redis.call('HINCRBY', p .. ':objects', sha, -1) <= 0 then
  redis.call('HDEL', p .. ':objects', sha)
  redis.call('HDEL', p .. ':object-sizes', sha)
  return 1
end
return 0
"#;

/// Extends a lock on content (`p:object-lock:{sha}`) when ARGV[3] still holds it.
const RENEW_OBJECT_LOCK: &str = r#"
local key = ARGV[1] .. ':object-lock:' .. ARGV[2]
if redis.call('GET', key) == ARGV[3] then
  redis.call('PEXPIRE', key, ARGV[4])
  return 1
end
return 0
"#;

/// Deletes a lock on content when ARGV[3] still holds it.
const UNLOCK_OBJECT: &str = r#"
local key = ARGV[1] .. ':object-lock:' .. ARGV[2]
if redis.call('GET', key) == ARGV[3] then
  redis.call('DEL', key)
end
return 0
"#;

/// A job script with its helpers.
fn job_script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PRELUDE}{body}"))
}

/// Every script, built (and hashed for `EVALSHA`) once per store.
pub struct Scripts {
    pub insert_job: redis::Script,
    pub claim: redis::Script,
    pub heartbeat: redis::Script,
    pub report: redis::Script,
    pub release: redis::Script,
    pub retry: redis::Script,
    pub finish: redis::Script,
    pub cancel: redis::Script,
    pub insert_upload: redis::Script,
    pub delete_upload: redis::Script,
    pub drop_object: redis::Script,
    pub renew_object_lock: redis::Script,
    pub unlock_object: redis::Script,
    pub claim_notification: redis::Script,
}

impl Scripts {
    /// The scripts of this module.
    pub fn new() -> Self {
        Self {
            insert_job: job_script(INSERT_JOB),
            claim: job_script(CLAIM),
            heartbeat: job_script(HEARTBEAT),
            report: job_script(REPORT),
            release: job_script(RELEASE),
            retry: job_script(RETRY),
            finish: job_script(FINISH),
            cancel: job_script(CANCEL),
            insert_upload: redis::Script::new(INSERT_UPLOAD),
            delete_upload: redis::Script::new(DELETE_UPLOAD),
            drop_object: redis::Script::new(DROP_OBJECT),
            renew_object_lock: redis::Script::new(RENEW_OBJECT_LOCK),
            unlock_object: redis::Script::new(UNLOCK_OBJECT),
            claim_notification: job_script(CLAIM_NOTIFICATION),
        }
    }
}
