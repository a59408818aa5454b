//! Benchmark tasks in Redis: a hash per task, a sorted set per device kind of the
//! tasks not yet ended (in the order they were asked for), and a list per job.
//! Claims, renewals and ends run as Lua scripts, each checked against the claim in
//! the same step.

use std::collections::HashMap;
use std::time::Duration;

use effp_protocol::{BenchmarkResult, BenchmarkState};
use redis::AsyncCommands;

use super::{RedisStore, backend};
use crate::benchmarks::{ended, gave_up_message, lost};
use crate::{BenchmarkRecord, Benchmarks, StoreError, expired_message};

/// ARGV: p, kind, agent, now, lease end, max attempts, expired message, failed
/// message. Returns the claimed id, or false.
const CLAIM: &str = r#"
local p, kind, agent, now, lease_end, max = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], tonumber(ARGV[6])
local q = p .. ':bmq:' .. kind
for _, id in ipairs(redis.call('ZRANGE', q, 0, -1)) do
  local k = p .. ':bm:' .. id
  local state = redis.call('HGET', k, 'state')
  local take = false
  if state == 'queued' then
    if tonumber(redis.call('HGET', k, 'claim_by_ms')) < now then
      redis.call('HSET', k, 'state', 'expired', 'error', ARGV[7])
      redis.call('ZREM', q, id)
    else
      take = true
    end
  elseif state == 'running' then
    if tonumber(redis.call('HGET', k, 'lease_until_ms')) < now then
      if tonumber(redis.call('HGET', k, 'attempts')) >= max then
        redis.call('HSET', k, 'state', 'failed', 'error', ARGV[8])
        redis.call('ZREM', q, id)
      else
        take = true
      end
    end
  else
    redis.call('ZREM', q, id)
  end
  if take then
    redis.call('HINCRBY', k, 'attempts', 1)
    redis.call('HSET', k, 'state', 'running', 'agent', agent, 'lease_until_ms', lease_end)
    return id
  end
end
return false
"#;

/// Whether `agent` holds claim `attempt` of task hash KEYS-less `k`.
const HOLDS: &str = r#"
local function holds(k, agent, attempt)
  return redis.call('HGET', k, 'state') == 'running' and redis.call('HGET', k, 'agent') == agent
    and redis.call('HGET', k, 'attempts') == attempt
end
"#;

/// ARGV: p, id, agent, attempt, lease end. 1 when renewed.
const RENEW: &str = r#"
local k = ARGV[1] .. ':bm:' .. ARGV[2]
if not holds(k, ARGV[3], ARGV[4]) then return 0 end
redis.call('HSET', k, 'lease_until_ms', ARGV[5])
return 1
"#;

/// ARGV: p, id, agent, attempt, state, result (or ''), error (or ''). 1 when ended.
const FINISH: &str = r#"
local k = ARGV[1] .. ':bm:' .. ARGV[2]
if not holds(k, ARGV[3], ARGV[4]) then return 0 end
redis.call('HSET', k, 'state', ARGV[5], 'lease_until_ms', 0)
if ARGV[6] ~= '' then redis.call('HSET', k, 'result', ARGV[6]) end
if ARGV[7] ~= '' then redis.call('HSET', k, 'error', ARGV[7]) end
redis.call('ZREM', ARGV[1] .. ':bmq:' .. redis.call('HGET', k, 'device'), ARGV[2])
return 1
"#;

/// ARGV: p, id, now, message. 1 when expired.
const EXPIRE: &str = r#"
local k = ARGV[1] .. ':bm:' .. ARGV[2]
if redis.call('HGET', k, 'state') ~= 'queued' or tonumber(redis.call('HGET', k, 'claim_by_ms')) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', k, 'state', 'expired', 'error', ARGV[4])
redis.call('ZREM', ARGV[1] .. ':bmq:' .. redis.call('HGET', k, 'device'), ARGV[2])
return 1
"#;

/// The benchmark scripts, hashed once per store.
pub struct BenchmarkScripts {
    claim: redis::Script,
    renew: redis::Script,
    finish: redis::Script,
    expire: redis::Script,
}

impl BenchmarkScripts {
    /// The scripts of this module.
    pub fn new() -> Self {
        Self {
            claim: redis::Script::new(CLAIM),
            renew: redis::Script::new(&format!("{HOLDS}{RENEW}")),
            finish: redis::Script::new(&format!("{HOLDS}{FINISH}")),
            expire: redis::Script::new(EXPIRE),
        }
    }
}

/// A task from its hash.
fn record_of(f: &HashMap<String, String>) -> Result<BenchmarkRecord, StoreError> {
    let corrupt = |field: &str| {
        StoreError::Backend(format!(
            "redis: benchmark {} has no valid '{field}'",
            f.get("id").map_or("?", String::as_str)
        ))
    };
    let text = |field: &str| f.get(field).cloned().ok_or_else(|| corrupt(field));
    let number = |field: &str| -> Result<i64, StoreError> {
        text(field)?.parse().map_err(|_| corrupt(field))
    };
    Ok(BenchmarkRecord {
        id: text("id")?,
        job_id: text("job_id")?,
        tenant: text("tenant")?,
        request: serde_json::from_str(&text("request")?).map_err(|_| corrupt("request"))?,
        state: BenchmarkState::parse(&text("state")?).ok_or_else(|| corrupt("state"))?,
        attempts: number("attempts")? as u32,
        agent: f.get("agent").cloned(),
        created_at: text("created_at")?,
        claim_by_ms: number("claim_by_ms")?,
        lease_until_ms: number("lease_until_ms")?,
        original: (text("original_sha")?, number("original_size")? as u64),
        pruned: (text("pruned_sha")?, number("pruned_size")? as u64),
        result: f.get("result").and_then(|r| serde_json::from_str(r).ok()),
        error: f.get("error").cloned(),
    })
}

#[async_trait::async_trait]
impl Benchmarks for RedisStore {
    async fn insert_benchmark(&self, b: &BenchmarkRecord) -> Result<(), StoreError> {
        let seq: i64 = self
            .conn()
            .incr(self.key(&["bm-seq"]), 1)
            .await
            .map_err(backend)?;
        let request =
            serde_json::to_string(&b.request).map_err(|e| StoreError::Backend(e.to_string()))?;
        let fields: Vec<(&str, String)> = vec![
            ("id", b.id.clone()),
            ("job_id", b.job_id.clone()),
            ("tenant", b.tenant.clone()),
            ("device", b.request.device.clone()),
            ("request", request),
            ("state", b.state.as_str().to_string()),
            ("attempts", b.attempts.to_string()),
            ("created_at", b.created_at.clone()),
            ("claim_by_ms", b.claim_by_ms.to_string()),
            ("lease_until_ms", b.lease_until_ms.to_string()),
            ("original_sha", b.original.0.clone()),
            ("original_size", b.original.1.to_string()),
            ("pruned_sha", b.pruned.0.clone()),
            ("pruned_size", b.pruned.1.to_string()),
        ];
        redis::pipe()
            .atomic()
            .hset_multiple(self.key(&["bm", &b.id]), &fields)
            .zadd(self.key(&["bmq", &b.request.device]), &b.id, seq)
            .rpush(self.key(&["job-bm", &b.job_id]), &b.id)
            .query_async::<()>(&mut self.conn())
            .await
            .map_err(backend)
    }

    async fn benchmark(&self, id: &str) -> Result<Option<BenchmarkRecord>, StoreError> {
        let fields: HashMap<String, String> = self
            .conn()
            .hgetall(self.key(&["bm", id]))
            .await
            .map_err(backend)?;
        if fields.is_empty() {
            return Ok(None);
        }
        record_of(&fields).map(Some)
    }

    async fn job_benchmarks(&self, job_id: &str) -> Result<Vec<BenchmarkRecord>, StoreError> {
        let ids: Vec<String> = self
            .conn()
            .lrange(self.key(&["job-bm", job_id]), 0, -1)
            .await
            .map_err(backend)?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in &ids {
            pipe.hgetall(self.key(&["bm", id]));
        }
        let all: Vec<HashMap<String, String>> =
            pipe.query_async(&mut self.conn()).await.map_err(backend)?;
        all.iter()
            .filter(|f| !f.is_empty())
            .map(record_of)
            .collect()
    }

    async fn claim_benchmark(
        &self,
        kind: &str,
        agent: &str,
        lease: Duration,
        max_attempts: u32,
    ) -> Result<Option<BenchmarkRecord>, StoreError> {
        let now = crate::now().1;
        let failed = gave_up_message(max_attempts);
        let id: Option<String> = self
            .script(
                &self.benchmark_scripts.claim,
                &[
                    kind,
                    agent,
                    &now.to_string(),
                    &(now + lease.as_millis() as i64).to_string(),
                    &max_attempts.to_string(),
                    &expired_message(kind),
                    &failed,
                ],
            )
            .await?;
        match id {
            Some(id) => self.benchmark(&id).await,
            None => Ok(None),
        }
    }

    async fn renew_benchmark(
        &self,
        id: &str,
        agent: &str,
        attempt: u32,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let until = crate::now().1 + lease.as_millis() as i64;
        let renewed: i64 = self
            .script(
                &self.benchmark_scripts.renew,
                &[id, agent, &attempt.to_string(), &until.to_string()],
            )
            .await?;
        if renewed == 0 {
            return Err(lost(id, attempt));
        }
        Ok(())
    }

    async fn finish_benchmark(
        &self,
        id: &str,
        agent: &str,
        attempt: u32,
        outcome: Result<BenchmarkResult, String>,
    ) -> Result<(), StoreError> {
        let (state, result, error) = ended(outcome)?;
        let (result, error) = (result.unwrap_or_default(), error.unwrap_or_default());
        let ended: i64 = self
            .script(
                &self.benchmark_scripts.finish,
                &[
                    id,
                    agent,
                    &attempt.to_string(),
                    state.as_str(),
                    &result,
                    &error,
                ],
            )
            .await?;
        if ended == 0 {
            return Err(lost(id, attempt));
        }
        Ok(())
    }

    async fn expire_benchmark(&self, id: &str) -> Result<bool, StoreError> {
        let Some(record) = self.benchmark(id).await? else {
            return Ok(false);
        };
        let expired: i64 = self
            .script(
                &self.benchmark_scripts.expire,
                &[
                    id,
                    &crate::now().1.to_string(),
                    &expired_message(&record.request.device),
                ],
            )
            .await?;
        Ok(expired == 1)
    }
}
