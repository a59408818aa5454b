//! The distributed job store and queue: Redis, shared by every API replica and
//! worker. Changes of state run as Lua scripts (see [`scripts`]), so each is atomic
//! and a worker's change is checked against its claim in the same step; the queue is
//! a stream per tenant read through a consumer group.

mod benchmarks;
mod job_store;
mod notifications;
mod queue;
mod scripts;

use std::collections::HashMap;
use std::time::Duration;

use effp_protocol::JobState;
use redis::AsyncCommands;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};

use crate::{JobRecord, StoreError};

/// How long one Redis command may take before it counts as failed.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Jobs, records and the queue in Redis.
pub struct RedisStore {
    client: redis::Client,
    conn: ConnectionManager,
    /// Blocking reads (waiting for work) on their own connection, so that they never
    /// hold up other commands.
    blocking: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    prefix: String,
    /// This process's name in the queue's consumer group.
    consumer: String,
    scripts: scripts::Scripts,
    benchmark_scripts: benchmarks::BenchmarkScripts,
}

fn backend(e: redis::RedisError) -> StoreError {
    if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() || e.is_timeout() {
        StoreError::Unavailable(format!("redis: {e}"))
    } else {
        StoreError::Backend(format!("redis: {e}"))
    }
}

impl RedisStore {
    /// Connects to the Redis at `url` (`redis://` or `rediss://` with TLS; user and
    /// password from the URL), keeping every key under `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| {
            StoreError::Backend(format!(
                "the Redis URL is not valid ({e}): use redis://[user:password@]host:port[/db] or rediss:// for TLS"
            ))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(3);
        let conn = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(backend)?;
        Ok(Self {
            client,
            conn,
            blocking: tokio::sync::Mutex::new(None),
            prefix: prefix.to_string(),
            scripts: scripts::Scripts::new(),
            benchmark_scripts: benchmarks::BenchmarkScripts::new(),
            consumer: format!(
                "{}-{}",
                std::process::id(),
                crate::now().1.rem_euclid(1 << 40)
            ),
        })
    }

    fn key(&self, parts: &[&str]) -> String {
        let mut key = self.prefix.clone();
        for part in parts {
            key.push(':');
            key.push_str(part);
        }
        key
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Runs a script with the prefix as its first argument.
    async fn script<T: redis::FromRedisValue>(
        &self,
        script: &redis::Script,
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        invocation.arg(&self.prefix);
        for a in args {
            invocation.arg(*a);
        }
        invocation
            .invoke_async(&mut self.conn())
            .await
            .map_err(backend)
    }

    /// A job from its hash, if the tenant (when given) owns it.
    async fn load_job(
        &self,
        id: &str,
        tenant: Option<&str>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let fields: HashMap<String, String> = self
            .conn()
            .hgetall(self.key(&["job", id]))
            .await
            .map_err(backend)?;
        if fields.is_empty()
            || tenant.is_some_and(|t| fields.get("tenant").map(String::as_str) != Some(t))
        {
            return Ok(None);
        }
        job_of(&fields).map(Some)
    }

    /// Jobs by id, in the order given (ids without a job are skipped), in one round
    /// trip.
    async fn load_jobs(&self, ids: &[String]) -> Result<Vec<JobRecord>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hgetall(self.key(&["job", id]));
        }
        let all: Vec<HashMap<String, String>> =
            pipe.query_async(&mut self.conn()).await.map_err(backend)?;
        all.iter().filter(|f| !f.is_empty()).map(job_of).collect()
    }

    /// A dedicated connection for a blocking read of up to `block`.
    async fn blocking_connection(
        &self,
        block: Duration,
    ) -> Result<MultiplexedConnection, StoreError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_response_timeout(Some(block + RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(Duration::from_secs(5)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(backend)
    }
}

/// A job record from its Redis hash.
fn job_of(f: &HashMap<String, String>) -> Result<JobRecord, StoreError> {
    let corrupt = |field: &str| {
        StoreError::Backend(format!(
            "redis: job {} has no valid '{field}'",
            f.get("id").map_or("?", String::as_str)
        ))
    };
    let text = |field: &str| f.get(field).cloned().ok_or_else(|| corrupt(field));
    let json = |field: &str| -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(&text(field)?).map_err(|_| corrupt(field))
    };
    Ok(JobRecord {
        id: text("id")?,
        tenant: text("tenant")?,
        spec: json("spec")?,
        state: text("state")?
            .parse::<JobState>()
            .map_err(|_| corrupt("state"))?,
        phase: text("phase")?,
        progress: text("progress")?.parse().map_err(|_| corrupt("progress"))?,
        metrics: json("metrics")?,
        artifacts: serde_json::from_str(&text("artifacts")?).map_err(|_| corrupt("artifacts"))?,
        error: f.get("error").cloned(),
        attempts: text("attempts")?.parse().map_err(|_| corrupt("attempts"))?,
        cancel_requested: f.get("cancel_requested").is_some_and(|v| v == "1"),
        idempotency_key: f.get("idempotency_key").cloned(),
        created_at: text("created_at")?,
        updated_at: text("updated_at")?,
        notification: None,
        benchmarks: Vec::new(),
    })
}

/// Unix milliseconds of an RFC 3339 time (0 when it is not one).
fn millis_of(rfc3339: &str) -> i64 {
    humantime::parse_rfc3339(rfc3339)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}
