//! Settings `effp serve` and `effp worker` share, one definition each: where things
//! are kept and how jobs run.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use effp_protocol::DeviceChoice;
use effp_store::local::LocalObjects;
use effp_store::redis::RedisStore;
use effp_store::s3::{S3Config, S3Objects};
use effp_store::sqlite::SqliteStore;
use effp_store::{Benchmarks, JobStore, Notifications, ObjectStore, Queue};

use super::limits::ByteSize;
use super::webhook::WebhookConfig;

/// What `--help` of the long-running commands says about their logs.
pub const LOG_HELP: &str = "Logs go to stderr, filtered by EFFP_LOG (tracing's EnvFilter syntax, \
                            e.g. info or effp=debug; default warn).";

/// Where jobs, records and objects are kept.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Directory of the embedded database, the stored objects and scratch space.
    #[arg(long, env = "EFFP_DATA_DIR", default_value = "effp-data")]
    pub data_dir: PathBuf,
    /// Redis for jobs, records and the queue, shared by API replicas and workers
    /// (redis://[user:password@]host:port[/db]; rediss:// for TLS). Unset: the
    /// embedded SQLite database in the data directory, for one process.
    #[arg(long, env = "EFFP_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key (deployments can share one Redis).
    #[arg(long, env = "EFFP_REDIS_PREFIX", default_value = "effp")]
    pub redis_prefix: String,
    #[command(flatten)]
    pub s3: S3Args,
}

/// Where objects are kept when they live in S3 (AWS or any S3-compatible server).
#[derive(Debug, Clone, Args)]
pub struct S3Args {
    /// S3 bucket (which must exist) for models, datasets, artifacts and checkpoints,
    /// shared by API replicas and workers. Unset: the data directory's `objects`
    /// folder, for the processes of one machine.
    #[arg(long, env = "EFFP_S3_BUCKET")]
    pub s3_bucket: Option<String>,
    /// Prefix of every key in the bucket (deployments can share one bucket).
    #[arg(long, env = "EFFP_S3_PREFIX", default_value = "effp")]
    pub s3_prefix: String,
    /// Endpoint of an S3-compatible server (MinIO, Ceph, s3s), e.g.
    /// http://127.0.0.1:8014; AWS's when unset.
    #[arg(long, env = "EFFP_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Region; the AWS configuration's (AWS_REGION, profile), else us-east-1, when
    /// unset.
    #[arg(long, env = "EFFP_S3_REGION")]
    pub s3_region: Option<String>,
    /// Address the bucket by path (endpoint/bucket/key), as most self-hosted servers
    /// need, instead of by host name.
    #[arg(long, env = "EFFP_S3_PATH_STYLE")]
    pub s3_path_style: bool,
    /// Access key id; with the secret, used instead of the standard AWS chain
    /// (AWS_ACCESS_KEY_ID, profiles, container and instance roles). Prefer the
    /// environment to the command line for both.
    #[arg(long, env = "EFFP_S3_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: Option<String>,
    /// Secret access key.
    #[arg(long, env = "EFFP_S3_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: Option<String>,
    /// Size of the parts uploads go to S3 in, and so the memory one upload in
    /// progress holds (at least 5MiB).
    #[arg(long, env = "EFFP_S3_PART_SIZE", default_value = "8MiB")]
    pub s3_part_size: ByteSize,
}

impl S3Args {
    /// The store's settings, when a bucket is named.
    pub fn config(&self) -> Option<S3Config> {
        Some(S3Config {
            bucket: self.s3_bucket.clone()?,
            prefix: self.s3_prefix.clone(),
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            path_style: self.s3_path_style,
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
            part_size: usize::try_from(self.s3_part_size.0).unwrap_or(usize::MAX),
        })
    }
}

/// How job notifications (webhooks) are signed and where they may go.
#[derive(Debug, Clone, Args)]
pub struct WebhookArgs {
    /// Secret from which each tenant's webhook signing key is derived (tenants read
    /// theirs at GET /v1/webhook-secret); every process of a deployment needs the
    /// same one. Unset: the embedded store makes one and keeps it in the data
    /// directory; with Redis, jobs cannot ask for notifications.
    #[arg(long, env = "EFFP_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
    /// Let notifications reach private, loopback and link-local addresses (this
    /// service's own network), which a tenant could otherwise use to reach its
    /// internals.
    #[arg(long, env = "EFFP_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
}

impl WebhookArgs {
    /// The webhook settings of a process over `stores`.
    pub fn config(&self, stores: &Stores, data_dir: &Path) -> anyhow::Result<WebhookConfig> {
        let secret = match (&self.webhook_secret, stores.embedded) {
            (Some(s), _) if s.len() < 16 => {
                anyhow::bail!("EFFP_WEBHOOK_SECRET must be at least 16 characters")
            }
            (Some(s), _) => Some(s.as_bytes().to_vec()),
            (None, true) => Some(kept_secret(&data_dir.join("webhook-secret"))?),
            (None, false) => None,
        };
        Ok(WebhookConfig {
            secret,
            allow_private: self.webhook_allow_private,
        })
    }
}

/// The secret kept in `path`, made (random, readable by the owner only) when there
/// is none.
fn kept_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(secret) = std::fs::read(path) {
        return Ok(secret);
    }
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create the webhook secret '{}'", path.display()))?;
    file.write_all(secret.as_bytes())?;
    Ok(secret.into_bytes())
}

/// How this process runs jobs.
#[derive(Debug, Clone, Args)]
pub struct JobRunArgs {
    /// Training steps between checkpoints of a running job (a restart resumes from
    /// the last one; shutting down always writes one).
    #[arg(long, env = "EFFP_CHECKPOINT_EVERY", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: u64,
    /// Memory one job's worker process may use (e.g. 8GiB); default: three quarters
    /// of the machine's memory shared by the jobs that run at once. Jobs estimated to
    /// need more are refused when submitted; a job that uses more while it runs is
    /// stopped and fails.
    #[arg(long, env = "EFFP_JOB_MEMORY_LIMIT")]
    pub job_memory_limit: Option<ByteSize>,
    /// Seconds a worker's claim on a job lasts without a heartbeat (it renews it
    /// three times as often): how long a job whose worker died waits before another
    /// worker takes it over.
    #[arg(long, env = "EFFP_LEASE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub lease_secs: u64,
    /// Times a job is started before it fails: a worker that dies or loses its lease
    /// spends one (a worker shutting down hands its job back without spending one).
    #[arg(long, env = "EFFP_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,
    /// Seconds a job's device benchmark waits for an agent of its device kind to
    /// claim it; after that the job succeeds without it and says it expired.
    #[arg(long, env = "EFFP_BENCHMARK_CLAIM_SECS", default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=604_800))]
    pub benchmark_claim_secs: u64,
    /// Seconds a benchmark agent's claim lasts without a renewal (agents renew
    /// three times as often): how long a task whose agent died waits before another
    /// agent takes it over.
    #[arg(long, env = "EFFP_BENCHMARK_LEASE_SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub benchmark_lease_secs: u64,
    /// Device this process trains jobs on: auto (each job's own choice), cpu, cuda
    /// or cuda:N (one worker per GPU). A job that asked for the CPU stays on it.
    #[arg(long, env = "EFFP_DEVICE", default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,
}

impl JobRunArgs {
    /// [`JobRunArgs::lease_secs`] as a duration.
    pub fn lease(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.lease_secs)
    }

    /// How device benchmarks are claimed and held.
    pub fn benchmarks(&self) -> BenchmarkSettings {
        BenchmarkSettings {
            claim_within: std::time::Duration::from_secs(self.benchmark_claim_secs),
            lease: std::time::Duration::from_secs(self.benchmark_lease_secs),
            max_attempts: self.max_attempts,
        }
    }
}

/// How device benchmarks are claimed and held.
#[derive(Debug, Clone, Copy)]
pub struct BenchmarkSettings {
    /// How long a task waits for an agent before it expires.
    pub claim_within: std::time::Duration,
    /// How long an agent's claim lasts without a renewal.
    pub lease: std::time::Duration,
    /// Claims of one task before it fails.
    pub max_attempts: u32,
}

/// The job store, queue, notification outbox and benchmark tasks of one backend,
/// and whether it is the embedded one.
type RecordStores = (
    Arc<dyn JobStore>,
    Arc<dyn Queue>,
    Arc<dyn Notifications>,
    Arc<dyn Benchmarks>,
    bool,
);

/// The stores a process works with.
pub struct Stores {
    /// Records and events.
    pub jobs: Arc<dyn JobStore>,
    /// The work queue.
    pub queue: Arc<dyn Queue>,
    /// The notification outbox.
    pub notifications: Arc<dyn Notifications>,
    /// Device benchmark tasks.
    pub benchmarks: Arc<dyn Benchmarks>,
    /// Uploads, artifacts and checkpoints.
    pub objects: Arc<dyn ObjectStore>,
    /// Whether this is the embedded store (one process owns it all).
    pub embedded: bool,
    /// This process's scratch folder.
    pub scratch: PathBuf,
}

impl StoreArgs {
    /// Opens the stores these settings name.
    pub async fn open(&self) -> anyhow::Result<Stores> {
        let data = &self.data_dir;
        std::fs::create_dir_all(data)
            .with_context(|| format!("cannot create the data directory '{}'", data.display()))?;
        let (jobs, queue, notifications, benchmarks, embedded): RecordStores = match &self.redis_url
        {
            Some(url) => {
                let redis = Arc::new(
                    RedisStore::connect(url, &self.redis_prefix)
                        .await
                        .context("cannot reach the Redis of EFFP_REDIS_URL")?,
                );
                redis.ping().await.context("Redis does not answer")?;
                (redis.clone(), redis.clone(), redis.clone(), redis, false)
            }
            None => {
                // Opened first: it refuses a second process before anything
                // below touches the directory.
                let sqlite = Arc::new(SqliteStore::open(&data.join("effp.sqlite3"))?);
                if sqlite.recovered() > 0 {
                    tracing::info!(
                        jobs = sqlite.recovered(),
                        "jobs left running by the previous process go back to the queue"
                    );
                }
                (sqlite.clone(), sqlite.clone(), sqlite.clone(), sqlite, true)
            }
        };
        let objects: Arc<dyn ObjectStore> = match self.s3.config() {
            Some(config) => Arc::new(S3Objects::open(&config).await?),
            None => Arc::new(LocalObjects::open(&data.join("objects"))?),
        };
        // Scratch holds only what running requests and jobs use: what processes
        // that have ended left there is garbage.
        let scratch = effp_store::process_dir::claim(&data.join("scratch"))
            .with_context(|| format!("cannot create scratch space in '{}'", data.display()))?;
        Ok(Stores {
            jobs,
            queue,
            notifications,
            benchmarks,
            objects,
            embedded,
            scratch,
        })
    }
}
